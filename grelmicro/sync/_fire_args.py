"""Argument checks shared by the backends' fire claim operations."""

from __future__ import annotations

from grelmicro.sync.errors import SyncSettingsValidationError


def check_fire(fire: object, parameter: str = "fire") -> int:
    """A fire time: whole milliseconds since the Unix epoch."""
    if isinstance(fire, bool) or not isinstance(fire, int) or fire < 0:
        msg = (
            f"{parameter} must be a non-negative int (ms since the Unix epoch), "
            f"got {fire!r}"
        )
        raise SyncSettingsValidationError(msg)
    return fire


def check_after(after: object, fire: int) -> int | None:
    """`claim_fire`'s `after`: None, or a fire time before `fire`."""
    if after is None:
        return None
    checked = check_fire(after, "after")
    if checked >= fire:
        msg = f"after must be earlier than fire ({fire}), got {after!r}"
        raise SyncSettingsValidationError(msg)
    return checked
