"""Unstructured and N:M masks from weight scores, and keeping them enforced.

A mask is a boolean tensor of the weight's shape, ``True`` where the weight is kept. Masks only grow: a weight
pruned once scores below every kept one (:func:`scores_with_history`), so later, higher targets never bring it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = [
    "apply_masks",
    "keep_largest",
    "magnitude_masks",
    "mask_gradients",
    "n_m_masks",
    "row_masks",
    "scores_with_history",
    "zero_optimizer_moments",
]


def keep_largest(score: Tensor, prune: int) -> Tensor:
    """Boolean mask keeping all but the ``prune`` lowest scores (exactly ``prune`` zeros).

    Example:
        >>> keep_largest(torch.tensor([0.3, 0.1, 0.2, 0.4]), 2).tolist()
        [True, False, False, True]
    """
    keep = torch.ones_like(score, dtype=torch.bool)
    if prune > 0:
        flat = keep.view(-1)
        flat[score.reshape(-1).topk(prune, largest=False).indices] = False
    return keep


def scores_with_history(weight: Tensor, previous: Tensor | None) -> Tensor:
    """``|weight|`` (or the absolute value of any other score) as float, with the weights ``previous`` already pruned
    scored below every kept one (-1)."""
    score = weight.detach().abs().float()
    if previous is not None:
        score = score.masked_fill(~previous, -1.0)
    return score


def magnitude_masks(scores: Mapping[str, Tensor], target: float, scope: str = "layer") -> dict[str, Tensor]:
    """Masks that zero the ``target`` fraction of lowest scores: in each tensor (``scope="layer"``) or over all of
    them with one threshold (``scope="global"``).

    Example:
        >>> masks = magnitude_masks({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}, 0.5, "global")
        >>> masks["a"].tolist(), masks["b"].tolist()
        ([False, False], [True, True])
    """
    if scope == "layer":
        return {name: keep_largest(score, round(target * score.numel())) for name, score in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep_flat = keep_largest(flat, round(target * flat.numel()))
    masks, offset = {}, 0
    for name, score in scores.items():
        masks[name] = keep_flat[offset : offset + score.numel()].view_as(score)
        offset += score.numel()
    return masks


def row_masks(score: Tensor, target: float, transposed: bool = False) -> Tensor:
    """The mask that prunes the ``target`` fraction of lowest scores within each output row (Wanda's comparison
    group: every output neuron keeps the same share of its inputs).

    Args:
        score: ``(out, in)`` scores (``(in, out)`` with ``transposed``, as GPT-2's ``Conv1D`` stores weights).
        target: fraction pruned in every row.
        transposed: ``score`` is stored ``(in, out)``.

    Example:
        >>> row_masks(torch.tensor([[4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]), 0.5).tolist()
        [[True, False, True, False], [False, False, True, True]]
    """
    rows = score.t() if transposed else score
    keep = torch.ones_like(rows, dtype=torch.bool)
    prune = round(target * rows.shape[1])
    if prune:
        keep.scatter_(1, rows.topk(prune, dim=1, largest=False).indices, False)
    return keep.t().contiguous() if transposed else keep


def n_m_masks(score: Tensor, n: int, m: int, fraction: float = 1.0, transposed: bool = False) -> Tensor:
    """The N:M mask of one weight: in every group of ``m`` consecutive inputs of an output row, the
    ``fraction * (m - n)`` lowest scores are pruned (``fraction=1``: exactly ``n`` kept).

    Args:
        score: ``(out, in)`` scores (``(in, out)`` with ``transposed``, as GPT-2's ``Conv1D`` stores weights).
        n: weights kept per group at the target.
        m: group size; must divide the number of inputs.
        fraction: how far along the schedule (0 to 1).
        transposed: ``score`` is stored ``(in, out)``.

    Example:
        >>> n_m_masks(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4).tolist()
        [[True, False, True, False]]
    """
    zeros_per_group = min(m - n, round(fraction * (m - n)))
    rows = score.t() if transposed else score
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    if zeros_per_group:
        lowest = groups.topk(zeros_per_group, dim=-1, largest=False).indices
        keep.scatter_(-1, lowest, False)
    keep = keep.reshape(rows.shape)
    return keep.t().contiguous() if transposed else keep


@torch.no_grad()
def apply_masks(parameters: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the masked-out entries of the named parameters, in place."""
    for name, keep in masks.items():
        parameters[name].masked_fill_(~keep, 0.0)


def mask_gradients(parameters: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the gradients of masked-out entries, in place, so that an optimizer step cannot revive them."""
    for name, keep in masks.items():
        grad = parameters[name].grad
        if grad is not None:
            grad.masked_fill_(~keep.to(grad.device), 0.0)


def zero_optimizer_moments(
    optimizers: Iterable[torch.optim.Optimizer], parameters: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> None:
    """Zero the optimizer state (e.g. AdamW's moments) of masked-out entries, in place."""
    for optimizer in optimizers:
        for name, keep in masks.items():
            state = optimizer.state.get(parameters[name], {})
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == keep.shape:
                    value.masked_fill_(~keep, 0.0)
