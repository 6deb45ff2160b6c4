"""CPU inference latency, measured the same way for every model in a benchmark."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["compare_latency", "measure_latency"]


@torch.inference_mode()
def measure_latency(
    model: nn.Module, batch_size: int, seq_len: int = 64, repeats: int = 30, warmup: int = 5, budget_s: float = 60.0
) -> float:
    """Median seconds of one forward pass on random token ids ``(batch_size, seq_len)``.

    Stops early once ``budget_s`` seconds are spent (at least 5 timed runs), so it never stalls a benchmark.
    """
    model.eval()
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    inputs = {
        "input_ids": torch.randint(1000, min(vocab, 20000), (batch_size, seq_len)),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
    }
    for _ in range(warmup):
        model(**inputs)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        begin = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - begin)
        if len(times) >= 5 and time.perf_counter() - started > budget_s:
            break
    return statistics.median(times)


@torch.inference_mode()
def compare_latency(
    models: dict[str, nn.Module], batch_size: int, seq_len: int = 64, rounds: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median forward seconds of each model, measured round-robin (model A, B, C, A, B, C, ...) on the same inputs,
    so that a slow moment of the machine hits every model alike. Use this for ratios."""
    for model in models.values():
        model.eval()
    vocab = min(getattr(getattr(m, "config", None), "vocab_size", 1000) for m in models.values())
    inputs = {
        "input_ids": torch.randint(1000, min(vocab, 20000), (batch_size, seq_len)),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
    }
    for model in models.values():
        for _ in range(warmup):
            model(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            begin = time.perf_counter()
            model(**inputs)
            times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(values) for name, values in times.items()}
