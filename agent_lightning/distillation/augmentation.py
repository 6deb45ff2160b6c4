"""Token replacement: cheap text augmentation for distillation, so the student sees inputs the teacher never fitted."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["replace_tokens"]


def replace_tokens(
    input_ids: Tensor, attention_mask: Tensor | None, fraction: float, generator: torch.Generator
) -> Tensor:
    """A copy of ``input_ids`` in which about ``fraction`` of the inner tokens are replaced by other tokens of the
    batch.

    Inner tokens are the attended positions except each row's first and last attended one (``[CLS]``/``[SEP]`` or
    ``<s>``/``</s>`` in most tokenizers); padding is never touched. Replacements are drawn uniformly from the batch's
    own inner tokens, so they stay in the vocabulary the data uses. TinyBERT-style augmentation: the teacher labels
    the changed text, and the student learns the teacher's outputs on it.

    Args:
        input_ids: ``(B, L)`` integer token ids.
        attention_mask: ``(B, L)``, 1 for real tokens; ``None`` means every position is real.
        fraction: probability that an inner token is replaced, in ``[0, 1]``.
        generator: a CPU generator (seed it per step for reproducible runs).

    Returns:
        ``(B, L)`` token ids on ``input_ids``' device.

    Example:
        >>> ids = torch.tensor([[101, 7, 8, 9, 102, 0]]); mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
        >>> out = replace_tokens(ids, mask, 1.0, torch.Generator().manual_seed(0))
        >>> out[0, 0].item(), out[0, 4].item(), out[0, 5].item()
        (101, 102, 0)
    """
    ids = input_ids.detach().cpu()
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.detach().cpu().bool()
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    lengths = mask.sum(1, keepdim=True)
    first = torch.where(mask, positions, ids.shape[1]).min(1, keepdim=True).values
    inner = mask & (positions > first) & (positions < first + lengths - 1)
    pool = ids[inner]
    if pool.numel() == 0 or fraction <= 0:
        return input_ids.clone()
    chosen = inner & (torch.rand(ids.shape, generator=generator) < fraction)
    picks = torch.randint(pool.numel(), (int(chosen.sum()),), generator=generator)
    augmented = ids.clone()
    augmented[chosen] = pool[picks]
    return augmented.to(input_ids.device)
