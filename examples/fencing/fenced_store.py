"""A fenced store: a Redis hash that rejects writes carrying an older token.

The storage a lock protects is the only place that can tell a live holder
from one that was paused past its lease: every write carries the writer's
fencing token, and the store refuses a token lower than the highest one it
has accepted. The check and the write happen in one Lua script, so no other
write can slip in between.

```python
store = FencedStore(redis_client, "report")
await store.write("v2", fencing_token=run.fencing_token)  # or StaleTokenError
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --8<-- [start:script]
#: KEYS[1]: the hash holding `value` and `fence` (the highest token accepted).
#: ARGV[1]: the writer's token, ARGV[2]: the value.
#: Returns {1, token} when written, {0, highest} when rejected.
WRITE_SCRIPT = """
local highest = tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1')
local token = tonumber(ARGV[1])
if token < highest then
    return {0, highest}
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return {1, token}
"""
# --8<-- [end:script]


class StaleTokenError(Exception):
    """The store has accepted a write with a higher token: this writer is stale."""

    def __init__(self, key: str, token: int, highest: int) -> None:
        self.key = key
        self.token = token
        self.highest = highest
        super().__init__(
            f"write to {key!r} rejected: fencing token {token} is lower than "
            f"{highest}, accepted from a later holder of the lock"
        )


@dataclass(frozen=True)
class Stored:
    """What the store holds: the value and the token that wrote it."""

    value: str | None
    fence: int | None


# --8<-- [start:store]
class FencedStore:
    """One value in Redis, written only with a token at least the highest seen.

    A writer holding the lock writes with its token any number of times
    (equal tokens pass); once a later holder (a higher token) has written,
    every write with the older token raises `StaleTokenError`.
    """

    def __init__(self, client: Any, key: str) -> None:
        # `client`: a redis.asyncio.Redis (any object with `register_script`
        # and `hgetall` works).
        self._client = client
        self.key = key
        self._write = client.register_script(WRITE_SCRIPT)

    async def write(self, value: str, *, fencing_token: int | None) -> None:
        """Write `value` with `fencing_token`; `StaleTokenError` if it is too old."""
        if fencing_token is None:
            msg = (
                "fencing_token is None: this write is not fenced (the task is not "
                "coordinated, or its backend cannot issue tokens)"
            )
            raise ValueError(msg)
        written, highest = await self._write(
            keys=[self.key], args=[fencing_token, value]
        )
        if not written:
            raise StaleTokenError(self.key, fencing_token, int(highest))

    async def read(self) -> Stored:
        """The value and the token of the last accepted write."""
        fields = await self._client.hgetall(self.key)
        value = fields.get(b"value", fields.get("value"))
        fence = fields.get(b"fence", fields.get("fence"))
        if isinstance(value, bytes):
            value = value.decode()
        return Stored(value, None if fence is None else int(fence))


# --8<-- [end:store]
