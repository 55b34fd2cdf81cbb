"""The protocols of the synchronization layer.

`SyncBackend` is the one protocol every backend implements (memory, Redis,
NATS JetStream KV). Primitives (`Lock`, `TaskLock`, `LeaderElection`) talk to
backends only through it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Annotated, Final, NamedTuple, Protocol, Self, runtime_checkable

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


# Optional capabilities ----------------------------------------------------------
#
# A backend implements `SyncBackend` and, optionally, any of the protocols
# below. Primitives test them once, with `isinstance`, when they bind to a
# backend; a backend with none of them keeps working (tokens are then None and
# waiters poll).


class FencedAcquire(NamedTuple):
    """The answer of `FencingBackend.acquire_fenced`."""

    #: The fencing token of the holding `token` has after the call; None when
    #: another token holds the lock.
    fence: int | None
    #: 0.0 when acquired or extended; else the seconds left on the other
    #: holder's lease (`math.inf` when the backend cannot tell).
    remaining: float

    @property
    def acquired(self) -> bool:
        """Whether the call took or extended the lock."""
        return self.remaining == 0.0


@runtime_checkable
class RemainingBackend(Protocol):
    """Capability: acquire, and on failure tell how long the holder's lease lasts.

    Lets a `TaskLock` or a `LeaderElection` follower avoid asking again before
    the other worker's hold can end.
    """

    async def acquire_or_remaining(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> float:
        """Like `SyncBackend.acquire`, in one round trip: 0.0 when acquired.

        Otherwise the seconds left on the holder's lease (> 0; `math.inf`
        when the backend cannot tell).
        """
        ...


@runtime_checkable
class ReleaseWatchBackend(Protocol):
    """Capability: wait until a lock is released or expires, without polling."""

    async def wait_released(
        self, *, name: Annotated[str, Doc("The lock key.")]
    ) -> None:
        """Return once the lock is seen free (released, deleted or expired).

        It may return earlier (callers check again by acquiring); it never
        takes the lock.
        """
        ...


@runtime_checkable
class FencingBackend(Protocol):
    """Capability: fencing tokens, issued by the acquisition itself.

    A fencing token is an `int` that grows with every fresh acquisition of a
    name: pass it to the storage a lock protects, and have the storage reject
    a write carrying a lower token than one it has seen. A holder paused past
    its lease then cannot overwrite what the next holder wrote.
    """

    async def acquire_fenced(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> FencedAcquire:
        """Take or extend the lock like `SyncBackend.acquire`, in one round trip.

        A fresh acquisition (the lock was free, released or expired, even if
        `token` held it before) issues a new fencing token, strictly greater
        than every token issued before for `name` on this backend, across all
        processes. An extension (`token` holds the lock without a gap) answers
        the token of the current holding, unchanged: a caller that sees a
        different token than it had knows its holding lapsed in between.
        When another token holds the lock, `fence` is None and `remaining`
        tells how long its lease lasts.
        """
        ...


@runtime_checkable
class NameCheckBackend(Protocol):
    """Capability: reject at start a lock name the backend cannot store.

    Called (no I/O) when a primitive is bound to the backend, for example when
    a `TaskManager` starts, so a name too long for the server fails then with
    a clear error instead of failing every run.
    """

    def check_name(self, name: Annotated[str, Doc("The lock key.")]) -> None:
        """Raise `SyncSettingsValidationError` (naming `name`) if it cannot be stored."""
        ...


#: `FireClaimBackend.claim_fire`'s answer when an earlier fire is unclaimed.
FIRE_BEHIND: Final = 0


class FireRetake(NamedTuple):
    """The answer of `FireClaimBackend.retake_fire`."""

    #: A new fencing token when this call took the fire over; else None.
    fence: int | None
    #: True when the fire was completed: it never runs again (stop watching).
    done: bool


@runtime_checkable
class FireClaimBackend(Protocol):
    """Capability: claim each fire of a cron task once across all workers.

    A fire is identified by its task's key (`name`, such as
    ``"cron:<task>"``) and its scheduled time `fire`, in whole milliseconds
    since the Unix epoch (UTC): every worker computes the same value from the
    schedule, whatever its clock says. The backend stores, per name, the
    latest claimed fire (one entry, not one per fire), so claims' storage
    stays bounded; fire leases (at-least-once) expire on the server.
    """

    async def last_fire(
        self, *, name: Annotated[str, Doc("The task key.")]
    ) -> int | None:
        """The latest fire claimed for `name`; None when none was ever claimed."""
        ...

    async def claim_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[
            float | None,
            Doc("None: the claim is final; else a lease of that many seconds."),
        ],
        after: Annotated[
            int | None,
            Doc(
                "The fire before `fire` that must be claimed first (ms); "
                "None: `fire` may pass over unclaimed fires."
            ),
        ] = None,
    ) -> int | None:
        """Claim `fire` if it is later than every fire claimed before for `name`.

        Returns a new fencing token (strictly greater than every token issued
        before for `name`) when this call claimed it, None when this fire or a
        later one was already claimed. With `lease`, the claim is also a lease
        held by `token` on this fire, kept with `keep_fire` while the run
        lasts and ended by `finish_fire`; if the claimant dies, the lease
        expires on the server and `retake_fire` lets another worker run it.

        With `after`, claims stay in order: when fires were claimed for
        `name` but the latest is older than `after` (so `after`, and maybe
        fires before it, are still unclaimed), nothing is written and the
        answer is `FIRE_BEHIND` (0): the caller claims the earlier fires
        first. A name with no claim yet accepts any fire.
        """
        ...

    async def keep_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[float, Doc("The new lease in seconds, from now.")],
    ) -> bool:
        """Extend the lease on `fire`; False when `token` no longer holds it."""
        ...

    async def finish_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
    ) -> bool:
        """Mark a leased fire completed: it is never run again, the lease ends.

        False when `token` no longer holds the lease (it lapsed).
        """
        ...

    async def retake_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The new claimant's token.")],
        lease: Annotated[float, Doc("The lease in seconds.")],
    ) -> FireRetake:
        """Take over a leased fire whose claimant's lease lapsed unfinished.

        Only for a fire known to have been claimed with a lease. Answers a new
        fencing token when taken over, `done=True` when the fire was completed,
        and neither while another claimant still holds the lease.
        """
        ...


__all__ = [
    "FIRE_BEHIND",
    "FencedAcquire",
    "FencingBackend",
    "FireClaimBackend",
    "FireRetake",
    "NameCheckBackend",
    "ReleaseWatchBackend",
    "RemainingBackend",
    "SyncBackend",
    "Synchronization",
]
