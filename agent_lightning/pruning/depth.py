"""Depth pruning: which transformer blocks matter, scored on calibration batches.

A block that barely changes its input can go. ShortGPT (Men et al. 2024) measures this as the *block influence*
``BI = 1 - cos(x_in, x_out)``, the cosine similarity of a block's input and output hidden states averaged over tokens;
Minitron (Muralidharan et al. 2024) prunes depth the same way before distilling. :func:`block_influence` computes it
on calibration batches and :func:`most_important_blocks` keeps the ``N`` highest, in model order;
``Agent(student_layers="auto:N")`` (``--student-layers auto:N``) builds a student from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_lightning.evaluation import forward_batches
from agent_lightning.targets import block_list

__all__ = ["AUTO_LAYERS", "auto_layers", "block_influence", "most_important_blocks"]

#: ``student_layers`` that asks for the N most important blocks: ``"auto:N"``
AUTO_LAYERS = re.compile(r"auto:(\d+)")


def auto_layers(value: Any) -> int | None:
    """``N`` of ``"auto:N"``, ``None`` for anything else.

    Example:
        >>> auto_layers("auto:15"), auto_layers([0, 2, 4])
        (15, None)
    """
    match = AUTO_LAYERS.fullmatch(value.strip()) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


@torch.no_grad()
def block_influence(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> Tensor:
    """``(num_blocks,)`` block influence: ``1 - cos(input, output)`` of each block's hidden states, averaged over the
    real tokens of ``batches`` (the keyword ``attention_mask`` of the model's call leaves padding out).

    Args:
        model: a module with a list of transformer blocks (:func:`~agent_lightning.targets.block_list`), called on
            each batch as :func:`~agent_lightning.evaluation.forward_batches` does.
        batches: calibration batches (e.g. a training dataloader).
        max_batches: read at most this many.

    Raises:
        ValueError: the model has no block list, or no batch was read.

    Example:
        >>> class Blocks(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList([nn.Identity(), nn.Linear(2, 2, bias=False)])
        ...         self.layers[1].weight = nn.Parameter(-torch.eye(2))  # x -> -x
        ...     def forward(self, x):
        ...         return self.layers[1](self.layers[0](x))
        >>> block_influence(Blocks(), [torch.ones(1, 3, 2)]).round(decimals=4)  # identity: nothing; -x: everything
        tensor([0., 2.])
    """
    _, blocks = block_list(model)
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = torch.zeros(len(blocks), dtype=torch.float64)
    mask: list[Tensor | None] = [None]

    def remember_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        found = kwargs.get("attention_mask")
        mask[0] = found if isinstance(found, Tensor) and found.dim() == 2 else None

    def measure(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            inputs = args[0] if args else kwargs["hidden_states"]
            outputs = output[0] if isinstance(output, (tuple, list)) else output
            similarity = F.cosine_similarity(inputs.float(), outputs.float(), dim=-1)  # (B, L) or (B,)
            weights = torch.ones_like(similarity)
            if mask[0] is not None and similarity.shape == mask[0].shape:
                weights = mask[0].to(similarity)
            totals[index] += float(((1 - similarity) * weights).sum())
            tokens[index] += float(weights.sum())

        return hook

    handles = [model.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    handles += [block.register_forward_hook(measure(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        forward_batches(model, batches, max_batches)
    finally:
        for handle in handles:
            handle.remove()
    return (totals / tokens.clamp(min=1)).float()


def most_important_blocks(scores: Tensor, keep: int) -> list[int]:
    """The indices of the ``keep`` highest-scoring blocks, in model order.

    Raises:
        ValueError: ``keep`` is not in ``[1, len(scores)]``.

    Example:
        >>> most_important_blocks(torch.tensor([0.9, 0.1, 0.5, 0.7]), 2)
        [0, 3]
    """
    count = int(scores.numel())
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= count:
        raise ValueError(f"keep={keep!r} blocks: give a number in [1, {count}] (the model has {count} blocks).")
    return sorted(scores.topk(keep).indices.tolist())
