"""FastStream broker integration (filled in by the broker integration)."""

from __future__ import annotations

from typing import Any

from grelmicro.sync.abc import SyncBackend


def backend_for(broker: Any, **kwargs: Any) -> SyncBackend:
    """Return the synchronization backend that shares `broker`'s connection."""
    msg = (
        "backend_for() supports faststream.redis.RedisBroker and "
        f"faststream.nats.NatsBroker, got {type(broker).__name__}"
    )
    raise TypeError(msg)


__all__ = ["backend_for"]
