"""Distillation on the Agent (students built from their teacher) and on a LightningModule we did not write."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Distillation
from agent_lightning.distillation.cache import TeacherLogitCache
from tests.conftest import quiet_trainer, tiny_bert_config


def _trainer(tmp_path, callbacks, **kwargs):
    return quiet_trainer(tmp_path, callbacks, **{"num_sanity_val_steps": 0, **kwargs})


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, tiny_bert, shared_tiny_data_dir):
    """A tiny BERT agent trained for 12 steps, saved as a Lightning checkpoint."""
    folder = tmp_path_factory.mktemp("teacher")
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    teacher = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    trainer = _trainer(folder, [], max_steps=12, limit_val_batches=0)
    trainer.fit(teacher, datamodule=dm)
    trainer.save_checkpoint(folder / "teacher.ckpt")
    return folder / "teacher.ckpt"


def _student_and_data(tiny_bert, data_dir):
    seed_everything(1)
    dm = TextClassificationDataModule(dataset=str(data_dir), tokenizer=tiny_bert, batch_size=4)
    return Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3, student_layers=[1]), dm


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_logit_kd_on_a_student_built_from_its_teacher(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    distillation = Distillation(teacher=str(teacher_ckpt), temperature=2.0, alpha=0.3)
    logger = CSVLogger(tmp_path, name="kd")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(
        tmp_path,
        [distillation, checkpoint],
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        limit_val_batches=2,
        enable_checkpointing=True,
    )
    assert distillation.teacher is None  # loaded at setup, not at construction
    trainer.fit(student, datamodule=dm)
    teacher = distillation.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    reference = Agent.load_from_checkpoint(teacher_ckpt)
    for (name, a), b in zip(teacher.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name  # gradients reached the student only
    # the loss optimised is alpha * task + (1 - alpha) * KD, logged step by step
    rows = [r for r in _rows(tmp_path / "kd" / "version_0" / "metrics.csv") if r.get("distill/loss")]
    assert len(rows) == 18  # 9 steps per epoch
    for row in rows:
        expected = 0.3 * float(row["distill/task_loss"]) + 0.7 * float(row["distill/kd_loss"])
        assert float(row["distill/loss"]) == pytest.approx(expected, rel=1e-5)
        assert float(row["distill/temperature"]) == 2.0
    logged = open(tmp_path / "kd" / "version_0" / "metrics.csv").read()
    assert "distill/agreement" in logged and "distill/teacher_acc" in logged
    # the cache served epoch 2 entirely: 9 misses (epoch 1), then hits
    assert distillation.cache.misses >= 9 and distillation.cache.hits >= 9
    # the student checkpoint holds the student only, plus the teacher's source and fingerprint
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert set(state["state_dict"]) == set(student.state_dict())
    saved = next(v for k, v in state["callbacks"].items() if k.startswith("Distillation"))
    assert saved["teacher"] == str(teacher_ckpt) and len(saved["fingerprint"]) == 64
    assert "training_step" not in student.__dict__  # the wrapper is gone after fit


def test_cache_returns_the_teachers_logits(tiny_bert, shared_tiny_data_dir, teacher_ckpt, tmp_path):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    distillation = Distillation(teacher=str(teacher_ckpt))
    _trainer(tmp_path, [distillation], max_steps=9, limit_val_batches=0).fit(student, datamodule=dm)
    batch = next(iter(dm.train_dataloader()))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fresh = distillation.teacher(**inputs).logits
    # stored during training from batches padded differently: equal up to float rounding of the padding
    torch.testing.assert_close(distillation._teacher_logits((), dict(batch), fresh.device), fresh, rtol=0, atol=1e-5)
    distillation.cache = TeacherLogitCache()
    first = distillation._teacher_logits((), dict(batch), fresh.device)
    second = distillation._teacher_logits((), dict(batch), fresh.device)
    assert torch.equal(first, fresh) and torch.equal(second, fresh)  # a hit returns exactly what the teacher gave
    assert (distillation.cache.misses, distillation.cache.hits) == (1, 1)
    flipped = {k: v.flip(0) for k, v in inputs.items()}
    torch.testing.assert_close(distillation._teacher_logits((), flipped, fresh.device), fresh.flip(0))
    assert distillation.cache.hits == 2  # same examples in another order: still cached
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][:, 1] = 1999  # new content: recomputed
    distillation._teacher_logits((), inputs, fresh.device)
    assert distillation.cache.misses == 2


def test_resume_reattaches_the_teacher_and_refuses_another(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    kd = Distillation(teacher=str(teacher_ckpt))
    _trainer(tmp_path, [kd, checkpoint], max_steps=9, enable_checkpointing=True, limit_val_batches=0).fit(
        student, datamodule=dm
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    resumed, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    again = Distillation(teacher=str(teacher_ckpt))
    _trainer(tmp_path, [again], max_steps=12, limit_val_batches=0).fit(resumed, datamodule=dm, ckpt_path=last)
    assert again.teacher_fingerprint == kd.teacher_fingerprint
    other = Agent(model=tiny_bert, labels=dm.label_names)  # same labels and vocabulary, other weights
    fresh, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    with pytest.raises(ValueError, match="the checkpoint was distilled from teacher .* Resume with teacher="):
        _trainer(tmp_path, [Distillation(teacher=other)], max_steps=12, limit_val_batches=0).fit(
            fresh, datamodule=dm, ckpt_path=last
        )


def test_hidden_state_kd_with_a_layer_map_and_a_projection(tmp_path, tiny_bert, shared_tiny_data_dir):
    from transformers import BertForSequenceClassification

    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    torch.manual_seed(0)
    config = tiny_bert_config(dm.label_names, hidden_size=48, num_hidden_layers=3)
    teacher = BertForSequenceClassification(config)  # wider than the 32-wide student: a projection is learned
    kd = Distillation(teacher=teacher, hidden_weight=1.0, layer_map=[2])
    logger = CSVLogger(tmp_path, name="hidden")
    _trainer(tmp_path, [kd], max_steps=6, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(
        student, datamodule=dm
    )
    projection = kd.hidden_loss.projections[0]
    assert projection.weight.shape == (48, 32)
    assert "hidden_loss" in kd.state_dict() and "projection_optimizer" in kd.state_dict()
    rows = [r for r in _rows(tmp_path / "hidden" / "version_0" / "metrics.csv") if r.get("distill/hidden_loss")]
    assert len(rows) == 6
    first, last = float(rows[0]["distill/hidden_loss"]), float(rows[-1]["distill/hidden_loss"])
    assert last < first  # the student (and projection) move toward the teacher's hidden states
    with pytest.raises(ValueError, match=r"layer_map=\[5\].*each in \[0, 2\] \(the teacher has 3 blocks\)"):
        _trainer(tmp_path, [Distillation(teacher=teacher, hidden_weight=1.0, layer_map=[5])], max_steps=2).fit(
            _student_and_data(tiny_bert, shared_tiny_data_dir)[0], datamodule=dm
        )


def test_hidden_state_kd_pairs_a_student_of_kept_blocks_with_the_outputs_they_stand_in_for(
    tmp_path, tiny_bert, shared_tiny_data_dir
):
    from transformers import AutoTokenizer, BertForSequenceClassification

    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    torch.manual_seed(0)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    teacher = BertForSequenceClassification(tiny_bert_config(dm.label_names, num_hidden_layers=4, **no_dropout))
    teacher.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "teacher")
    # blocks 0 and 1 of 4: the student's block 1 output replaces the teacher's block 3 output (even spacing: [1, 3])
    student = Agent(model=str(tmp_path / "teacher"), labels=dm.label_names, learning_rate=1e-3, student_layers=[0, 1])
    kd = Distillation(teacher=teacher, hidden_weight=1.0)
    _trainer(tmp_path, [kd], max_steps=1, limit_val_batches=0).fit(student, datamodule=dm)
    assert kd._layer_pairs == [(0, 0), (1, 3)]
    # the one step's forward ran before the update: the student's block 0 is the teacher's, on the same input
    torch.testing.assert_close(kd._student_hidden[0], kd._teacher_hidden[0])
    assert not torch.allclose(kd._student_hidden[1], kd._teacher_hidden[1])


def test_standardized_hidden_kd_logs_what_the_standardized_loss_computes(tmp_path, tiny_bert, shared_tiny_data_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from agent_lightning.distillation import HiddenStateLoss

    dm = TextClassificationDataModule(dataset=str(shared_tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(dm.label_names, num_hidden_layers=4))
    teacher.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "teacher")
    student = Agent(model=str(tmp_path / "teacher"), labels=dm.label_names, learning_rate=1e-3, student_layers=[0, 1])
    masks = []
    student.model.register_forward_pre_hook(
        lambda _, args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True
    )
    kd = Distillation(teacher=teacher, hidden_weight=1.0, hidden_standardize=True)
    logger = CSVLogger(tmp_path, name="standardized")
    _trainer(tmp_path, [kd], max_steps=1, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(
        student, datamodule=dm
    )
    assert kd.hidden_loss.standardize
    pairs = [0, 1]
    expected = HiddenStateLoss(32, 32, 2, standardize=True)(
        [kd._student_hidden[i] for i in pairs], [kd._teacher_hidden[i] for i in pairs], masks[0]
    )
    (row,) = [r for r in _rows(tmp_path / "standardized" / "version_0" / "metrics.csv") if r.get("distill/hidden_loss")]
    assert float(row["distill/hidden_loss"]) == pytest.approx(expected.item(), rel=1e-5)
    plain = HiddenStateLoss(32, 32, 2)(
        [kd._student_hidden[i] for i in pairs], [kd._teacher_hidden[i] for i in pairs], masks[0]
    )
    assert plain.item() != pytest.approx(expected.item(), rel=1e-3)  # the setting changed the loss


def test_attention_kd_is_logged_and_learned(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    kd = Distillation(teacher=str(teacher_ckpt), attention_weight=1.0, alpha=1.0)  # task + attention only
    logger = CSVLogger(tmp_path, name="attention")
    _trainer(tmp_path, [kd], max_steps=9, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(
        student, datamodule=dm
    )
    rows = [r for r in _rows(tmp_path / "attention" / "version_0" / "metrics.csv") if r.get("distill/attention_loss")]
    assert len(rows) == 9 and all(float(r["distill/attention_loss"]) >= 0 for r in rows)
    for row in rows:  # alpha=1: the KD term has no weight; the attention term is added on top
        expected = float(row["distill/task_loss"]) + float(row["distill/attention_loss"])
        assert float(row["distill/loss"]) == pytest.approx(expected, rel=1e-5)
    assert kd.cache.hits == kd.cache.misses == 0  # the teacher runs every step for attention KD


def test_composes_with_pruning_and_qat(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    from agent_lightning.callbacks import Pruning, QuantizationAwareTraining
    from agent_lightning.quantization import converted_modules, dequantized_weight

    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    pruning = Pruning(sparsity=0.5, start=0, end=4, frequency=2)
    kd = Distillation(teacher=str(teacher_ckpt), attention_weight=1.0, hidden_weight=1.0)
    callbacks = [kd, pruning, QuantizationAwareTraining(start=5)]
    logger = CSVLogger(tmp_path, name="all")
    _trainer(tmp_path, callbacks, max_steps=9, logger=logger, log_every_n_steps=1, limit_val_batches=2).fit(
        student, datamodule=dm
    )
    rows = [r for r in _rows(tmp_path / "all" / "version_0" / "metrics.csv") if r.get("distill/attention_loss")]
    assert len(rows) == 9  # the attention hooks follow the projections QAT swaps at step 5
    assert len({r["distill/attention_loss"] for r in rows[5:]}) == 4  # fresh values every step, not stale ones
    for name, keep in pruning.pruner.masks.items():  # masks exact through KD + fake-quant + convert
        weight = dequantized_weight(student.get_submodule(name.removesuffix(".weight")))
        assert torch.all(weight[~keep] == 0), name
    assert len(converted_modules(student)) == 6


def test_temperature_and_alpha_schedules(tmp_path):
    seed_everything(0)
    kd = Distillation(teacher=BoringModel(), temperature=4.0, temperature_end=1.0, alpha=0.2, alpha_end=0.8)
    logger = CSVLogger(tmp_path, name="schedule")
    _trainer(tmp_path, [kd], max_steps=10, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(BoringModel())
    rows = [r for r in _rows(tmp_path / "schedule" / "version_0" / "metrics.csv") if r.get("distill/temperature")]
    temperatures = [float(r["distill/temperature"]) for r in rows]
    alphas = [float(r["distill/alpha"]) for r in rows]
    assert temperatures == pytest.approx([4.0 - 3.0 * step / 10 for step in range(10)])  # linear over the steps
    assert alphas == pytest.approx([0.2 + 0.6 * step / 10 for step in range(10)])


def test_boring_model_distils_from_another_boring_model(tmp_path):
    seed_everything(0)
    teacher, student = BoringModel(), BoringModel()
    kd = Distillation(teacher=teacher, temperature=1.0, alpha=0.0)
    before = student.layer.weight.clone()
    _trainer(tmp_path, [kd], max_steps=5, limit_val_batches=2).fit(student)
    assert not torch.equal(student.layer.weight, before)
    assert kd.cache.misses == 5 and kd.cache.hits == 0  # random batches every step: nothing to reuse


def test_augmented_copy_adds_a_kd_term_on_changed_tokens(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    distillation = Distillation(teacher=str(teacher_ckpt), alpha=0.4, augment=0.3)
    logger = CSVLogger(tmp_path, name="augment")
    trainer = _trainer(tmp_path, [distillation], max_steps=4, logger=logger, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(student, datamodule=dm)
    rows = [r for r in _rows(tmp_path / "augment" / "version_0" / "metrics.csv") if r.get("distill/loss")]
    assert len(rows) == 4
    for row in rows:
        kd, augmented = float(row["distill/kd_loss"]), float(row["distill/augmented_kd_loss"])
        expected = 0.4 * float(row["distill/task_loss"]) + 0.6 * kd + 0.6 * augmented
        assert float(row["distill/loss"]) == pytest.approx(expected, rel=1e-5)
        assert augmented > 0 and augmented != kd  # another input: another KL
    # the augmented copy is that of replace_tokens, seeded by the step
    from agent_lightning.distillation.augmentation import replace_tokens

    batch = next(iter(dm.train_dataloader()))
    copy_a = replace_tokens(batch["input_ids"], batch["attention_mask"], 0.3, torch.Generator().manual_seed(3))
    copy_b = replace_tokens(batch["input_ids"], batch["attention_mask"], 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(copy_a, copy_b) and not torch.equal(copy_a, batch["input_ids"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0}, ValueError, r"temperature=0\) must be a number > 0"),
        ({"alpha": 1.5}, ValueError, r"alpha=1.5\) must be in \[0, 1\]"),
        ({"alpha_end": -0.1}, ValueError, r"alpha_end=-0.1\) must be in \[0, 1\]"),
        ({"cache": "ram"}, ValueError, r"cache='ram'\) is not a choice; use 'memory', 'disk' or 'none'"),
        ({"cache": "disk"}, ValueError, r"cache_dir=None\): the disk cache needs a folder"),
        ({"layer_map": "1,3"}, TypeError, "must be a list of teacher block indices"),
        ({"augment": 1.0}, ValueError, r"augment=1.0\) must be in \[0, 1\): the fraction of tokens replaced"),
        ({"prompt_weight": -1.0}, ValueError, r"prompt_weight=-1.0\) must be a number >= 0 \(0 turns it off\)"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Distillation(teacher=torch.nn.Linear(2, 2), **kwargs)


def test_bad_teachers_fail_before_training(tmp_path, tiny_bert, shared_tiny_data_dir, teacher_ckpt):
    student, dm = _student_and_data(tiny_bert, shared_tiny_data_dir)
    before = student.model.classifier.weight.clone()
    with pytest.raises(FileNotFoundError, match="teacher='missing.ckpt'\\): no such checkpoint file"):
        Distillation(teacher="missing.ckpt")  # refused at construction
    other_labels = Agent(model=tiny_bert, labels=["w", "x", "y", "z"])
    with pytest.raises(ValueError, match=r"predicts 4 labels \[w, x, y, z\], the student 4 labels \[call,"):
        _trainer(tmp_path, [Distillation(teacher=other_labels)], max_steps=2).fit(student, datamodule=dm)
    from transformers import BertForSequenceClassification

    small_vocab = BertForSequenceClassification(tiny_bert_config(vocab_size=500, num_hidden_layers=1))
    with pytest.raises(ValueError, match="has a vocabulary of 500 tokens, the student 30522"):
        _trainer(tmp_path, [Distillation(teacher=small_vocab)], max_steps=2).fit(student, datamodule=dm)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(teacher_ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not be loaded as a Agent checkpoint"):
        _trainer(tmp_path, [Distillation(teacher=str(corrupt))], max_steps=2).fit(student, datamodule=dm)
    assert torch.equal(student.model.classifier.weight, before)
