from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from agent_lightning import Agent, TextClassificationDataModule
from tests.conftest import quiet_trainer


class _RecordLoss(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_tiny_bert_overfits_a_tiny_dataset(tmp_path, tiny_bert, tiny_data_dir):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=8, val_fraction=0.2)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=5e-3, warmup_fraction=0.0)
    assert agent.model.training  # dropout is on while training
    before = quiet_trainer(tmp_path).validate(agent, datamodule=dm, verbose=False)[0]["val/acc"]
    record = _RecordLoss()
    quiet_trainer(tmp_path, max_epochs=40, callbacks=[record], num_sanity_val_steps=0).fit(agent, datamodule=dm)
    first, last = sum(record.losses[:4]) / 4, sum(record.losses[-4:]) / 4
    assert last < 0.3 * first, (first, last)
    after = quiet_trainer(tmp_path).validate(agent, datamodule=dm, verbose=False)[0]["val/acc"]
    assert after >= 0.8 and after > before + 0.3, (before, after)
    train_texts = dm.splits["train"].texts
    decisions = agent.act(train_texts)
    accuracy = sum(a == label for (a, _), label in zip(decisions, dm.splits["train"].labels)) / len(train_texts)
    assert accuracy >= 0.9


def test_warmup_then_linear_decay(tmp_path, tiny_bert, tiny_data_dir):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3, warmup_fraction=0.25)
    seen: list[float] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[Record()], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    total = len(seen)
    warmup = int(0.25 * total)
    assert seen[0] == 0.0
    assert max(seen) == pytest.approx(1e-3, rel=1e-6) and seen.index(max(seen)) == warmup
    assert all(a > b for a, b in zip(seen[warmup:], seen[warmup + 1 :]))
    groups = trainer.optimizers[0].param_groups
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in groups[1]["params"])


def test_checkpoint_loads_and_acts_without_a_datamodule(tmp_path, tiny_bert, tiny_data_dir):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=8)
    agent = Agent(model=tiny_bert, labels=dm.label_names)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(agent, datamodule=dm)
    path = tmp_path / "agent.ckpt"
    trainer.save_checkpoint(path)
    loaded = Agent.load_from_checkpoint(path)
    assert loaded.labels == dm.label_names
    decisions = loaded.act(["play some jazz", "wake me at six"])
    assert [type(c) for _, c in decisions] == [float, float]
    assert all(a in dm.label_names and 0 < c <= 1 for a, c in decisions)
    agent.eval()
    assert decisions == agent.act(["play some jazz", "wake me at six"])
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint[TextClassificationDataModule.__qualname__]["label_names"] == dm.label_names


def test_predict_returns_label_names_and_probabilities(tmp_path, tiny_bert, tiny_data_dir):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=8)
    agent = Agent(model=tiny_bert, labels=dm.label_names)
    batches = quiet_trainer(tmp_path).predict(agent, datamodule=dm)
    labels = [name for batch in batches for name in batch["labels"]]
    probabilities = torch.cat([batch["probabilities"] for batch in batches])
    assert len(labels) == len(dm.splits["test"]) and set(labels) <= set(dm.label_names)
    assert probabilities.shape == (len(labels), dm.num_labels)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(labels)))


def test_save_pretrained_reloads_with_transformers(tmp_path, tiny_bert):
    agent = Agent(model=tiny_bert, labels=["call", "get_weather", "play_music"]).eval()
    folder = agent.save_pretrained(tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == {0: "call", 1: "get_weather", 2: "play_music"}
    assert json.loads((folder / "labels.json").read_text()) == agent.labels
    inputs = tokenizer(["call mom", "is it raining"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, agent(**inputs).logits, rtol=0, atol=1e-6)
    with pytest.raises(FileExistsError, match="exists and is not empty.*overwrite=True"):
        agent.save_pretrained(folder)
    reloaded = Agent(model=str(folder))  # labels come from the folder's id2label
    assert reloaded.labels == agent.labels


def test_datamodule_labels_must_match(tmp_path, tiny_bert, tiny_data_dir):
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert)
    agent = Agent(model=tiny_bert, labels=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"agent's labels \(4: \[a, b, c, d\]\) differ from the datamodule's"):
        quiet_trainer(tmp_path, max_steps=1).fit(agent, datamodule=dm)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "./no/such/model"}, ValueError, r"model='./no/such/model' is not a model folder"),
        ({"labels": ["a", "b"], "num_labels": 3}, ValueError, "num_labels=3 contradicts the 2 labels"),
        ({}, ValueError, "the agent needs its action names"),
        ({"labels": ["a", "a"]}, ValueError, "at least two distinct names"),
        ({"labels": "ab"}, TypeError, "must be a list of strings"),
        ({"labels": ["a", "b"], "learning_rate": -1.0}, ValueError, "learning_rate=-1.0 must be a number > 0"),
        ({"labels": ["a", "b"], "warmup_fraction": 1.0}, ValueError, "warmup_fraction=1.0 is out of range"),
        ({"labels": ["a", "b"], "max_length": 1}, ValueError, "max_length=1 must be an integer >= 2"),
    ],
)
def test_bad_arguments(tiny_bert, kwargs, error, message):
    kwargs.setdefault("model", tiny_bert)
    with pytest.raises(error, match=message):
        Agent(**kwargs)


def test_act_rejects_non_text(tiny_bert):
    agent = Agent(model=tiny_bert, labels=["a", "b"])
    with pytest.raises(TypeError, match="takes a string or a list of strings"):
        agent.act([1, 2])
    assert agent.act("hello")[0][0] in ("a", "b")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_lm_agent_learns_logs_perplexity_generates_and_reloads(kind, tmp_path, causal_lm_folders, lm_texts):
    from agent_lightning import LanguageModelingDataModule

    seed_everything(0)
    folder = causal_lm_folders[kind]
    dm = LanguageModelingDataModule(lm_texts, tokenizer=folder, max_length=16, batch_size=8)
    agent = Agent(model=folder, task="causal-lm", learning_rate=5e-3, max_new_tokens=4)
    before = quiet_trainer(tmp_path).validate(agent, datamodule=dm, verbose=False)[0]
    trainer = quiet_trainer(tmp_path, max_epochs=30, num_sanity_val_steps=0)
    trainer.fit(agent, datamodule=dm)
    after = trainer.callback_metrics
    assert float(after["val/perplexity"]) < before["val/perplexity"] / 100  # it learns the texts
    # perplexity is exp of the mean next-token loss (token-weighted vs batch-weighted: close, not equal)
    assert float(after["val/perplexity"]) == pytest.approx(float(torch.exp(after["val/loss"])), rel=0.15)
    prompts = ["wake me", "play some", "call"]
    decisions = agent.act(prompts)  # greedy continuations, e.g. ("at", 0.09), ("the bank", 0.21)
    assert len(decisions) == 3 and all(isinstance(t, str) and 0 < p <= 1 for t, p in decisions)
    assert any(text for text, _ in decisions)
    path = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(path)
    reloaded = Agent.load_from_checkpoint(path)
    assert reloaded.hparams.task == "causal-lm" and reloaded.labels == []
    again = reloaded.act(prompts)
    assert [t for t, _ in again] == [t for t, _ in decisions]
    assert [p for _, p in again] == pytest.approx([p for _, p in decisions])


def test_causal_lm_student_from_teacher_layers_and_bad_arguments(causal_lm_folders):
    student = Agent(model=causal_lm_folders["llama"], task="causal-lm", student_layers=[1])
    assert len(student.model.model.layers) == 1 and student.model.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match=r"labels/num_labels are for task='classification'"):
        Agent(model=causal_lm_folders["llama"], task="causal-lm", labels=["a", "b"])
    with pytest.raises(
        ValueError, match=r"task='seq2seq' is not a choice; use 'classification', 'generation' or 'causal-lm'"
    ):
        Agent(model=causal_lm_folders["llama"], task="seq2seq")
    with pytest.raises(ValueError, match=r"max_new_tokens=0 must be an integer >= 1"):
        Agent(model=causal_lm_folders["llama"], task="causal-lm", max_new_tokens=0)
