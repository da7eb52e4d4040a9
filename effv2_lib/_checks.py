"""Argument checks shared by the library: one wording for every "expected X, got Y" error.

A value of the wrong type raises TypeError, a value of the right type outside its range raises
ValueError; both messages name the argument, say what was expected and show what was given.
``bool`` is refused where a number is expected (``True`` is an int in Python, never a size).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    """`value` as an int >= minimum (None passes when optional)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' * optional}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
               allowed: str | None = None, optional: bool = False) -> float | None:
    """`value` as a finite float in [low, high] (None passes when optional).

    `allowed` describes the accepted values in the error message (default "a number in
    [low, high]").
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{' or None' * optional}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be {allowed or f'a number in [{low}, {high}]'}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)  # a tuple compares with ==, so an unhashable value is refused, not an error
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
