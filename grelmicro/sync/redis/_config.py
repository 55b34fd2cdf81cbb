"""Argument checks of the Redis backend (no I/O)."""

from __future__ import annotations

import math
from urllib.parse import urlparse

from grelmicro.sync.errors import SyncSettingsValidationError

_URL_SCHEMES = ("redis", "rediss", "unix")


def milliseconds(duration: object, parameter: str = "duration") -> int:
    """`duration` seconds in whole milliseconds, rounded up, at least 1."""
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        msg = f"{parameter} must be a number of seconds, got {duration!r}"
        raise SyncSettingsValidationError(msg)
    if not math.isfinite(duration):
        msg = f"{parameter} must be finite, got {duration!r}"
        raise SyncSettingsValidationError(msg)
    # Round away float noise first (0.1 * 1000 == 100.00000000000001).
    return max(1, math.ceil(round(duration * 1000, 6)))


def check_claimant(token: object) -> str:
    """A fire claimant's token: a non-empty str ('' marks a completed fire)."""
    if not isinstance(token, str) or not token:
        msg = f"token must be a non-empty str, got {token!r}"
        raise SyncSettingsValidationError(msg)
    return token


def check_wait_replicas(wait_replicas: object, wait_timeout: object) -> int:
    """Validate `wait_replicas` (an int >= 0) and `wait_timeout` (seconds > 0)."""
    if (
        isinstance(wait_replicas, bool)
        or not isinstance(wait_replicas, int)
        or wait_replicas < 0
    ):
        msg = f"wait_replicas must be an int >= 0, got {wait_replicas!r}"
        raise SyncSettingsValidationError(msg)
    if (
        isinstance(wait_timeout, bool)
        or not isinstance(wait_timeout, int | float)
        or not math.isfinite(wait_timeout)
        or wait_timeout <= 0
    ):
        msg = f"wait_timeout must be a number of seconds > 0, got {wait_timeout!r}"
        raise SyncSettingsValidationError(msg)
    return milliseconds(wait_timeout, "wait_timeout")


def check_url(url: object) -> None:
    """Raise `SyncSettingsValidationError` unless `url` is a Redis URL."""
    if not isinstance(url, str) or not url:
        msg = f"url must be a non-empty Redis URL string, got {url!r}"
        raise SyncSettingsValidationError(msg)
    try:
        parsed = urlparse(url)
        _ = parsed.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        msg = f"Invalid Redis URL {redact(url)!r}: {exc}"
        raise SyncSettingsValidationError(msg) from exc
    if parsed.scheme not in _URL_SCHEMES:
        scheme = parsed.scheme + "://" if parsed.scheme else "none"
        msg = (
            f"Invalid Redis URL {redact(url)!r}: the scheme must be redis://, "
            f"rediss:// or unix://, got {scheme}"
        )
        raise SyncSettingsValidationError(msg)


def redact(url: str) -> str:
    """`url` without its password."""
    try:
        parsed = urlparse(url)
        if parsed.password is None:
            return url
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return parsed._replace(netloc=netloc).geturl()
    except ValueError:
        return "<invalid url>"
