"""Pure helpers of the NATS backend: key encoding, TTLs, error texts.

Nothing here talks to a server, so all of it is cheap to unit test.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

#: Characters kept as they are in a key; every other character is escaped.
#: NATS KV keys allow ``[-/_=.a-zA-Z0-9]``: ``=`` is the escape character and
#: ``.`` (a subject token separator, invalid at either end or doubled) is
#: escaped too, so any name maps to one valid subject token.
SAFE_KEY_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/"
)

#: Longest encoded key accepted: the key appears twice in a request's control
#: line (with the bucket name, up to 200 characters), which the server caps
#: at 4096 bytes, and a line over the cap makes the server close the whole
#: connection. Cron fire keys add up to `KEY_SUFFIX_ROOM` characters.
MAX_KEY_LENGTH = 1800

#: Characters a backend may append to an encoded key (``.fire.<ms>``).
KEY_SUFFIX_ROOM = 32

_ESCAPED = re.compile(r"=([0-9A-F]{2})")


class KeyEncodingError(ValueError):
    """A lock name cannot be turned into a NATS KV key (empty or too long)."""


@lru_cache(maxsize=4096)
def encode_key(name: str) -> str:
    """Map a lock name to a valid NATS KV key, reversibly and deterministically.

    ASCII letters, digits, ``-``, ``_`` and ``/`` are kept; every other
    character is written as ``=XX`` per byte of its UTF-8 encoding (upper-case
    hex). ``"tasklock:my.module:func"`` becomes
    ``"tasklock=3Amy=2Emodule=3Afunc"``.
    """
    if not name:
        msg = "a lock name must be a non-empty string, got ''"
        raise KeyEncodingError(msg)
    if all(char in SAFE_KEY_CHARS for char in name):
        key = name
    else:
        parts: list[str] = []
        for char in name:
            if char in SAFE_KEY_CHARS:
                parts.append(char)
            else:
                parts.extend(
                    f"={byte:02X}" for byte in char.encode("utf-8", "surrogatepass")
                )
        key = "".join(parts)
    if len(key) > MAX_KEY_LENGTH:
        msg = (
            f"lock name too long for a NATS KV key: {len(key)} characters once "
            f"encoded, at most {MAX_KEY_LENGTH} (name starts with {name[:40]!r})"
        )
        raise KeyEncodingError(msg)
    return key


def decode_key(key: str) -> str:
    """The lock name `encode_key` mapped to `key`."""
    if "=" not in key:
        return key
    raw = bytearray()
    position = 0
    for match in _ESCAPED.finditer(key):
        raw += key[position : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += key[position:].encode("ascii")
    return raw.decode("utf-8", "surrogatepass")


def ttl_seconds(duration: float) -> int:
    """The whole seconds sent in ``Nats-TTL`` for a lease of `duration` seconds.

    The server truncates a TTL to whole seconds (``"1500ms"`` lives one
    second) and rejects anything under one second, so the lease is rounded
    *up* to whole seconds, with a floor of one second: a lease is never
    shorter than asked, and may be up to one second longer.
    """
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        msg = f"duration must be a number of seconds, got {duration!r}"
        raise ValueError(msg)
    if not math.isfinite(duration) or duration <= 0:
        msg = f"duration must be a finite number of seconds > 0, got {duration!r}"
        raise ValueError(msg)
    # Round away float noise first (3 * 0.1 == 0.30000000000000004).
    return max(1, math.ceil(round(duration, 6)))


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_ttl(value: str | None) -> int | None:
    """A stored ``Nats-TTL`` header as the server reads it, in whole seconds.

    None for ``"never"`` (the message never expires, not even by the bucket's
    max_age); 0 when there is no usable TTL (the message expires only by the
    bucket's max_age, if any).
    """
    if value is None:
        return 0
    text = value.strip()
    if text.lower() == "never":
        return None
    if text.isdigit():
        return int(text)
    total = 0.0
    position = 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != position:
            return 0
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        return 0
    return int(total)


_WRONG_LAST = re.compile(r"wrong last sequence:\s*(\d+)")


def wrong_last_sequence(description: str) -> int | None:
    """The key's current sequence from a 10071 error description, if given.

    Only a hint that saves a read when the server's wording is the known one
    (``wrong last sequence: 42``); callers read the key when it is None.
    """
    match = _WRONG_LAST.search(description)
    return int(match.group(1)) if match else None
