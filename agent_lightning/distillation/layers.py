"""Which teacher block each student block learns from, and capturing the blocks' outputs for hidden-state KD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

__all__ = ["even_map", "hidden_width", "keep_output"]


def even_map(student_blocks: int, teacher_blocks: int) -> list[int]:
    """Teacher blocks evenly spaced over the teacher, one per student block, ending with the teacher's last block.

    Example:
        >>> even_map(3, 6)
        [1, 3, 5]
    """
    return [round((i + 1) * teacher_blocks / student_blocks) - 1 for i in range(student_blocks)]


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
