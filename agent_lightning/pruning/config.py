"""What to prune: the method, the target sparsity and the scoring, checked once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agent_lightning.pruning.units import HeadUnit
from agent_lightning.validation import check_choice, check_fraction

__all__ = ["Criterion", "HeadUnit", "Method", "PruningConfig", "Scope"]

Method = Literal["magnitude", "n:m", "structured"]
Scope = Literal["layer", "global"]
Criterion = Literal["magnitude", "wanda", "first_order"]


@dataclass(frozen=True)
class PruningConfig:
    """A pruning target, validated.

    Attributes:
        sparsity: fraction of zero weights in the targeted layers (``"magnitude"``), or of feed-forward neurons
            removed (``"structured"``). For ``"n:m"`` it must equal ``(M - N) / M``.
        method: ``"magnitude"`` (unstructured L1), ``"n:m"`` (at most N of every M consecutive input weights kept) or
            ``"structured"`` (whole neurons and heads).
        scope: ``"layer"`` (each layer reaches the target) or ``"global"`` (one threshold for all), magnitude only.
        pattern: ``"N:M"`` for ``method="n:m"``.
        head_sparsity: fraction of attention (query) heads removed per block (``"structured"`` only).
        criterion: what scores a weight or unit: ``"magnitude"`` (``|W|``; weight norms for structured units),
            ``"wanda"`` (``|W| * ||X||``: the weight times the L2 norm of its input feature over the tokens seen, Sun
            et al. 2023; compared within each output row, the paper's comparison group; ``"magnitude"`` and
            ``"n:m"`` only) or ``"first_order"`` (accumulated ``|W * grad|`` per unit, structured only).
        gqa: under grouped-query attention (fewer key/value heads than query heads), what a removed head is:
            ``"queries"`` (query heads, the same number within every key/value group; the key/value projections
            stay) or ``"groups"`` (whole key/value groups with their query heads). Multi-head attention removes
            heads with their key/value rows either way.

    Raises:
        TypeError: a number that is not a number.
        ValueError: a value out of range, an unknown choice, or choices that do not go together.

    Example:
        >>> PruningConfig(sparsity=0.5, method="n:m", pattern="2:4").group
        (2, 4)
        >>> PruningConfig(sparsity=0.3, method="n:m", pattern="2:4")
        Traceback (most recent call last):
        ValueError: Pruning(sparsity=0.3, method='n:m', pattern='2:4'): an 2:4 pattern keeps 2 of every 4 weights, \
i.e. sparsity=0.5. Use Pruning(sparsity=0.5, method='n:m', pattern='2:4') or another pattern.
    """

    sparsity: float = 0.5
    method: Method = "magnitude"
    scope: Scope = "layer"
    pattern: str = "2:4"
    head_sparsity: float = 0.0
    criterion: Criterion = "magnitude"
    gqa: HeadUnit = "queries"

    def __post_init__(self) -> None:
        check_choice("method", self.method, ("magnitude", "n:m", "structured"))
        check_choice("scope", self.scope, ("layer", "global"))
        check_choice("criterion", self.criterion, ("magnitude", "wanda", "first_order"))
        check_choice("gqa", self.gqa, ("queries", "groups"))
        check_fraction("sparsity", self.sparsity, allow_zero=self.method == "structured")
        check_fraction("head_sparsity", self.head_sparsity, allow_zero=True)
        n, m = self.group
        if self.method == "n:m" and abs(self.sparsity - (m - n) / m) > 1e-9:
            wanted = (m - n) / m
            raise ValueError(
                f"Pruning(sparsity={self.sparsity}, method='n:m', pattern={self.pattern!r}): an {self.pattern} pattern "
                f"keeps {n} of every {m} weights, i.e. sparsity={wanted:g}. Use Pruning(sparsity={wanted:g}, "
                f"method='n:m', pattern={self.pattern!r}) or another pattern."
            )
        if self.method != "structured" and self.head_sparsity:
            raise ValueError(
                f"head_sparsity={self.head_sparsity} applies to method='structured' only (got method={self.method!r}). "
                f"Use Pruning(method='structured', sparsity=..., head_sparsity={self.head_sparsity})."
            )
        if self.method == "structured" and not self.sparsity and not self.head_sparsity:
            raise ValueError("method='structured' needs sparsity (FFN neurons) or head_sparsity (heads) above 0.")
        if self.method == "n:m" and self.scope == "global":
            raise ValueError("scope='global' applies to method='magnitude'; N:M groups are always per layer.")
        if self.criterion == "first_order" and self.method != "structured":
            raise ValueError(
                f"criterion='first_order' scores whole heads and neurons (method='structured'), not method="
                f"{self.method!r}. Use criterion='magnitude' or 'wanda' for it, or method='structured'."
            )
        if self.criterion == "wanda" and self.method == "structured":
            raise ValueError(
                "criterion='wanda' scores single weights (method='magnitude' or 'n:m'); for method='structured' use "
                "criterion='magnitude' or 'first_order'."
            )
        if self.criterion == "wanda" and self.scope == "global":
            raise ValueError(
                "criterion='wanda' compares weights within each output row (its comparison group), so scope='global' "
                "does not apply. Use Pruning(criterion='wanda') with the default scope='layer'."
            )

    @property
    def group(self) -> tuple[int, int]:
        """``(N, M)`` of ``pattern``."""
        return parse_pattern(self.pattern)


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``(N, M)`` of an ``"N:M"`` pattern.

    Raises:
        TypeError: ``pattern`` is not a string.
        ValueError: it is not of the form ``"N:M"`` with ``0 < N < M``.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern={pattern!r} must be a string 'N:M', e.g. '2:4' (keep 2 of every 4 weights).")
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if not match:
        raise ValueError(f"pattern={pattern!r} must look like 'N:M', e.g. '2:4' (keep 2 of every 4 weights).")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern={pattern!r}: N must be in [1, M) (N >= M prunes nothing). Use e.g. '2:4'.")
    return n, m
