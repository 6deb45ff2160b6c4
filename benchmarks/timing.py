"""Small timing helpers shared by the benchmark scripts (wall-clock, side by side in one process)."""

from __future__ import annotations

import statistics
import time

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["StepTimer"]


class StepTimer(Callback):
    """Record the wall time of every training step and of every training epoch.

    Args:
        skip: steps at the start that are not counted in :attr:`step_seconds` (warm-up: allocator, caches).
    """

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.step_seconds: list[float] = []
        self.warmup_seconds: list[float] = []
        self.epoch_seconds: list[float] = []
        self.samples = 0
        self.tokens = 0
        self._seen = 0

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += 1
        if self._seen <= self.skip:
            self.warmup_seconds.append(time.perf_counter() - self._step_start)
        else:
            self.step_seconds.append(time.perf_counter() - self._step_start)
            self.samples += int(batch["input_ids"].shape[0])
            self.tokens += int(batch["input_ids"].numel())

    @property
    def median_step_seconds(self) -> float:
        """The median counted step; when no step came after the warm-up (a smoke run of a few batches), the median of
        the warm-up steps instead."""
        return statistics.median(self.step_seconds or self.warmup_seconds)

    @property
    def samples_per_second(self) -> float:
        return self.samples / sum(self.step_seconds)
