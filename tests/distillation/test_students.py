from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from agent_lightning import Agent
from agent_lightning.distillation.students import keep_layers


def test_keep_layers_copies_the_teacher_blocks_and_saves_a_loadable_folder(tmp_path, tiny_bert):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    student = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    keep_layers(student, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    for a, b in zip(student.bert.encoder.layer[0].parameters(), teacher.bert.encoder.layer[1].parameters()):
        assert torch.equal(a, b)
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert len(reloaded.bert.encoder.layer) == 1
    ids = torch.randint(1000, 2000, (2, 6))
    torch.testing.assert_close(reloaded.eval()(ids).logits, student.eval()(ids).logits)


@pytest.mark.parametrize("layers", [[2], [0, 0], [], [True]])
def test_bad_layer_lists(tiny_bert, layers):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    with pytest.raises(ValueError, match=r"student_layers=.*give distinct block indices in \[0, 1\]"):
        keep_layers(model, layers)


def test_agent_student_options_round_trip_through_a_checkpoint(tmp_path, tiny_bert):
    agent = Agent(model=tiny_bert, labels=["a", "b"], student_layers=[1], student_intermediate_size=16)
    assert len(agent.model.bert.encoder.layer) == 1
    assert agent.model.bert.encoder.layer[0].intermediate.dense.out_features == 16
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(agent)
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    loaded = Agent.load_from_checkpoint(tmp_path / "student.ckpt")
    assert loaded.hparams.student_layers == [1]
    for a, b in zip(loaded.state_dict().values(), agent.state_dict().values()):
        assert torch.equal(a, b)
