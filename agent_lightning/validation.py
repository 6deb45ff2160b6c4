"""Checks of plain constructor arguments, with messages that name the argument, the value and what to pass.

Used where a value's type is not checked anywhere else (flags, seeds, step counts); arguments with richer rules
(fractions, choices, patterns) are checked where they are defined.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_bool", "check_count", "check_int", "check_open_fraction"]


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


def check_count(argument: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum`` (or ``None`` when ``optional``): sizes and
    counts such as ``batch_size`` or ``num_workers``.

    Example:
        >>> check_count("batch_size", 0)
        Traceback (most recent call last):
        ValueError: batch_size=0 must be a positive integer.
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{argument}={value!r} must be {kind}.")


def check_open_fraction(argument: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in the open interval (0, 1), e.g. a held-out share.

    Example:
        >>> check_open_fraction("val_fraction", 1.5)
        Traceback (most recent call last):
        ValueError: val_fraction=1.5 must be a number in (0, 1), e.g. 0.1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{argument}={value!r} must be a number in (0, 1), e.g. 0.1.")
