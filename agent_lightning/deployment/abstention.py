"""Abstaining on requests the agent does not know: the lowest confidence threshold whose answers keep a chosen
precision on held-out data, so that below it the agent answers ``None`` instead of a confident wrong action.

Only the ranking of confidences matters for such a threshold, so recalibrating them first (temperature scaling, or
any other monotone map) would pick the same requests; the threshold is found on the confidences ``act`` returns,
for a classifier and a generative agent alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_lightning.validation import check_number

__all__ = ["Abstention", "calibrate_abstention", "threshold_for_precision"]


@dataclass(frozen=True)
class Abstention:
    """A confidence threshold and what it kept on the data it was chosen on.

    Attributes:
        threshold: answers with a lower confidence become ``None``.
        target_precision: the precision it was chosen to keep.
        precision: the share of kept answers that were right.
        coverage: the share of requests answered (not abstained).
        samples: how many requests it was chosen on.
    """

    threshold: float
    target_precision: float
    precision: float
    coverage: float
    samples: int

    def apply(self, decisions: Sequence[tuple[Any, float]]) -> list[tuple[Any, float]]:
        """``decisions`` with the action of each one below the threshold replaced by ``None``."""
        return [(action if confidence >= self.threshold else None, confidence) for action, confidence in decisions]

    def measure(self, decisions: Sequence[tuple[Any, float]], labels: Sequence[Any]) -> tuple[float, float | None]:
        """``(coverage, precision)`` of this threshold on other data: the share answered, and the share of those
        that are right (``None`` when nothing is answered)."""
        kept = [
            (action, label) for (action, confidence), label in zip(decisions, labels) if confidence >= self.threshold
        ]
        precision = sum(action == label for action, label in kept) / len(kept) if kept else None
        return len(kept) / len(decisions), precision


def threshold_for_precision(confidences: Sequence[float], correct: Sequence[bool], precision: float) -> Abstention:
    """The lowest threshold at which the answers at or above it are right at least ``precision`` of the time.

    Example:
        >>> a = threshold_for_precision([0.9, 0.8, 0.7, 0.6], [True, True, False, True], precision=0.9)
        >>> a.threshold, a.coverage, a.precision
        (0.8, 0.5, 1.0)

    Raises:
        ValueError: ``precision`` is not in (0, 1], or the inputs are empty or of different lengths.
    """
    check_number("precision", precision, minimum=0, maximum=1, strict_minimum=True, tail=", e.g. precision=0.95")
    if not confidences or len(confidences) != len(correct):
        raise ValueError(f"need as many outcomes as confidences, got {len(confidences)} and {len(correct)}.")
    ranked = sorted(zip(confidences, correct), key=lambda pair: -pair[0])
    best = (float("inf"), 0, 1.0)  # abstain on everything unless some threshold keeps the precision
    right = 0
    for kept, (confidence, is_right) in enumerate(ranked, start=1):
        right += bool(is_right)
        ties_follow = kept < len(ranked) and ranked[kept][0] == confidence
        if not ties_follow and right / kept >= precision:
            best = (confidence, kept, right / kept)
    threshold, kept, achieved = best
    return Abstention(float(threshold), precision, achieved, kept / len(ranked), len(ranked))


def calibrate_abstention(actor: Any, texts: Sequence[str], labels: Sequence[str], precision: float) -> Abstention:
    """:func:`threshold_for_precision` on ``actor.act(texts)`` (an :class:`~agent_lightning.Agent` or an
    :class:`~agent_lightning.deployment.runtime.ExportedAgent`) against the right ``labels``, e.g. the validation
    split."""
    decisions = actor.act(list(texts))
    correct = [action == label for (action, _), label in zip(decisions, labels)]
    return threshold_for_precision([confidence for _, confidence in decisions], correct, precision)
