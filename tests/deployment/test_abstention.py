"""Abstention: the lowest threshold that keeps a precision, and answers below it become None."""

from __future__ import annotations

import math

import pytest

from agent_lightning.deployment.abstention import threshold_for_precision


def test_the_threshold_is_the_lowest_that_keeps_the_precision():
    confidences = [0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, True, False, False]
    chosen = threshold_for_precision(confidences, correct, precision=0.75)
    # kept >= 0.7: 4 right of 5 = 0.8; >= 0.6 would be 4 of 6
    assert (chosen.threshold, chosen.coverage, chosen.precision) == (0.7, 5 / 7, 0.8)
    # ties are kept or dropped together: 0.9 keeps both 0.9s (2 of 3 right), so 0.95 alone is the answer at 0.9
    assert threshold_for_precision(confidences, correct, precision=0.9).threshold == 0.95
    decisions = [("a", 0.95), ("b", 0.69)]
    assert chosen.apply(decisions) == [("a", 0.95), (None, 0.69)]


def test_an_unreachable_precision_abstains_on_everything():
    chosen = threshold_for_precision([0.9, 0.8], [True, False], precision=1.0)
    assert chosen.threshold == 0.9 and chosen.coverage == 0.5  # 0.8 and above: 1 right of 2
    never = threshold_for_precision([0.9], [False], precision=0.5)
    assert math.isinf(never.threshold) and never.coverage == 0 and never.apply([("a", 1.0)]) == [(None, 1.0)]
    with pytest.raises(ValueError, match=r"precision=0 must be in \(0, 1\]"):
        threshold_for_precision([0.9], [True], precision=0)
