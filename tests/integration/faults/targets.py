"""Where the fault tests run: a server kind, its URL, a namespace, the timings."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import uuid4

import anyio
import pytest

from grelmicro.sync.abc import SyncBackend
from tests.integration.faults.harness import Timings

KINDS = ["redis", "nats"]

#: Leases as short as the tests can afford. NATS keeps TTLs in whole seconds
#: (>= 1 s) and expires keys on a coarse sweep, but NatsSyncBackend honours
#: the exact lease (each worker counts it on its own monotonic clock from
#: when it received the holder's write), so both backends get a small slack.
TIMINGS = {
    "redis": Timings(expiry_slack=0.1),
    "nats": Timings(expiry_slack=0.2),
}


@dataclass(frozen=True)
class Target:
    """A backend kind on a server, with a namespace no other test uses."""

    kind: str
    url: str
    namespace: str
    timings: Timings


def nats_backend_available() -> bool:
    """Whether grelmicro.sync.nats exists yet (it is written in parallel)."""
    return importlib.util.find_spec("grelmicro.sync.nats") is not None


def require_kind(kind: str) -> None:
    """Skip when the backend of `kind` is not there."""
    if kind == "nats" and not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")


def unique_namespace(kind: str) -> str:
    """A Redis key prefix or a NATS bucket name for one test."""
    tag = uuid4().hex[:10]
    return f"grelmicro-fault-{tag}:" if kind == "redis" else f"grelmicro-fault-{tag}"


async def _ignore(exc: Exception) -> None:
    """Errors of the cleanup's connection are not the test's business."""


async def _delete_bucket(url: str, bucket: str) -> None:
    import nats

    client = None
    try:
        with anyio.fail_after(5):
            client = await nats.connect(
                servers=url.split(","),
                allow_reconnect=False,
                connect_timeout=2,
                error_cb=_ignore,
            )
            await client.jetstream().delete_key_value(bucket)
    except Exception:  # best-effort cleanup
        pass
    finally:
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await client.close()


def cleanup(kind: str, url: str, namespace: str) -> None:
    """Remove a test's NATS bucket (Redis keys expire on their own).

    Runs its own event loop in a thread: the caller may be a sync fixture of
    an async test, whose loop is still running in this thread.
    """
    if kind == "nats":
        thread = threading.Thread(
            target=anyio.run, args=(_delete_bucket, url, namespace)
        )
        thread.start()
        thread.join(10)


def target_for(kind: str, url: str) -> Iterator[Target]:
    """A `Target` on `url`, cleaned up afterwards."""
    namespace = unique_namespace(kind)
    try:
        yield Target(kind, url, namespace, TIMINGS[kind])
    finally:
        cleanup(kind, url, namespace)


def make_backend(kind: str, url: str, namespace: str) -> SyncBackend:
    """A backend of `kind` on `namespace`, not registered as the default."""
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(url, prefix=namespace, auto_register=False)
    from grelmicro.sync.nats import (  # type: ignore[import-not-found,unused-ignore]
        NatsSyncBackend,
    )

    backend: SyncBackend = NatsSyncBackend(url, bucket=namespace, auto_register=False)
    return backend
