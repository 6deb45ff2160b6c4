"""When a compression callback acts: a start and end given as optimizer steps or fractions of training."""

from __future__ import annotations

from typing import Any, Literal

from agent_lightning.validation import check_choice, check_int

__all__ = ["StepSchedule"]

Kind = Literal["cubic", "linear", "one_shot"]


def _is_fraction(value: int | float) -> bool:
    return isinstance(value, float)


class StepSchedule:
    """A ramp from 0 to 1 between two optimizer steps.

    ``start`` and ``end`` are optimizer steps when given as ``int`` and fractions of
    ``trainer.estimated_stepping_batches`` when given as ``float`` (``0.7`` is 70 % of training; ``1.0`` its end).
    :meth:`resolve` turns fractions into steps once the trainer knows its length.

    The ramp value at step ``t`` with progress ``p = (t - start) / (end - start)`` is ``1 - (1 - p)^3`` for
    ``"cubic"`` (Zhu & Gupta 2017: fast early, gentle late), ``p`` for ``"linear"``, and ``1`` from ``start`` on for
    ``"one_shot"``; it is exactly ``1`` at and after ``end``.

    Args:
        start: first step (int) or fraction of training (float).
        end: step or fraction at which the ramp reaches 1.
        frequency: act every this many steps between ``start`` and ``end``.
        kind: ``"cubic"``, ``"linear"`` or ``"one_shot"``.
        owner: the callback's name, for error messages.
        names: the callback's names for ``start`` and ``end``, for error messages (e.g. ``("start", "freeze")``).

    Raises:
        TypeError: ``start``/``end`` not numbers, ``frequency`` not an integer.
        ValueError: negative values, fractions above 1, ``start`` after ``end``, ``frequency`` < 1, an unknown kind.

    Example:
        >>> schedule = StepSchedule(start=0, end=0.5, frequency=10, kind="cubic", owner="Pruning")
        >>> schedule.resolve(100); schedule.end_step, schedule.fraction(25), schedule.fraction(50)
        (50, 0.875, 1.0)
    """

    def __init__(
        self,
        start: int | float,
        end: int | float,
        frequency: int,
        kind: Kind,
        owner: str,
        names: tuple[str, str] = ("start", "end"),
    ) -> None:
        self.owner = owner
        self.names = names
        first, last = names
        for name, value in ((first, start), (last, end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{owner}({name}={value!r}): give an optimizer step (int >= 0) or a fraction (float).")
            if value < 0:
                raise ValueError(f"{owner}({name}={value!r}): give an optimizer step (int >= 0) or a fraction (float).")
            if _is_fraction(value) and value > 1.0:
                raise ValueError(
                    f"{owner}({name}={value!r}): a float is a fraction of training and must be <= 1.0; "
                    f"for step {int(value)} write {name}={int(value)}."
                )
        if type(start) is type(end) and start > end:
            raise ValueError(f"{owner}({first}={start!r}, {last}={end!r}): {first} is after {last}; swap them.")
        check_int("frequency", frequency, 1, owner)  # optimizer steps
        check_choice("schedule", kind, ("cubic", "linear", "one_shot"), owner)
        self.start, self.end, self.frequency, self.kind = start, end, frequency, kind
        self.start_step: int | None = None
        self.end_step: int | None = None
        self.total_steps: int | None = None

    def resolve(self, total_steps: int) -> None:
        """Fix ``start_step``/``end_step`` for a run of ``total_steps`` optimizer steps.

        Raises:
            ValueError: the schedule does not fit in the run.
        """
        first, last = self.names
        start = round(self.start * total_steps) if _is_fraction(self.start) else self.start
        end = round(self.end * total_steps) if _is_fraction(self.end) else self.end
        if start > end:
            raise ValueError(
                f"{self.owner}({first}={self.start!r}, {last}={self.end!r}) resolves to {first} step {start} after "
                f"{last} step {end} for this run of {total_steps} steps; make {first} earlier than {last}."
            )
        if end > total_steps:
            raise ValueError(
                f"{self.owner}({last}={self.end!r}) is step {end}, but this run has only {total_steps} optimizer "
                f"steps, so it would never be reached. Use {last}<={total_steps} or a fraction such as {last}=0.7."
            )
        self.start_step, self.end_step, self.total_steps = start, end, total_steps

    def fraction(self, step: int) -> float:
        """The ramp value (0 to 1) after ``step`` optimizer steps."""
        if self.start_step is None:
            raise RuntimeError(f"{self.owner}: schedule used before resolve(); this is a bug.")
        if step < self.start_step:
            return 0.0
        if self.kind == "one_shot" or step >= self.end_step:
            return 1.0
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return 1.0 - (1.0 - progress) ** 3 if self.kind == "cubic" else progress

    def is_update_step(self, step: int) -> bool:
        """Whether the callback acts after ``step`` optimizer steps."""
        if step < self.start_step:
            return False
        return self.kind == "one_shot" or step >= self.end_step or (step - self.start_step) % self.frequency == 0

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "frequency": self.frequency, "kind": self.kind}

    def check_matches(self, state: dict[str, Any]) -> None:
        """Refuse to resume a run whose schedule differs from the checkpoint's."""
        if state != self.state_dict():
            raise ValueError(
                f"{self.owner}: the checkpoint was written with schedule {state}, this run has {self.state_dict()}. "
                "Resume with the same arguments, or start a new run."
            )
