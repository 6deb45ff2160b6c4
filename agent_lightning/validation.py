"""Checks of plain constructor arguments, with messages that name the argument, the value and what to pass.

One vocabulary everywhere: ``TypeError`` when the value has the wrong type (a string where a number belongs),
``ValueError`` when it has the right type and a wrong value (out of range, not a choice). Arguments with richer
rules (patterns, schedules) are checked where they are defined, with these helpers for the plain parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "as_texts",
    "check_bool",
    "check_choice",
    "check_count",
    "check_fraction",
    "check_int",
    "check_number",
    "check_open_fraction",
    "check_optional_string",
    "is_number",
    "preview",
]


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
        raise TypeError(
            f"{_named(owner, argument, value)} must be an integer{allowed}, e.g. {argument}={minimum}{_not_str(value)}."
        )
    if value < minimum:
        raise ValueError(f"{_named(owner, argument, value)} must be an integer >= {minimum}.")


def check_count(argument: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is an integer (or ``None`` when ``optional``), ``ValueError`` when it is
    below ``minimum``: sizes and counts such as ``batch_size`` or ``num_workers``.

    Example:
        >>> check_count("batch_size", 0)
        Traceback (most recent call last):
        ValueError: batch_size=0 must be a positive integer.
        >>> check_count("batch_size", "32")
        Traceback (most recent call last):
        TypeError: batch_size='32' must be a positive integer, e.g. batch_size=1 (not a string).
    """
    if optional and value is None:
        return
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument}={value!r} must be {kind}, e.g. {argument}={max(minimum, 1)}{_not_str(value)}.")
    if value < minimum:
        raise ValueError(f"{argument}={value!r} must be {kind}.")


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _not_str(value: Any) -> str:
    return " (not a string)" if isinstance(value, str) else ""


def check_number(
    argument: str,
    value: Any,
    owner: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
    optional: bool = False,
    tail: str | None = None,
) -> None:
    """Raise ``TypeError`` unless ``value`` is a number (or ``None`` when ``optional``), ``ValueError`` when it is
    outside the bounds (``strict_*``: the bound itself is excluded). ``tail`` follows the rule in the message (default:
    an example value).

    Example:
        >>> check_number("temperature", 0, "Distillation", minimum=0, strict_minimum=True)
        Traceback (most recent call last):
        ValueError: Distillation(temperature=0) must be a number > 0, e.g. temperature=1.
        >>> check_number("alpha", "0.5", "Distillation", minimum=0, maximum=1)
        Traceback (most recent call last):
        TypeError: Distillation(alpha='0.5') must be in [0, 1], e.g. alpha=0.5 (a number, not a string).
    """
    if optional and value is None:
        return
    if minimum is not None and maximum is not None:
        rule = f"in {'(' if strict_minimum else '['}{minimum:g}, {maximum:g}{')' if strict_maximum else ']'}"
    elif minimum is not None:
        rule = f"a number {'>' if strict_minimum else '>='} {minimum:g}"
    elif maximum is not None:
        rule = f"a number {'<' if strict_maximum else '<='} {maximum:g}"
    else:
        rule = "a number"
    tail = f", e.g. {argument}={_example_number(minimum, maximum, strict_minimum)}" if tail is None else tail
    if not is_number(value):
        kind = " (a number, not a string)" if isinstance(value, str) else " (a number)"
        raise TypeError(f"{_named(owner, argument, value)} must be {rule}{tail}{kind}.")
    too_low = minimum is not None and (value <= minimum if strict_minimum else value < minimum)
    too_high = maximum is not None and (value >= maximum if strict_maximum else value > maximum)
    if too_low or too_high:
        raise ValueError(f"{_named(owner, argument, value)} must be {rule}{tail}.")


def _example_number(minimum: float | None, maximum: float | None, strict: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"{(minimum + maximum) / 2:g}"
    if minimum is not None:
        return f"{minimum + 1 if strict else minimum:g}"
    return f"{maximum:g}" if maximum is not None else "1"


def check_fraction(argument: str, value: Any, allow_zero: bool = False, owner: str | None = None) -> None:
    """Raise ``TypeError`` unless ``value`` is a number, ``ValueError`` unless it is in ``[0, 1)`` (``(0, 1)``
    without ``allow_zero``): a share of weights, heads or tokens.

    Example:
        >>> check_fraction("sparsity", 1.0)
        Traceback (most recent call last):
        ValueError: sparsity=1.0 is out of range: it must be in (0, 1), e.g. sparsity=0.5.
    """
    low = "[0, 1)" if allow_zero else "(0, 1)"
    if not is_number(value):
        raise TypeError(f"{_named(owner, argument, value)} must be a number in {low}, e.g. {argument}=0.5.")
    if not (0.0 <= value < 1.0) or (value == 0 and not allow_zero):
        raise ValueError(f"{_named(owner, argument, value)} is out of range: it must be in {low}, e.g. {argument}=0.5.")


def check_choice(
    argument: str, value: Any, choices: Sequence[str], owner: str | None = None, meaning: str = ""
) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (``meaning`` says what they do).

    Example:
        >>> check_choice("cache", "ram", ("memory", "disk", "none"), "Distillation")
        Traceback (most recent call last):
        ValueError: Distillation(cache='ram') is not a choice; use 'memory', 'disk' or 'none'.
    """
    if value not in choices:
        quoted = [repr(choice) for choice in choices]
        listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        said = f" ({meaning})" if meaning else ""
        raise ValueError(f"{_named(owner, argument, value)} is not a choice; use {listed}{said}.")


def check_optional_string(argument: str, value: Any, none_means: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a string or ``None`` (which means ``none_means``).

    Example:
        >>> check_optional_string("system_prompt", 7, "for the template's default")
        Traceback (most recent call last):
        TypeError: system_prompt=7 must be a string, or None for the template's default.
    """
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{argument}={value!r} must be a string, or None {none_means}.")


def check_open_fraction(argument: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a number, ``ValueError`` unless it is in the open interval (0, 1), e.g.
    a held-out share.

    Example:
        >>> check_open_fraction("val_fraction", 1.5)
        Traceback (most recent call last):
        ValueError: val_fraction=1.5 must be a number in (0, 1), e.g. 0.1.
    """
    if not is_number(value):
        raise TypeError(f"{argument}={value!r} must be a number in (0, 1), e.g. 0.1{_not_str(value)}.")
    if not 0 < value < 1:
        raise ValueError(f"{argument}={value!r} must be a number in (0, 1), e.g. 0.1.")


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list of requests (one string becomes a list of one).

    Raises:
        TypeError: ``texts`` is not a string or a sequence of strings.

    Example:
        >>> as_texts("call mom")
        ['call mom']
    """
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"act(texts=...) takes a string or a list of strings, got {type(texts).__name__}.")
    return list(texts)


def preview(names: Sequence[object], limit: int = 6) -> str:
    """The first ``limit`` of ``names`` for an error message, ``...`` when there are more.

    Example:
        >>> preview(["call", "text", "email"], limit=2)
        '[call, text, ...]'
    """
    shown = ", ".join(map(str, list(names)[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
