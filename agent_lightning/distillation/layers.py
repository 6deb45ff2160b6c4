"""Which teacher block each student block learns from, and capturing the blocks' outputs for hidden-state KD."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["default_map", "even_map", "hidden_width", "keep_output", "kept_blocks_map"]


def even_map(student_blocks: int, teacher_blocks: int) -> list[int]:
    """Teacher blocks evenly spaced over the teacher, one per student block, ending with the teacher's last block.

    Example:
        >>> even_map(3, 6)
        [1, 3, 5]
    """
    return [round((i + 1) * teacher_blocks / student_blocks) - 1 for i in range(student_blocks)]


def kept_blocks_map(kept: Sequence[int], teacher_blocks: int) -> list[int]:
    """For a student made of the teacher blocks ``kept`` (in order): the teacher block whose output each student
    block's output stands in for. That is the block just before the next kept one (the student skips the blocks in
    between), and the teacher's last block for the student's last (its output enters the final norm). A student of
    evenly spaced blocks gets :func:`even_map`'s pairs; one that dropped a contiguous span (``auto:N``) compares the
    block before the span with the span's last block.

    Example:
        >>> kept_blocks_map([0, 1, 2, 6, 7], 8)  # blocks 3-5 dropped
        [0, 1, 5, 6, 7]
        >>> kept_blocks_map([0, 2, 4], 6) == even_map(3, 6)
        True
    """
    return [following - 1 for following in kept[1:]] + [teacher_blocks - 1]


def default_map(student_layers: Any, student_blocks: int, teacher_blocks: int) -> list[int]:
    """The block map hidden-state KD uses when none is given: :func:`kept_blocks_map` when ``student_layers`` (an
    ``Agent``'s ``hparams.student_layers``, or ``None``) lists the teacher blocks the student was made of, one per
    student block, increasing, inside the teacher; :func:`even_map` otherwise.

    Example:
        >>> default_map([0, 1, 5], 3, 6), default_map(None, 3, 6), default_map("auto:3", 3, 6)
        ([0, 4, 5], [1, 3, 5], [1, 3, 5])
    """
    kept = list(student_layers) if isinstance(student_layers, (list, tuple)) else []
    increasing = all(isinstance(i, int) and 0 <= i < j for i, j in zip(kept, [*kept[1:], teacher_blocks]))
    if len(kept) == student_blocks and increasing:
        return kept_blocks_map(kept, teacher_blocks)
    return even_map(student_blocks, teacher_blocks)


def hidden_width(module: nn.Module) -> int | None:
    """The ``hidden_size`` of the first Hugging Face config found in ``module``, or ``None``."""
    for candidate in module.modules():
        width = getattr(getattr(candidate, "config", None), "hidden_size", None)
        if isinstance(width, int):
            return width
    return None


def keep_output(store: dict[Any, Tensor], index: Any) -> Callable[..., None]:
    """A forward hook that stores the module's output (its first element for tuples) in ``store[index]``."""

    def hook(module, args, output):
        store[index] = output[0] if isinstance(output, (tuple, list)) else output

    return hook
