"""Checks of plain constructor arguments, with messages that name the argument, the value and what to pass.

Used where a value's type is not checked anywhere else (flags, seeds, step counts); arguments with richer rules
(fractions, choices, patterns) are checked where they are defined.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_bool", "check_int"]


def _named(owner: str | None, argument: str, value: Any) -> str:
    return f"{owner}({argument}={value!r})" if owner else f"{argument}={value!r}"


def check_bool(argument: str, value: Any, owner: str | None = None) -> None:
    """Raise ``TypeError`` unless ``value`` is ``True`` or ``False`` (a string such as ``"yes"`` is refused).

    Example:
        >>> check_bool("evaluate", "yes", "CompressionReport")
        Traceback (most recent call last):
        TypeError: CompressionReport(evaluate='yes') must be True or False (YAML: true/false).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{_named(owner, argument, value)} must be True or False (YAML: true/false).")


def check_int(argument: str, value: Any, minimum: int, owner: str | None = None, optional: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is an integer (or ``None`` when ``optional``), ``ValueError`` when it
    is below ``minimum``.

    Example:
        >>> check_int("histogram_every_n_steps", 0, 1, "CompressionDashboard")
        Traceback (most recent call last):
        ValueError: CompressionDashboard(histogram_every_n_steps=0) must be an integer >= 1.
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = " or None" if optional else ""
        raise TypeError(f"{_named(owner, argument, value)} must be an integer{allowed}, e.g. {argument}={minimum}.")
    if value < minimum:
        raise ValueError(f"{_named(owner, argument, value)} must be an integer >= {minimum}.")
