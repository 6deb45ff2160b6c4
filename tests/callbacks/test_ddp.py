"""Compression callbacks under Lightning's own DDP (2 CPU processes, gloo): every rank ends in the same state."""

from __future__ import annotations

import csv
import hashlib

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Distillation, EmbeddingCompression, Pruning, QuantizationAwareTraining
from agent_lightning.quantization import fake_quantized_modules
from tests.conftest import tiny_bert_config


class _WriteMaskDigest(Callback):
    def __init__(self, folder: str, pruning: Pruning) -> None:
        self.folder = folder
        self.pruning = pruning

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name in sorted(self.pruning.pruner.masks):
            digest.update(name.encode())
            digest.update(self.pruning.pruner.masks[name].cpu().numpy().tobytes())
        sparsity = self.pruning.sparsity_now(pl_module)[0]
        with open(f"{self.folder}/rank{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{digest.hexdigest()} {sparsity:.6f}")


def _fit_on_two_processes(
    tiny_bert, tiny_data_dir, callbacks, max_steps=8, limit_val_batches=0, root=None, log=False
) -> None:
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=max_steps,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        logger=CSVLogger(root, name="logs") if log else False,
        log_every_n_steps=1,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two processes on two cores
    try:
        trainer.fit(agent, datamodule=dm)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_masks_are_identical_on_both_ranks(tmp_path, tiny_bert, tiny_data_dir):
    pruning = Pruning(sparsity=0.5, start=0, end=6, frequency=2)
    _fit_on_two_processes(tiny_bert, tiny_data_dir, [pruning, _WriteMaskDigest(str(tmp_path), pruning)])
    rank0 = (tmp_path / "rank0.txt").read_text().split()
    rank1 = (tmp_path / "rank1.txt").read_text().split()
    assert rank0 == rank1
    assert float(rank0[1]) == pytest.approx(0.5, abs=1e-6)


class _WriteQuantizedDigest(Callback):
    """At fit end: a digest of every quantized weight grid (fake-quantized values and scales) and the logged gap."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        modules = fake_quantized_modules(pl_module)  # ddp_spawn workers hand back the fake-quantized model
        for name in sorted(modules):
            quantizer = modules[name].weight_fake_quantizer
            digest.update(name.encode())
            digest.update(quantizer(modules[name].weight).detach().numpy().tobytes())
            digest.update(quantizer.scale.numpy().tobytes())
        converted = float(trainer.callback_metrics["qat/converted_acc"])
        with open(f"{self.folder}/qat{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{digest.hexdigest()} {len(modules)} {converted:.6f}")


@pytest.mark.slow
def test_pruning_and_qat_end_identical_on_both_ranks(tmp_path, tiny_bert, tiny_data_dir):
    callbacks = [
        Pruning(sparsity=0.5, start=0, end=4, frequency=2),
        QuantizationAwareTraining(start=2, freeze=6),
        _WriteQuantizedDigest(str(tmp_path)),
    ]
    _fit_on_two_processes(tiny_bert, tiny_data_dir, callbacks, limit_val_batches=2)
    rank0 = (tmp_path / "qat0.txt").read_text().split()
    rank1 = (tmp_path / "qat1.txt").read_text().split()
    assert rank0 == rank1  # same int8 grids and frozen scales; the accuracy is reduced over both ranks' shards
    assert int(rank0[1]) == 12
    assert 0.0 <= float(rank0[2]) <= 1.0


@pytest.mark.slow
def test_qat_alone_ends_identical_on_both_ranks(tmp_path, tiny_bert, tiny_data_dir):
    callbacks = [QuantizationAwareTraining(start=2, freeze=6), _WriteQuantizedDigest(str(tmp_path))]
    _fit_on_two_processes(tiny_bert, tiny_data_dir, callbacks, limit_val_batches=2)
    rank0 = (tmp_path / "qat0.txt").read_text().split()
    assert rank0 == (tmp_path / "qat1.txt").read_text().split() and int(rank0[1]) == 12


class _WriteWeightDigest(Callback):
    """At fit end: a digest of the student's weights and the number of distillation losses logged."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        agreement = float(trainer.callback_metrics["distill/agreement"])
        with open(f"{self.folder}/kd{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{digest.hexdigest()} {agreement:.6f}")


@pytest.mark.slow
def test_distillation_keeps_ranks_identical(tmp_path, tiny_bert, tiny_data_dir):
    from transformers import BertForSequenceClassification

    labels = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert).label_names
    torch.manual_seed(0)
    # wider than the student: the projection must stay equal on both ranks
    teacher = BertForSequenceClassification(tiny_bert_config(labels, hidden_size=48))
    kd = Distillation(teacher=teacher, hidden_weight=1.0)
    _fit_on_two_processes(tiny_bert, tiny_data_dir, [kd, _WriteWeightDigest(str(tmp_path))], limit_val_batches=2)
    rank0 = (tmp_path / "kd0.txt").read_text().split()
    rank1 = (tmp_path / "kd1.txt").read_text().split()
    assert rank0 == rank1  # same student weights; the agreement is reduced over both ranks' shards


class _WriteTokenCounts(Callback):
    """Per rank: the token ids of its own batches, and EmbeddingCompression's counts at train end."""

    def __init__(self, folder: str, embeddings: EmbeddingCompression) -> None:
        self.folder = folder
        self.embeddings = embeddings
        self.own: set[int] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.own |= set(batch["input_ids"].unique().tolist())

    def on_train_end(self, trainer, pl_module):
        counts = self.embeddings._counts
        seen = torch.nonzero(counts).flatten().tolist()
        with open(f"{self.folder}/tokens{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{' '.join(map(str, seen))}\n{' '.join(map(str, sorted(self.own)))}\n{int(counts.sum())}")


@pytest.mark.slow
def test_embedding_counts_are_the_union_of_both_ranks(tmp_path, tiny_bert, tiny_data_dir):
    embeddings = EmbeddingCompression()
    _fit_on_two_processes(tiny_bert, tiny_data_dir, [embeddings, _WriteTokenCounts(str(tmp_path), embeddings)])
    rank0 = (tmp_path / "tokens0.txt").read_text().splitlines()
    rank1 = (tmp_path / "tokens1.txt").read_text().splitlines()
    assert rank0[0] == rank1[0] and rank0[2] == rank1[2]  # identical counts on both ranks
    union = set(map(int, rank0[1].split())) | set(map(int, rank1[1].split()))
    assert set(map(int, rank0[0].split())) == union != set(map(int, rank0[1].split()))  # each rank saw a part


@pytest.mark.parametrize(
    ("make", "owner"),
    [
        (lambda teacher: Pruning(0.5), "Pruning"),
        (lambda teacher: QuantizationAwareTraining(), "QuantizationAwareTraining"),
        (lambda teacher: Distillation(teacher), "Distillation"),
        (lambda teacher: EmbeddingCompression(), "EmbeddingCompression"),
    ],
)
def test_sharded_strategies_are_refused_at_setup_by_name(make, owner, tiny_bert):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    agent = Agent(model=tiny_bert, labels=["a", "b"])
    fsdp = SimpleNamespace(strategy=FSDPStrategy())  # FSDP needs GPUs to run; its setup check needs only its name
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{owner} does not support the FSDPStrategy strategy: .*strategy='ddp'"):
        make(Agent(model=tiny_bert, labels=["a", "b"])).setup(fsdp, agent, "fit")
    assert all(torch.equal(before[k], v) for k, v in agent.state_dict().items())  # nothing changed


@pytest.mark.slow
def test_all_four_together_on_two_ranks_then_the_checkpoint_exports_in_one_process(tmp_path, tiny_bert, tiny_data_dir):
    from transformers import BertForSequenceClassification

    from agent_lightning.deployment.export import export_agent
    from agent_lightning.deployment.runtime import ExportedAgent

    labels = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert).label_names
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(labels))
    callbacks = [
        Distillation(teacher=teacher),
        Pruning(sparsity=0.5, start=0, end=4, frequency=2),
        QuantizationAwareTraining(start=4, freeze=6),
        EmbeddingCompression(),
        _WriteWeightDigest(str(tmp_path)),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", monitor=None, save_on_train_epoch_end=True),
    ]
    _fit_on_two_processes(tiny_bert, tiny_data_dir, callbacks, limit_val_batches=2, root=tmp_path, log=True)
    assert (tmp_path / "kd0.txt").read_text() == (tmp_path / "kd1.txt").read_text()  # identical ranks
    # the distillation terms are logged once per step (rank zero), not once per rank
    with open(tmp_path / "logs" / "version_0" / "metrics.csv", encoding="utf-8") as handle:
        steps = [row["step"] for row in csv.DictReader(handle) if row.get("distill/kd_loss")]
    assert len(steps) == 8 and len(set(steps)) == 8
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    agent = Agent.load_from_checkpoint(checkpoint)  # in this single process
    weight = agent.model.bert.encoder.layer[0].intermediate.dense.weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    export_agent(checkpoint, tmp_path / "int8")
    exported = ExportedAgent(tmp_path / "int8")
    assert exported.manifest["quantization"] == "QAT ranges from the checkpoint"
    assert exported.manifest["parity"]["quantized_layers"] == 12 and exported.manifest["embeddings"]["kept_tokens"] > 10
    assert len(exported.act(["play some jazz", "call mom"])) == 2
