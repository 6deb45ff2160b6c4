"""Seed the random number generators from the optimizer step, so that a resumed run repeats its dropout exactly."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["RandomState"]


class RandomState(Callback):
    """Reseed Python, NumPy and torch (CPU and CUDA) before every training batch from ``(seed, step, rank)``.

    Lightning restores weights, optimizer and loop counters on resume, but not the generators; and saving their
    state in the checkpoint is not enough either, because the loop draws different amounts of randomness between
    "checkpoint written" and "next batch" in a run that goes on and in one that resumes. Making every step's
    randomness (dropout masks) a function of the step alone removes the problem: with a data order that depends
    only on the seed and the epoch (as in :class:`~agent_lightning.datamodules.TextClassificationDataModule`), a run
    resumed from a checkpoint continues exactly as the uninterrupted run. Each DDP rank gets its own stream.

    Args:
        seed: base seed; ``None`` follows ``seed_everything`` (``PL_GLOBAL_SEED``), else 0. A resumed run keeps the
            checkpoint's seed.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[RandomState(seed=7)], logger=False, enable_progress_bar=False)
        >>> RandomState(seed=7).state_dict()["seed"]
        7
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"RandomState(seed={seed!r}) must be an integer or None.")
        self.seed = seed

    def _base_seed(self) -> int:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self.seed

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step_seed = (self._base_seed() * 1_000_003 + trainer.global_step * trainer.world_size + trainer.global_rank) % (
            2**63
        )
        random.seed(step_seed)
        np.random.seed(step_seed % 2**32)
        torch.manual_seed(step_seed)  # CPU and every CUDA device

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._base_seed()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
