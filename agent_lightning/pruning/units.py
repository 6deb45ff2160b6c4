"""Structured pruning: scoring whole feed-forward neurons and attention heads, and masking them.

A neuron is one output row of each feed-forward producer (BERT ``intermediate.dense``; Llama's SwiGLU ``gate_proj``
and ``up_proj`` together) plus the matching input column of the consumer (``output.dense``; ``down_proj``); a head is
``head_dim`` rows of the query projection plus the matching columns of the output projection, and, in multi-head
attention, ``head_dim`` rows of the key and value projections. Under grouped-query attention (``group_size`` query
heads share each key/value head) a head is either a query head, removed evenly within every group so that the groups
stay equal (``unit="queries"``), or a whole key/value group with its query heads (``unit="groups"``). Kept heads are
recorded as query-head indices; the key/value heads kept are those whose group keeps a query head. Blocks are found
by :func:`agent_lightning.targets.find_blocks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from agent_lightning.pruning.masks import keep_largest
from agent_lightning.targets import TransformerBlock, find_blocks

__all__ = [
    "HeadUnit",
    "accumulate_first_order",
    "expand_units",
    "first_order_head_scores",
    "head_masks",
    "head_scores",
    "keep_heads",
    "keep_units",
    "kept_kv_heads",
    "neuron_scores",
    "structured_blocks",
    "unit_sparsity",
]

#: what a removed attention head is under grouped-query attention (see the module docstring)
HeadUnit = Literal["queries", "groups"]


def structured_blocks(
    model: nn.Module, targets: Sequence[str], sparsity: float, head_sparsity: float, unit: HeadUnit = "queries"
) -> list[TransformerBlock]:
    """The blocks of ``model`` whose projections are among ``targets``, checked for what will be removed.

    Raises:
        ValueError: neurons asked for and no feed-forward layout known; heads asked for and no attention layout
            known; or ``head_sparsity`` would remove every head of a block (or of a key/value group), or none.
    """
    selected = set(targets)
    blocks = [b for b in find_blocks(model) if set(b.ffn_in + b.attention_in) & selected]
    if sparsity and not any(b.ffn_out for b in blocks):
        raise ValueError(
            f"Pruning(method='structured', sparsity={sparsity}) found no feed-forward layers of a known "
            "layout (BERT intermediate/output, Llama gate/up/down, fc1/fc2) among the targets. Use "
            "method='magnitude' for this model, or sparsity=0 with head_sparsity only."
        )
    if head_sparsity:
        usable = [b for b in blocks if b.attention_out and b.head_dim]
        if not usable:
            raise ValueError(
                f"Pruning(head_sparsity={head_sparsity}) found no attention module with separate "
                "query/key/value projections and a known head size (BERT-like or Llama-like). Set "
                "head_sparsity=0."
            )
        for block in usable:
            count, what = _head_units(block, unit)
            removed = round(head_sparsity * count)
            if removed >= count:
                raise ValueError(
                    f"head_sparsity={head_sparsity} would remove all {count} {what} of block {block.index}; use a "
                    f"value below {(count - 0.5) / count:.3f}."
                )
            if removed == 0:
                raise ValueError(
                    f"head_sparsity={head_sparsity} removes none of the {count} {what} of block {block.index} "
                    f"(round({head_sparsity} * {count}) = 0); use at least {0.5 / count:.3f}"
                    + (", or gqa='groups'." if unit == "queries" and block.group_size > 1 else ".")
                )
    return blocks


def _head_units(block: TransformerBlock, unit: HeadUnit) -> tuple[int, str]:
    """How many units one removal choice is made among, and what they are called."""
    if block.group_size == 1:
        return block.num_heads, "heads"
    if unit == "groups":
        return block.num_kv_heads, "key/value groups"
    return block.group_size, "query heads of each key/value group"


def _norms(parameters: Mapping[str, Tensor], producers: Sequence[str], consumer: str) -> Tensor:
    rows = sum(parameters[f"{n}.weight"].detach().float().pow(2).sum(1) for n in producers)
    return rows + parameters[f"{consumer}.weight"].detach().float().pow(2).sum(0)


def neuron_scores(block: TransformerBlock, parameters: Mapping[str, Tensor]) -> Tensor:
    """``(ffn_width,)`` L2 norm of each neuron's weights (its producer rows and consumer column together)."""
    return _norms(parameters, block.ffn_in, block.ffn_out).sqrt()


def _head_parts(block: TransformerBlock, parameters: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Squared weight norms: ``(num_heads,)`` of each query head's rows and output columns, ``(num_kv_heads,)`` of
    each key/value head's rows."""
    query, key, value = block.attention_in
    queries = _norms(parameters, [query], block.attention_out).view(block.num_heads, block.head_dim).sum(1)
    rows = sum(parameters[f"{name}.weight"].detach().float().pow(2).sum(1) for name in (key, value))
    return queries, rows.view(block.num_kv_heads, block.head_dim).sum(1)


def _unit_scores(block: TransformerBlock, queries: Tensor, kv: Tensor, unit: HeadUnit) -> Tensor:
    """Per-unit scores from per-query-head and per-key/value-head parts: ``(num_heads,)`` for multi-head attention
    (a head with its key/value rows) and for ``unit="queries"``, ``(num_kv_heads,)`` for ``unit="groups"``."""
    if block.group_size == 1:
        return queries + kv
    if unit == "groups":
        return queries.view(block.num_kv_heads, block.group_size).sum(1) + kv
    return queries


def head_scores(block: TransformerBlock, parameters: Mapping[str, Tensor], unit: HeadUnit = "queries") -> Tensor:
    """L2 norm of each head's weights (query rows and output columns, plus key/value rows in multi-head attention):
    ``(num_heads,)``, or ``(num_kv_heads,)`` per key/value group with ``unit="groups"`` under grouped-query
    attention."""
    return _unit_scores(block, *_head_parts(block, parameters), unit).sqrt()


def keep_heads(
    block: TransformerBlock, score: Tensor, kept_before: Tensor | None, target: float, unit: HeadUnit = "queries"
) -> Tensor:
    """``(num_heads,)`` boolean mask of the query heads kept at ``target`` (a fraction of the units of
    :func:`head_scores`); heads not in ``kept_before`` (query-head indices) stay pruned. With ``unit="queries"``
    under grouped-query attention every key/value group keeps the same number of its query heads.

    Example:
        >>> from agent_lightning.targets import TransformerBlock
        >>> block = TransformerBlock(0, "", [], None, ["q", "k", "v"], "o", "attn", 4, 8, 2)  # 2 groups of 2
        >>> keep_heads(block, torch.tensor([1.0, 2.0, 4.0, 3.0]), None, 0.5).tolist()
        [False, True, True, False]
        >>> keep_heads(block, torch.tensor([1.0, 5.0]), None, 0.5, unit="groups").tolist()
        [False, False, True, True]
    """
    size = block.group_size
    before = None
    if kept_before is not None:
        before = torch.zeros(block.num_heads, dtype=torch.bool)
        before[kept_before.cpu()] = True
    if size > 1 and unit == "queries":
        grouped = score.detach().float().cpu().view(block.num_kv_heads, size).clone()
        if before is not None:
            grouped[~before.view_as(grouped)] = -1.0
        prune = round(target * size)
        keep = torch.ones_like(grouped, dtype=torch.bool)
        if prune:
            keep.scatter_(1, grouped.topk(prune, dim=1, largest=False).indices, False)
        return keep.reshape(-1)
    kept_units = None
    if before is not None:
        kept_units = before.view(-1, size).any(1).nonzero().flatten()
    return keep_units(score.detach().float().cpu(), kept_units, target).repeat_interleave(size)


def kept_kv_heads(block: TransformerBlock, keep: Tensor) -> Tensor:
    """``(num_kv_heads,)`` boolean mask of the key/value heads that a query-head mask ``keep`` still uses."""
    return keep.view(-1, block.group_size).any(1)


def head_masks(
    masks: dict[str, Tensor], parameters: Mapping[str, Tensor], block: TransformerBlock, keep: Tensor
) -> None:
    """Write weight masks for the kept query heads ``keep`` (``(num_heads,)`` bool) into ``masks``: their query rows
    and output columns, and the rows of the key/value heads they use."""
    query, key, value = block.attention_in
    expand_units(masks, parameters, [query], block.attention_out, keep, block.head_dim)
    _row_masks(masks, parameters, [key, value], kept_kv_heads(block, keep).repeat_interleave(block.head_dim))


def accumulate_first_order(
    blocks: Sequence[TransformerBlock],
    parameters: Mapping[str, Tensor],
    scores: dict[str, Tensor],
    neurons: bool,
    heads: bool,
) -> None:
    """Add this step's ``|W * grad|`` per neuron (``scores["ffn.I"]``), per query head (its query rows and output
    columns, ``scores["heads.I"]``) and per key/value head (``scores["kv.I"]``) of every block, in place
    (first-order importance, Molchanov et al. 2019); :func:`first_order_head_scores` combines the last two."""

    def saliency(name: str, dim: int) -> Tensor:
        weight = parameters[f"{name}.weight"]
        if weight.grad is None:
            return torch.zeros(weight.shape[1 - dim], device=weight.device)
        return (weight.detach() * weight.grad).abs().float().sum(dim)

    for block in blocks:
        if neurons and block.ffn_out:
            value = sum(saliency(n, 1) for n in block.ffn_in) + saliency(block.ffn_out, 0)
            key = f"ffn.{block.index}"
            scores[key] = scores.get(key, 0) + value
        if heads and block.attention_out and block.head_dim:
            query, key, value = block.attention_in
            queries = (saliency(query, 1) + saliency(block.attention_out, 0)).view(block.num_heads, -1).sum(1)
            kv = (saliency(key, 1) + saliency(value, 1)).view(block.num_kv_heads, -1).sum(1)
            for name, part in ((f"heads.{block.index}", queries), (f"kv.{block.index}", kv)):
                scores[name] = scores.get(name, 0) + part


def first_order_head_scores(
    block: TransformerBlock, scores: Mapping[str, Tensor], unit: HeadUnit = "queries"
) -> Tensor | None:
    """The accumulated first-order score of each head unit (see :func:`head_scores`), ``None`` before any step."""
    queries, kv = scores.get(f"heads.{block.index}"), scores.get(f"kv.{block.index}")
    if queries is None or kv is None:
        return None
    return _unit_scores(block, queries, kv, unit)


def keep_units(score: Tensor, kept_before: Tensor | None, target: float) -> Tensor:
    """Boolean mask over units keeping all but the ``target`` fraction with the lowest scores; units not in
    ``kept_before`` (indices) stay pruned.

    Example:
        >>> keep_units(torch.tensor([3.0, 1.0, 2.0, 4.0]), None, 0.5).tolist()
        [True, False, False, True]
    """
    score = score.clone()
    if kept_before is not None:
        pruned = torch.ones_like(score, dtype=torch.bool)
        pruned[kept_before.to(score.device)] = False
        score[pruned] = -1.0
    return keep_largest(score, round(target * score.numel()))


def expand_units(
    masks: dict[str, Tensor],
    parameters: Mapping[str, Tensor],
    producers: Sequence[str],
    consumer: str,
    keep_units: Tensor,
    width: int,
) -> None:
    """Write weight masks for kept units into ``masks``: ``width`` producer rows (and bias entries) per unit, and the
    matching consumer columns."""
    rows = keep_units.repeat_interleave(width)
    _row_masks(masks, parameters, producers, rows)
    weight = parameters[f"{consumer}.weight"]
    masks[f"{consumer}.weight"] = rows[None, :].expand_as(weight).to(weight.device).clone()


def _row_masks(masks: dict[str, Tensor], parameters: Mapping[str, Tensor], names: Sequence[str], rows: Tensor) -> None:
    for name in names:
        weight = parameters[f"{name}.weight"]
        masks[f"{name}.weight"] = rows[:, None].expand_as(weight).to(weight.device).clone()
        if f"{name}.bias" in parameters:
            masks[f"{name}.bias"] = rows.to(weight.device).clone()


def unit_sparsity(kept: Mapping[int, Tensor], totals: Mapping[int, int]) -> float:
    """Fraction of units (neurons or heads) removed over the blocks that have them."""
    total = sum(totals.values())
    removed = sum(totals[i] - len(kept[i]) for i in totals if i in kept)
    return removed / total if total else 0.0
