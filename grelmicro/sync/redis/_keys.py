"""Key layout: the keys a lock's scripts touch, all in the lock key's hash slot.

A Lua script on Redis Cluster may only touch keys of one hash slot. The lock
key is exactly ``prefix + name`` (for example ``lock:report``); every other
key a script needs next to it (the fencing counter, a cron fire's lease) is a
*companion* key built so that Redis Cluster hashes it to the same slot:

- the lock key has a hash tag (``{...}``, as Redis Cluster defines it: the
  text between the first ``{`` and the first ``}`` after it, when not
  empty): the companion is the lock key plus a suffix (same tag, same slot);
  ``lock:{orders}:7`` -> ``lock:{orders}:7:fence``;
- otherwise the whole lock key becomes the companion's hash tag, after the
  prefix: ``app:lock:report`` -> ``app:{app:lock:report}:fence`` (with no
  prefix: ``{lock:report}:fence``);
- a lock key that cannot be a hash tag (it contains a ``}``, or is empty)
  gets as tag a short decimal string chosen to hash to the lock key's slot:
  ``a}b`` -> ``{<digits>}a}b:fence``.

The same layout is used on a single server and on a cluster, so data moves
between the two unchanged.
"""

from __future__ import annotations

from functools import lru_cache

#: Redis Cluster's number of hash slots.
SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFF00) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hashed_part(key: str) -> str:
    """The part of `key` Redis Cluster hashes: its hash tag, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def slot(key: str) -> int:
    """The Redis Cluster hash slot of `key`."""
    return crc16(hashed_part(key).encode()) % SLOTS


@lru_cache(maxsize=1024)
def _tag_for_slot(target: int) -> str:
    """The smallest decimal string that hashes to slot `target`."""
    number = 0
    while crc16(str(number).encode()) % SLOTS != target:
        number += 1
    return str(number)


@lru_cache(maxsize=8192)
def companion(key: str, prefix: str, suffix: str) -> str:
    """A key in the same hash slot as `key` (see the module docstring)."""
    part = hashed_part(key)
    if part != key:  # `key` has a hash tag: keep it
        return key + suffix
    if key and "}" not in key:
        lead = "" if "{" in prefix else prefix
        return f"{lead}{{{key}}}{suffix}"
    return f"{{{_tag_for_slot(slot(key))}}}{key}{suffix}"


#: Suffix of a name's persistent fencing hash: fields ``last`` (the last
#: fencing token issued), ``held`` (the token of the current lock holding)
#: and ``fire`` (the latest cron fire claimed, ms since the epoch).
FENCE_SUFFIX = ":fence"


def fence_key(key: str, prefix: str) -> str:
    """The persistent fencing hash of lock key `key`."""
    return companion(key, prefix, FENCE_SUFFIX)


def fire_key(key: str, prefix: str, fire: int) -> str:
    """The lease (then completed marker) of one leased cron fire of `key`."""
    return companion(key, prefix, f":fire:{fire}")


__all__ = ["companion", "crc16", "fence_key", "fire_key", "hashed_part", "slot"]
