"""Release watch: wait until a lock is released or its lease ends, without polling."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

import anyio

from grelmicro.sync.nats._jetstream import KV_OPERATION, MARKER_REASON
from grelmicro.sync.nats.errors import wrap

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from grelmicro.sync.nats._locks import Locks

logger = logging.getLogger("grelmicro.sync")

_FREE_OPERATIONS = ("DEL", "PURGE")


async def wait_released(locks: Locks, nc: Client, name: str, key: str) -> None:
    """Return once `key` is seen free: a release marker arrives, or the lease ends.

    It listens to the key's subject (a plain NATS subscription, no JetStream
    consumer), then reads the key: the subscription is in place before the
    read is answered (one connection keeps its order), so a release after it
    is not missed. The lease's end is counted on this machine's monotonic
    clock from the holder's TTL (an upper bound).
    """
    released = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if headers.get(KV_OPERATION) in _FREE_OPERATIONS or MARKER_REASON in headers:
            released.set()

    try:
        subscription = await nc.subscribe(locks.js.prefix + key, cb=on_message)
    except Exception as exc:
        raise wrap("wait_released", name, exc) from exc
    try:
        wait = await locks.time_left(nc, "wait_released", name, key)
        if wait <= 0:
            return
        with anyio.move_on_after(wait if math.isfinite(wait) else math.inf):
            await released.wait()
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await subscription.unsubscribe()
            except Exception:
                logger.debug("Unsubscribing from %s failed", key, exc_info=True)
