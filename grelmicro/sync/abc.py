"""The protocols of the synchronization layer.

`SyncBackend` is the one protocol every backend implements (memory, Redis,
NATS JetStream KV). Primitives (`Lock`, `TaskLock`, `LeaderElection`) talk to
backends only through it.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from typing_extensions import Doc


@runtime_checkable
class SyncBackend(Protocol):
    """A store of expiring, owned locks.

    Every method is keyword-only and answers with a bool. Expiry is enforced by
    the server holding the lock (Redis `PX`, NATS per-message TTL), never by
    comparing the clocks of different machines. Failures raise a
    `grelmicro.sync.errors.SyncBackendError` subclass, never a raw driver error.
    """

    async def __aenter__(self) -> Self:
        """Open the backend (and what it opened itself) and make it the default."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close what the backend opened itself; a borrowed client is never closed."""
        ...

    async def acquire(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> bool:
        """Take the lock for `duration` seconds, or extend it if `token` holds it.

        Returns False when another token holds the lock.
        """
        ...

    async def release(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Release the lock if `token` holds it; False otherwise."""
        ...

    async def locked(self, *, name: Annotated[str, Doc("The lock key.")]) -> bool:
        """Whether any token holds the lock."""
        ...

    async def owned(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Whether `token` holds the lock."""
        ...


@runtime_checkable
class Synchronization(Protocol):
    """A synchronization primitive used with `async with`."""

    async def __aenter__(self) -> Self:
        """Acquire the primitive."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Release the primitive."""
        ...


__all__ = ["SyncBackend", "Synchronization"]
