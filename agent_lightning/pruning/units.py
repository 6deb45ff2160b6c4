"""Structured pruning: scoring whole feed-forward neurons and attention heads, and masking them.

A neuron is one output row of each feed-forward producer (BERT ``intermediate.dense``; Llama ``gate_proj`` and
``up_proj`` together) plus the matching input column of the consumer (``output.dense``; ``down_proj``); a head is
``head_dim`` rows of each query/key/value projection plus the matching columns of the output projection. Blocks are
found by :func:`agent_lightning.targets.find_blocks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from agent_lightning.pruning.masks import keep_largest
from agent_lightning.targets import TransformerBlock, find_blocks

__all__ = [
    "accumulate_first_order",
    "expand_units",
    "head_scores",
    "keep_units",
    "neuron_scores",
    "structured_blocks",
    "unit_sparsity",
]


def structured_blocks(
    model: nn.Module, targets: Sequence[str], sparsity: float, head_sparsity: float
) -> list[TransformerBlock]:
    """The blocks of ``model`` whose projections are among ``targets``, checked for what will be removed.

    Raises:
        ValueError: neurons asked for and no feed-forward layout known; heads asked for and no attention layout
            known; or ``head_sparsity`` would remove every head of a block.
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
            if round(head_sparsity * block.num_heads) >= block.num_heads:
                raise ValueError(
                    f"head_sparsity={head_sparsity} would remove all {block.num_heads} heads of block "
                    f"{block.index}; use a value below {(block.num_heads - 0.5) / block.num_heads:.3f}."
                )
    return blocks


def _norms(parameters: Mapping[str, Tensor], producers: Sequence[str], consumer: str) -> Tensor:
    rows = sum(parameters[f"{n}.weight"].detach().float().pow(2).sum(1) for n in producers)
    return rows + parameters[f"{consumer}.weight"].detach().float().pow(2).sum(0)


def neuron_scores(block: TransformerBlock, parameters: Mapping[str, Tensor]) -> Tensor:
    """``(ffn_width,)`` L2 norm of each neuron's weights (its producer rows and consumer column together)."""
    return _norms(parameters, block.ffn_in, block.ffn_out).sqrt()


def head_scores(block: TransformerBlock, parameters: Mapping[str, Tensor]) -> Tensor:
    """``(num_heads,)`` L2 norm of each head's projection rows and output columns."""
    squares = _norms(parameters, block.attention_in, block.attention_out)
    return squares.view(block.num_heads, block.head_dim).sum(1).sqrt()


def accumulate_first_order(
    blocks: Sequence[TransformerBlock],
    parameters: Mapping[str, Tensor],
    scores: dict[str, Tensor],
    neurons: bool,
    heads: bool,
) -> None:
    """Add this step's ``|W * grad|`` per neuron (``scores["ffn.I"]``) and per head (``scores["heads.I"]``) of
    every block, in place (first-order importance, Molchanov et al. 2019)."""

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
            value = sum(saliency(n, 1) for n in block.attention_in) + saliency(block.attention_out, 0)
            key = f"heads.{block.index}"
            scores[key] = scores.get(key, 0) + value.view(block.num_heads, -1).sum(1)


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
    for name in producers:
        weight = parameters[f"{name}.weight"]
        masks[f"{name}.weight"] = rows[:, None].expand_as(weight).to(weight.device).clone()
        if f"{name}.bias" in parameters:
            masks[f"{name}.bias"] = rows.to(weight.device).clone()
    weight = parameters[f"{consumer}.weight"]
    masks[f"{consumer}.weight"] = rows[None, :].expand_as(weight).to(weight.device).clone()


def unit_sparsity(kept: Mapping[int, Tensor], totals: Mapping[int, int]) -> float:
    """Fraction of units (neurons or heads) removed over the blocks that have them."""
    total = sum(totals.values())
    removed = sum(totals[i] - len(kept[i]) for i in totals if i in kept)
    return removed / total if total else 0.0
