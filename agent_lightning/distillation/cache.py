"""Teacher logits computed once per example and reused in later epochs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agent_lightning.io import atomic_torch_save

__all__ = ["TeacherLogitCache"]


class TeacherLogitCache:
    """Per-example teacher logits keyed by the example's *content*.

    A key is a hash of each per-example input tensor's row (token ids, masks, ...), restricted to the real tokens
    when an ``attention_mask`` is given, so an example padded differently in another epoch (dynamic padding,
    length-grouped batches) still hits, and an example whose inputs change (augmentation, another tokenizer) misses.
    The teacher is frozen and in eval mode, so its logits depend on the inputs only.

    Only per-example logits ``(B, C)`` are cached (sequence logits of language models would not fit in memory).

    Args:
        path: optional file to load from and :meth:`save` to (``torch.save`` of CPU tensors, written atomically).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._logits: dict[bytes, Tensor] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            self._logits = torch.load(self.path, map_location="cpu", weights_only=True)

    def __len__(self) -> int:
        return len(self._logits)

    @staticmethod
    def keys(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[bytes] | None:
        """One key per example of the batch, or ``None`` when the inputs have no per-example tensors."""
        tensors = [(str(i), a) for i, a in enumerate(args) if isinstance(a, Tensor)]
        tensors += [(k, v) for k, v in sorted(kwargs.items()) if isinstance(v, Tensor) and k != "labels"]
        if not tensors or tensors[0][1].ndim == 0:
            return None
        size = tensors[0][1].shape[0]
        tensors = [(name, t) for name, t in tensors if t.ndim > 0 and t.shape[0] == size]
        mask = kwargs.get("attention_mask")
        keys = []
        for row in range(size):
            digest = hashlib.blake2b(digest_size=16)
            real = mask[row].bool() if isinstance(mask, Tensor) and mask.ndim == 2 else None
            for name, tensor in tensors:
                values = tensor[row]
                if real is not None and values.ndim >= 1 and values.shape[0] == real.shape[0]:
                    values = values[real]
                digest.update(f"{name}:{values.dtype}:{tuple(values.shape)}".encode())
                digest.update(values.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            keys.append(digest.digest())
        return keys

    def get(self, keys: list[bytes], device: torch.device) -> Tensor | None:
        """The stacked logits ``(B, C)`` when every example is cached, else ``None``."""
        if all(k in self._logits for k in keys):
            self.hits += 1
            return torch.stack([self._logits[k] for k in keys]).to(device)
        self.misses += 1
        return None

    def put(self, keys: list[bytes], logits: Tensor) -> None:
        """Store one row of ``logits`` ``(B, C)`` per key."""
        for key, row in zip(keys, logits.detach().float().cpu()):
            self._logits[key] = row.clone()

    def save(self) -> None:
        """Write the cache to :attr:`path` atomically (no-op without a path)."""
        if self.path is not None:
            atomic_torch_save(self._logits, self.path)
