"""Depth pruning: which transformer blocks matter, scored on calibration batches.

Two scores, both from the hidden states between blocks on calibration batches:

- **span distance** (Gromov et al. 2024, *The Unreasonable Ineffectiveness of the Deeper Layers*): to drop ``n``
  blocks, drop the contiguous span ``[l, l + n)`` whose input and output hidden states are closest, the angular
  distance ``arccos(cos(h_l, h_{l+n})) / pi`` averaged over tokens (:func:`span_distance`,
  :func:`keep_outside_span`). The blocks that stay are still consecutive stretches of the model, and the choice
  accounts for what the dropped blocks do together.
- **block influence** (ShortGPT, Men et al. 2024; Minitron, Muralidharan et al. 2024): ``BI = 1 - cos(x_in, x_out)``
  of each block alone; the ``N`` highest stay (:func:`block_influence`, :func:`most_important_blocks`).

:func:`choose_blocks` runs either. ``Agent(student_layers="auto:N")`` (``--student-layers auto:N``) builds a student
of ``N`` blocks by span distance (the better start on SmolLM2, ``benchmarks/llm``); ``"influence:N"`` by block
influence, ``"span:N"`` names the default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_lightning.evaluation import forward_batches
from agent_lightning.targets import block_list
from agent_lightning.validation import check_choice

__all__ = [
    "AUTO_LAYERS",
    "LAYER_CRITERIA",
    "BlockChoice",
    "auto_layers",
    "block_influence",
    "choose_blocks",
    "keep_outside_span",
    "most_important_blocks",
    "span_distance",
]

#: ``student_layers`` that picks N blocks on calibration batches: ``"auto:N"`` (span distance), ``"span:N"``,
#: ``"influence:N"``
AUTO_LAYERS = re.compile(r"(auto|span|influence):(\d+)")
#: the scores :func:`choose_blocks` picks blocks by
LAYER_CRITERIA = ("span", "influence")


def auto_layers(value: Any) -> tuple[str, int] | None:
    """``(criterion, N)`` of ``"auto:N"`` (``"span"``), ``"span:N"`` or ``"influence:N"``; ``None`` for anything else.

    Example:
        >>> auto_layers("auto:15"), auto_layers("influence:4"), auto_layers([0, 2, 4])
        (('span', 15), ('influence', 4), None)
    """
    match = AUTO_LAYERS.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    criterion = "span" if match.group(1) == "auto" else match.group(1)
    return criterion, int(match.group(2))


def _hidden_states(model: nn.Module, batches: Iterable[Any], max_batches: int | None, measure: Callable) -> None:
    """Run the batches through ``model``; after each, ``measure(states, weights)``: the hidden states at every block
    boundary (the first block's input, then each block's output: ``num_blocks + 1`` tensors ``(B, L, H)``) and
    ``(B, L)`` weights, 1 on real tokens (the keyword ``attention_mask`` of the model's call), 0 on padding.

    Raises:
        ValueError: the model has no block list, or no batch was read.
    """
    _, blocks = block_list(model)
    states: list[Tensor] = []
    mask: list[Tensor | None] = [None]

    def remember_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        found = kwargs.get("attention_mask")
        mask[0] = found if isinstance(found, Tensor) and found.dim() == 2 else None
        states.clear()

    def first_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        states.append((args[0] if args else kwargs["hidden_states"]).float())

    def output(module: nn.Module, args: tuple, kwargs: dict, result: Any) -> None:
        states.append((result[0] if isinstance(result, (tuple, list)) else result).float())
        if len(states) == len(blocks) + 1:  # the last block: the batch's boundaries are complete
            weights = torch.ones(states[0].shape[:-1], device=states[0].device)
            if mask[0] is not None and weights.shape == mask[0].shape:
                weights = mask[0].to(weights)
            measure(states, weights)

    handles = [model.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    handles.append(blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
    handles += [block.register_forward_hook(output, with_kwargs=True) for block in blocks]
    try:
        forward_batches(model, batches, max_batches)
    finally:
        for handle in handles:
            handle.remove()


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
    num_blocks = len(block_list(model)[1])
    totals = torch.zeros(num_blocks, dtype=torch.float64)
    tokens = torch.zeros(num_blocks, dtype=torch.float64)

    def measure(states: list[Tensor], weights: Tensor) -> None:
        for index in range(num_blocks):
            similarity = F.cosine_similarity(states[index], states[index + 1], dim=-1)  # (B, L)
            totals[index] += float(((1 - similarity) * weights).sum())
            tokens[index] += float(weights.sum())

    _hidden_states(model, batches, max_batches, measure)
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


@torch.no_grad()
def span_distance(model: nn.Module, batches: Iterable[Any], drop: int, max_batches: int | None = None) -> Tensor:
    """``(num_blocks - drop + 1,)``: for each first block ``l``, the angular distance ``arccos(cos(h_l, h_{l+drop}))
    / pi`` between the hidden states entering block ``l`` and leaving block ``l + drop - 1``, averaged over the real
    tokens of ``batches`` (in ``[0, 1]``; 0: the span ``[l, l + drop)`` changes nothing).

    Args:
        model: a module with a list of transformer blocks, called on each batch as
            :func:`~agent_lightning.evaluation.forward_batches` does.
        batches: calibration batches (e.g. a training dataloader).
        drop: the number of consecutive blocks a span covers, in ``[1, num_blocks]``.
        max_batches: read at most this many.

    Raises:
        ValueError: ``drop`` is out of range, the model has no block list, or no batch was read.

    Example:
        >>> class Blocks(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList([nn.Linear(2, 2, bias=False) for _ in range(3)])
        ...         for layer, weight in zip(self.layers, ([[0.0, -1.0], [1.0, 0.0]], torch.eye(2), torch.eye(2))):
        ...             layer.weight = nn.Parameter(torch.as_tensor(weight))  # a quarter turn, then two identities
        ...     def forward(self, x):
        ...         for layer in self.layers:
        ...             x = layer(x)
        ...         return x
        >>> span_distance(Blocks(), [torch.tensor([[[1.0, 0.0]]])], drop=2)  # [0, 2) turns by 90 degrees, [1, 3) not
        tensor([0.5000, 0.0000])
    """
    num_blocks = len(block_list(model)[1])
    if isinstance(drop, bool) or not isinstance(drop, int) or not 1 <= drop <= num_blocks:
        raise ValueError(
            f"drop={drop!r} blocks: give a number in [1, {num_blocks}] (the model has {num_blocks} blocks), e.g. "
            f"drop={max(1, num_blocks // 2)}."
        )
    totals = torch.zeros(num_blocks - drop + 1, dtype=torch.float64)
    tokens = torch.zeros(1, dtype=torch.float64)

    def measure(states: list[Tensor], weights: Tensor) -> None:
        for first in range(num_blocks - drop + 1):
            cosine = F.cosine_similarity(states[first], states[first + drop], dim=-1).clamp(-1.0, 1.0)
            totals[first] += float((torch.arccos(cosine) / math.pi * weights).sum())
        tokens[0] += float(weights.sum())

    _hidden_states(model, batches, max_batches, measure)
    return (totals / tokens.clamp(min=1)).float()


def keep_outside_span(distances: Tensor, num_blocks: int) -> list[int]:
    """The blocks outside the span with the smallest distance (:func:`span_distance`), in model order.

    Raises:
        ValueError: ``distances`` does not fit a model of ``num_blocks`` blocks.

    Example:
        >>> keep_outside_span(torch.tensor([0.4, 0.1, 0.3]), num_blocks=5)  # spans of 3: [0, 3), [1, 4), [2, 5)
        [0, 4]
    """
    count = int(distances.numel())
    if distances.dim() != 1 or not 1 <= count <= num_blocks:
        raise ValueError(
            f"distances of shape {tuple(distances.shape)} do not fit a model of num_blocks={num_blocks}: give "
            "span_distance(model, batches, drop) of that model (num_blocks - drop + 1 values)."
        )
    first, drop = int(distances.argmin()), num_blocks - count + 1
    return [index for index in range(num_blocks) if not first <= index < first + drop]


@dataclass(frozen=True)
class BlockChoice:
    """The blocks :func:`choose_blocks` kept of a model's ``num_blocks``, and the scores it chose by.

    Attributes:
        kept: the kept block indices, in model order.
        num_blocks: the model's blocks before the choice.
        criterion: ``"span"`` or ``"influence"``.
        scores: one per span start (``"span"``: :func:`span_distance`) or per block (``"influence"``).
    """

    kept: list[int]
    num_blocks: int
    criterion: str
    scores: list[float]

    def rows(self) -> list[tuple[str, str, str]]:
        """``(blocks, score, choice)`` rows, one per span or block, for a table.

        Example:
            >>> BlockChoice([0, 3], 4, "span", [0.4, 0.1, 0.5]).rows()[1]  # spans of two: 0-1, 1-2, 2-3
            ('1-2', '0.1000', 'removed')
        """
        if self.criterion == "influence":
            return [(str(i), f"{score:.4f}", "kept" if i in self.kept else "") for i, score in enumerate(self.scores)]
        drop = self.num_blocks - len(self.kept)
        removed = next(index for index in range(self.num_blocks) if index not in self.kept)  # the span's first block
        return [
            (f"{first}-{first + drop - 1}", f"{score:.4f}", "removed" if first == removed else "")
            for first, score in enumerate(self.scores)
        ]


def choose_blocks(
    model: nn.Module, batches: Iterable[Any], keep: int, criterion: str = "span", max_batches: int | None = None
) -> BlockChoice:
    """Pick ``keep`` of ``model``'s blocks on calibration batches: outside the least distant contiguous span
    (``"span"``) or the ``keep`` of highest block influence (``"influence"``).

    Raises:
        ValueError: an unknown ``criterion``, or ``keep`` not in ``[1, num_blocks)``.
    """
    check_choice("criterion", criterion, LAYER_CRITERIA, meaning="how the blocks are picked")
    num_blocks = len(block_list(model)[1])
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep < num_blocks:
        raise ValueError(
            f"keep={keep!r} blocks: give a number in [1, {num_blocks - 1}] (the model has {num_blocks} blocks), e.g. "
            f"keep={max(1, num_blocks // 2)}."
        )
    if criterion == "influence":
        scores = block_influence(model, batches, max_batches)
        return BlockChoice(most_important_blocks(scores, keep), num_blocks, criterion, scores.tolist())
    distances = span_distance(model, batches, num_blocks - keep, max_batches)
    return BlockChoice(keep_outside_span(distances, num_blocks), num_blocks, criterion, distances.tolist())
