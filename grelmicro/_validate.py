"""Small validation helpers: every message names the parameter and its value."""

from __future__ import annotations

import math
from typing import Any

from grelmicro.errors import SettingsValidationError

__all__ = ["SettingsValidationError", "less_than", "non_empty_str", "number"]


def number(name: str, value: Any, *, positive: bool = True) -> float:
    """Check that `value` is a finite real number (> 0 when `positive`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, got {value!r}"
        raise SettingsValidationError(msg)
    if not math.isfinite(value):
        msg = f"{name} must be finite, got {value!r}"
        raise SettingsValidationError(msg)
    if positive and value <= 0:
        msg = f"{name} must be > 0, got {value!r}"
        raise SettingsValidationError(msg)
    return float(value)


def non_empty_str(name: str, value: Any) -> str:
    """Check that `value` is a non-empty string."""
    if not isinstance(value, str) or not value:
        msg = f"{name} must be a non-empty string, got {value!r}"
        raise SettingsValidationError(msg)
    return value


def less_than(
    name: str, value: float, other_name: str, other: float, *, equal: bool = False
) -> None:
    """Check `value < other` (or `<=` when `equal`)."""
    ok = value <= other if equal else value < other
    if not ok:
        op = "<=" if equal else "<"
        msg = (
            f"{name} ({value!r}) must be {op} {other_name} ({other!r}), "
            f"got {name}={value!r} and {other_name}={other!r}"
        )
        raise SettingsValidationError(msg)
