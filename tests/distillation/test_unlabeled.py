"""Few labels plus unlabelled text: the datamodule marks unlabelled rows, the task loss skips them, KD covers them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Distillation
from agent_lightning.cli.short_flags import expand_short_flags
from agent_lightning.evaluation import UNLABELED
from tests.conftest import quiet_trainer, write_rows


def _rows(n_per_label: int = 6) -> list[tuple[str, str]]:
    return [
        (f"{label} request number {i}", label) for label in ("alarm", "music", "weather") for i in range(n_per_label)
    ]


def test_labels_per_class_is_a_stratified_seeded_subsample(tmp_path, tiny_bert):
    train = write_rows(tmp_path / "train.csv", _rows(8))
    val = write_rows(tmp_path / "val.csv", _rows(2))

    def subsample(seed: int) -> list[str]:
        dm = TextClassificationDataModule(
            train_file=str(train), val_file=str(val), tokenizer=tiny_bert, labels_per_class=3, split_seed=seed
        )
        assert Counter(dm.splits["train"].labels) == {"alarm": 3, "music": 3, "weather": 3}
        assert dm.unlabeled_texts == []  # no unlabeled_file: the rest is not used
        return dm.splits["train"].texts

    assert subsample(0) == subsample(0)
    assert subsample(0) != subsample(1)
    dm = TextClassificationDataModule(
        train_file=str(train), val_file=str(val), tokenizer=tiny_bert, labels_per_class=3, unlabeled_file="rest"
    )
    assert sorted(dm.splits["train"].texts + dm.unlabeled_texts) == sorted(t for t, _ in _rows(8))
    assert len(dm.unlabeled_texts) == 15


def test_unlabeled_rows_reach_the_training_batches_marked(tmp_path, tiny_bert):
    train = write_rows(tmp_path / "train.csv", _rows(4))
    unlabeled = write_rows(tmp_path / "traffic.csv", [("what is the forecast", "x"), ("wake me at six", "x")])
    dm = TextClassificationDataModule(
        train_file=str(train), tokenizer=tiny_bert, unlabeled_file=str(unlabeled), batch_size=64, val_fraction=0.25
    )
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    labels = batch["labels"]
    assert int((labels == UNLABELED).sum()) == 2 and len(labels) == 9 + 2
    assert all(0 <= int(i) < 3 for i in labels[labels != UNLABELED])
    (val,) = list(dm.val_dataloader())
    assert not bool((val["labels"] == UNLABELED).any())  # validation stays labelled


def test_bad_few_label_arguments(tmp_path, tiny_bert):
    with pytest.raises(ValueError, match="unlabeled_file='rest' means .* labels_per_class is not set"):
        TextClassificationDataModule(tokenizer=tiny_bert, unlabeled_file="rest")
    with pytest.raises(ValueError, match=r"unlabeled_file='missing.csv' does not exist"):
        TextClassificationDataModule(tokenizer=tiny_bert, unlabeled_file="missing.csv")
    with pytest.raises(ValueError, match="labels_per_class=0 must be a positive integer"):
        TextClassificationDataModule(tokenizer=tiny_bert, labels_per_class=0)
    with pytest.raises(ValueError, match="--labels-per-class 'ten' must be a positive integer"):
        expand_short_flags(["fit", "--labels-per-class", "ten"])
    assert expand_short_flags(["fit", "--labels-per-class", "10", "--unlabeled", "rest"]) == [
        "fit",
        "--data.labels_per_class=10",
        "--data.unlabeled_file=rest",
    ]


def test_the_agents_task_loss_is_over_the_labelled_rows_only(tmp_path, tiny_bert):
    torch.manual_seed(0)
    agent = Agent(model=tiny_bert, labels=["a", "b", "c"]).eval()
    ids, mask = torch.randint(1000, 2000, (4, 6)), torch.ones(4, 6, dtype=torch.long)
    with torch.no_grad():
        output = agent(input_ids=ids, attention_mask=mask, labels=torch.tensor([2, UNLABELED, 0, UNLABELED]))
    by_hand = -(F.log_softmax(output.logits[0], -1)[2] + F.log_softmax(output.logits[2], -1)[0]) / 2
    assert float(output.loss) == pytest.approx(float(by_hand), rel=1e-5)
    # a step of only unlabelled rows: a zero task loss, not cross-entropy's NaN, and training goes on
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": torch.tensor(UNLABELED)} for i in range(4)]
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(tmp_path, max_steps=1, logger=logger, log_every_n_steps=1, limit_val_batches=0).fit(
        agent.train(), DataLoader(rows, batch_size=4)
    )
    header, values = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[:2]
    logged = {k: float(v) for k, v in zip(header.split(","), values.split(",")) if v}
    assert logged["train/loss"] == 0.0


class Classifier(LightningModule):
    """Someone else's module: (features, label) pairs, cross-entropy that skips -100."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y, ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean() * temperature**2


def _one_distilled_step(tmp_path, student: Classifier, teacher: nn.Module, x, labels) -> dict[str, float]:
    """Fit one step with Distillation(T=2, alpha=0.4) on one batch; the metrics it logged."""
    distillation = Distillation(teacher=teacher, temperature=2.0, alpha=0.4, cache="none")
    logger = CSVLogger(tmp_path, name="run")
    loader = DataLoader(list(zip(x, labels)), batch_size=4)
    quiet_trainer(tmp_path, [distillation], max_steps=1, logger=logger, log_every_n_steps=1).fit(student, loader)
    header, values = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[:2]
    return {k: float(v) for k, v in zip(header.split(","), values.split(",")) if v}


def test_kd_covers_every_row_and_the_task_loss_the_labelled_ones(tmp_path):
    torch.manual_seed(0)
    student, teacher = Classifier(), nn.Linear(4, 3)
    x, labels = torch.randn(4, 4), torch.tensor([1, UNLABELED, 2, UNLABELED])
    with torch.no_grad():
        s, t = student(x), teacher(x)
    expected_kd = _kd(s, t, 2.0)
    expected_unlabeled = _kd(s[[1, 3]], t[[1, 3]], 2.0)
    expected_task = F.cross_entropy(s[[0, 2]], labels[[0, 2]])
    logged = _one_distilled_step(tmp_path, student, teacher, x, labels)
    assert logged["distill/kd_loss"] == pytest.approx(float(expected_kd), rel=1e-5)
    assert logged["distill/kd_loss_unlabeled"] == pytest.approx(float(expected_unlabeled), rel=1e-5)
    assert logged["distill/task_loss"] == pytest.approx(float(expected_task), rel=1e-5)
    assert logged["distill/loss"] == pytest.approx(0.4 * float(expected_task) + 0.6 * float(expected_kd), rel=1e-5)


def test_a_batch_of_only_unlabeled_rows_trains_on_kd_alone(tmp_path):
    torch.manual_seed(0)
    student, teacher = Classifier(), nn.Linear(4, 3)
    x, labels = torch.randn(4, 4), torch.full((4,), UNLABELED)
    with torch.no_grad():
        expected_kd = _kd(student(x), teacher(x), 2.0)
    before = student.layer.weight.detach().clone()
    logged = _one_distilled_step(tmp_path, student, teacher, x, labels)
    assert "distill/task_loss" not in logged  # cross-entropy over no row would be NaN
    assert logged["distill/loss"] == pytest.approx(0.6 * float(expected_kd), rel=1e-5)
    assert logged["distill/kd_loss_unlabeled"] == pytest.approx(float(expected_kd), rel=1e-5)
    assert not torch.equal(student.layer.weight.detach(), before)  # KD moved the weights
    assert torch.isfinite(student.layer.weight).all()
