"""Pruning under Lightning's own DDP (2 CPU processes, gloo): every rank ends with rank zero's masks."""

from __future__ import annotations

import hashlib

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback

from agent_lightning import Agent, TextClassificationDataModule
from agent_lightning.callbacks import Pruning


class _WriteMaskDigest(Callback):
    def __init__(self, folder: str, pruning: Pruning) -> None:
        self.folder = folder
        self.pruning = pruning

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name in sorted(self.pruning._keep):
            digest.update(name.encode())
            digest.update(self.pruning._keep[name].cpu().numpy().tobytes())
        sparsity = self.pruning.sparsity_now(pl_module)[0]
        with open(f"{self.folder}/rank{trainer.global_rank}.txt", "w") as handle:
            handle.write(f"{digest.hexdigest()} {sparsity:.6f}")


@pytest.mark.slow
def test_masks_are_identical_on_both_ranks(tmp_path, tiny_bert, tiny_data_dir):
    seed_everything(0)
    dm = TextClassificationDataModule(dataset=str(tiny_data_dir), tokenizer=tiny_bert, batch_size=4)
    agent = Agent(model=tiny_bert, labels=dm.label_names, learning_rate=1e-3)
    pruning = Pruning(sparsity=0.5, start=0, end=6, frequency=2)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=8,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pruning, _WriteMaskDigest(str(tmp_path), pruning)],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two processes on two cores
    try:
        trainer.fit(agent, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    rank0 = (tmp_path / "rank0.txt").read_text().split()
    rank1 = (tmp_path / "rank1.txt").read_text().split()
    assert rank0 == rank1
    assert float(rank0[1]) == pytest.approx(0.5, abs=1e-6)
