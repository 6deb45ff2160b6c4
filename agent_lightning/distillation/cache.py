"""Teacher logits computed once per example and reused in later epochs."""

from __future__ import annotations

import hashlib
import math
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

    Per-example logits ``(B, C)`` are stored whole. Sequence logits ``(B, L, V)`` of a language model are stored only
    at the positions a ``mask`` selects (those that predict a response token), and with ``top_k`` as their ``top_k``
    largest logits plus the total probability of the rest: on reading, every other token gets the same logit, chosen
    so that the tail keeps its probability. That is exact for the ``top_k`` tokens and for the tail's total at
    temperature 1 (at other temperatures the tail is spread evenly), and it turns ``V`` floats per position into
    ``2 * top_k + 1`` numbers (a 49k-token vocabulary at ``top_k=64``: 0.3 % of the memory).

    Args:
        path: optional file to load from and :meth:`save` to (``torch.save`` of CPU tensors, written atomically).
        top_k: sequence logits keep this many tokens per position; ``None`` keeps all.

    Example:
        >>> cache = TeacherLogitCache(top_k=2)
        >>> logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [4.0, 3.0, 1.0, 1.0]]])  # (B=1, L=2, V=4)
        >>> mask = torch.tensor([[False, True]])  # only the second position is kept
        >>> cache.put([b"row"], logits, mask)
        >>> cache.get([b"row"], torch.device("cpu"), mask)[0, 1]  # the two others share the tail: log(2e) - log 2
        tensor([4., 3., 1., 1.])
    """

    def __init__(self, path: str | Path | None = None, top_k: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.top_k = top_k
        self._logits: dict[bytes, Tensor | tuple[Tensor, ...]] = {}
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

    def get(self, keys: list[bytes], device: torch.device, mask: Tensor | None = None) -> Tensor | None:
        """The stacked logits when every example is cached, else ``None``: ``(B, C)``, or with the ``(B, L)``
        ``mask`` the sequence was stored with, ``(B, L, V)`` (positions outside the mask are zero)."""
        if mask is None:
            if not all(k in self._logits for k in keys):
                self.misses += 1
                return None
            self.hits += 1
            return torch.stack([self._logits[k] for k in keys]).to(device)
        rows = self.get_rows(keys, device, mask.sum(-1).tolist())
        if rows is None:
            return None
        out = torch.zeros(*mask.shape, rows.shape[-1], device=device)
        out[mask.bool().to(device)] = rows
        return out

    def get_rows(self, keys: list[bytes], device: torch.device, counts: list[int]) -> Tensor | None:
        """The stored sequence rows of every example, concatenated ``(sum(counts), V)``, when each example is cached
        with ``counts[i]`` positions, else ``None`` (a miss)."""
        entries = [self._logits.get(k) for k in keys]
        rows = [None if entry is None else self._sequence_rows(entry) for entry in entries]
        if any(row is None or row.shape[0] != int(n) for row, n in zip(rows, counts)):  # absent, or other positions
            self.misses += 1
            return None
        self.hits += 1
        return torch.cat(rows).to(device)

    def put(self, keys: list[bytes], logits: Tensor, mask: Tensor | None = None) -> None:
        """Store one row of ``logits`` ``(B, C)`` per key, or the ``mask``-ed positions of ``(B, L, V)`` sequence
        logits (compressed to ``top_k`` tokens when set)."""
        logits = logits.detach().float().cpu()
        if mask is None:
            for key, row in zip(keys, logits):
                self._logits[key] = row.clone()
            return
        self.put_rows(keys, [row[keep] for row, keep in zip(logits, mask.bool().cpu())])

    def put_rows(self, keys: list[bytes], rows: list[Tensor]) -> None:
        """Store each example's sequence rows ``(n_i, V)`` (compressed to ``top_k`` tokens when set)."""
        for key, row in zip(keys, rows):
            self._logits[key] = self._compress(row.detach().float().cpu())

    def _compress(self, rows: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """``(n, V)`` logits as they are, or as ``(top values, top indices, tail logit, V)``."""
        vocab = rows.shape[-1]
        if self.top_k is None or self.top_k >= vocab:
            return rows.clone()
        values, indices = rows.topk(self.top_k, dim=-1)
        tail = rows.scatter(-1, indices, float("-inf")).logsumexp(-1) - math.log(vocab - self.top_k)
        return values.clone(), indices.to(torch.int32), tail, torch.tensor(vocab)

    @staticmethod
    def _sequence_rows(entry: Tensor | tuple[Tensor, ...]) -> Tensor:
        """``(n, V)`` logits back from :meth:`_compress`."""
        if isinstance(entry, Tensor):
            return entry
        values, indices, tail, vocab = entry
        rows = tail[:, None].expand(values.shape[0], int(vocab)).clone()
        return rows.scatter(-1, indices.long(), values)

    def save(self) -> None:
        """Write the cache to :attr:`path` atomically (no-op without a path)."""
        if self.path is not None:
            atomic_torch_save(self._logits, self.path)
