"""Measuring a model as it will be shipped: parameters, nonzeros, bytes on disk, CPU latency.

Used by :class:`~agent_lightning.callbacks.CompressionReport` at fit end and by the scripts in ``benchmarks/``, so a
number in a report and in a benchmark table means the same thing.

- Parameters count what the model computes with: a converted int8 layer (fbgemm or torchao) counts its weight and
  bias like the float layer it replaced, and its nonzeros are those of the quantized weight.
- Bytes are those of ``torch.save(model.state_dict())``, and the same bytes compressed with zlib (deflate, the
  algorithm of a standard ``.zip``): unstructured sparsity saves bytes only once compressed.
- Latency is the median of repeated forward passes under ``torch.inference_mode``, measured round-robin when several
  models are compared (each round runs every model once, in a shuffled order) so a slow moment of the machine hits all
  alike, and bounded by a time budget so it can never stall a run.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agent_lightning.evaluation import split_batch
from agent_lightning.quantization.convert import converted_modules, dequantized_weight
from agent_lightning.quantization.embedding import CompactEmbedding

__all__ = ["ModelInputs", "compare_latency", "file_bytes", "parameter_counts", "saved_bytes", "token_inputs"]


@dataclass(frozen=True)
class ModelInputs:
    """Positional and keyword arguments of one forward call: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None

    @classmethod
    def from_batch(cls, batch: Any, batch_size: int) -> ModelInputs:
        """The inputs of a training/validation ``batch`` (labels dropped), with rows repeated or cut to
        ``batch_size``.

        Raises:
            TypeError: the batch layout is not one :func:`~agent_lightning.evaluation.split_batch` reads.
        """
        args, kwargs, _ = split_batch(batch)
        return cls(tuple(_resize(a, batch_size) for a in args), {k: _resize(v, batch_size) for k, v in kwargs.items()})

    def to(self, device: torch.device | str) -> ModelInputs:
        move = lambda value: value.to(device) if isinstance(value, Tensor) else value  # noqa: E731
        return ModelInputs(tuple(move(a) for a in self.args), {k: move(v) for k, v in (self.kwargs or {}).items()})

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **(self.kwargs or {}))


def token_inputs(batch_size: int, seq_len: int = 64, vocab_size: int = 20000, seed: int = 0) -> ModelInputs:
    """Random token ids ``(batch_size, seq_len)`` and a full attention mask, for Hugging Face style models."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (batch_size, seq_len), generator=generator)
    return ModelInputs(kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(parameters, nonzero parameters)`` of ``model``, converted int8/int4 layers and compacted embeddings
    (their stored rows) included; a parameter shared by several modules (tied input/output embeddings) counts once.

    Example:
        >>> parameter_counts(nn.Linear(4, 2, bias=False))[0]
        8
        >>> tied = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
        >>> tied["head"].weight = tied["embed"].weight
        >>> parameter_counts(tied)[0]
        40
    """
    converted = converted_modules(model)
    total = nonzero = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name in converted:
            tensors = [dequantized_weight(module)]
            bias = module.bias() if callable(module.bias) else module.bias
            tensors += [bias] if isinstance(bias, Tensor) else []
        elif any(name.startswith(f"{c}.") for c in converted):
            continue
        elif isinstance(module, CompactEmbedding):  # a tied CompactLMHead holds the same one: counted once
            tensors = [module.dequantized()] if id(module) not in seen else []
            seen.add(id(module))
        else:
            tensors = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in tensors)
        for tensor in tensors:
            total += tensor.numel()
            nonzero += int(torch.count_nonzero(tensor.detach()))
    return total, nonzero


def saved_bytes(model: nn.Module, compressed: bool = True) -> tuple[int, int | None]:
    """``(bytes, zlib-compressed bytes)`` of ``torch.save(model.state_dict())``; the second is ``None`` unless
    ``compressed``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getbuffer()
    return data.nbytes, (len(zlib.compress(data, 6)) if compressed else None)


def file_bytes(path: str | os.PathLike, compressed: bool = True) -> tuple[int, int | None]:
    """``(bytes, zlib-compressed bytes)`` of a file on disk, e.g. an exported program, measured like
    :func:`saved_bytes`; the second is ``None`` unless ``compressed``."""
    if not compressed:
        return Path(path).stat().st_size, None
    data = Path(path).read_bytes()
    return len(data), len(zlib.compress(data, 6))


@torch.inference_mode()
def compare_latency(
    models: Mapping[str, nn.Module],
    inputs: ModelInputs,
    rounds: int = 20,
    warmup: int = 2,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Median forward seconds of each model on the same ``inputs``, measured round-robin: every round runs each model
    once, in an order shuffled each round (seeded), so no model always runs right after the same other one (a PyTorch
    model's OpenMP workers keep spinning for a while after it returns and take a core from whatever runs next, e.g.
    an ONNX Runtime session).

    Args:
        models: the models by name, put in eval mode (and left there); any callable that ``inputs`` can call.
        inputs: one forward call's inputs, on the models' device.
        rounds: timed passes of every model (at most).
        warmup: untimed passes of every model first.
        budget_s: time limit in seconds, warm-up included: warm-up and measuring stop at the first pass or round
            that ends past it (every model still gets one timed pass), so the call takes about ``budget_s`` plus
            one pass of each model. ``None``: no limit.

    Returns:
        ``{name: median seconds}``.

    Example:
        >>> compare_latency({"a": nn.Linear(8, 8)}, ModelInputs((torch.randn(2, 8),)), rounds=3)["a"] > 0
        True
    """
    for model in models.values():
        if callable(getattr(model, "eval", None)):
            model.eval()
    started = time.perf_counter()
    over = lambda: budget_s is not None and time.perf_counter() - started > budget_s  # noqa: E731
    for _ in range(warmup):
        for model in models.values():
            inputs(model)
        if over():
            break
    times: dict[str, list[float]] = {name: [] for name in models}
    order, shuffle = list(models.items()), random.Random(0).shuffle
    for _ in range(max(rounds, 1)):
        shuffle(order)
        for name, model in order:
            begin = time.perf_counter()
            inputs(model)
            times[name].append(time.perf_counter() - begin)
        if over():
            break
    return {name: statistics.median(values) for name, values in times.items()}


def _resize(value: Any, rows: int) -> Any:
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    repeats = -(-rows // value.shape[0])
    return value.repeat(repeats, *([1] * (value.ndim - 1)))[:rows]
