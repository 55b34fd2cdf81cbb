"""Task lock: run a job at most once per interval across all workers."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Self
from uuid import UUID

import anyio

from grelmicro._validate import less_than, number
from grelmicro.sync._primitive import DEFAULT_BACKEND_TIMEOUT, Primitive, call_backend
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import LockAcquireError, LockReleaseError, LockStateError

if TYPE_CHECKING:
    from typing_extensions import Doc


#: Seconds within which two expiry times count as the same: a hold that
#: ends this much before the minimum hold's end is not worth a round trip
#: (an answer delayed by a busy event loop), capped at 2% of the hold.
_SAME_EXPIRY = 0.02


class TaskLock(Primitive):
    """A lock held for at least `min_lock_seconds` and at most `max_lock_seconds`.

    `async with task_lock:` takes the lock without waiting (it raises
    `anyio.WouldBlock` if another worker holds it). On exit, the lock is
    released if at least `min_lock_seconds` passed since it was taken;
    otherwise it is kept until `min_lock_seconds` after acquisition, so the
    job runs at most once per `min_lock_seconds` across all workers. If the
    holder dies, the lock expires `max_lock_seconds` after acquisition.
    """

    kind = "tasklock"

    def __init__(
        self,
        name: Annotated[str, Doc("The name of the task to lock.")],
        *,
        backend: Annotated[
            SyncBackend | None,
            Doc("The backend; the default backend when None, resolved at first use."),
        ] = None,
        worker: Annotated[
            str | UUID | None,
            Doc("This worker's identity; a random UUID when None."),
        ] = None,
        min_lock_seconds: Annotated[
            float, Doc("Minimum seconds the lock is held after acquisition.")
        ] = 1,
        max_lock_seconds: Annotated[
            float, Doc("Maximum seconds the lock is held if it is not released.")
        ] = 60,
    ) -> None:
        super().__init__(name, backend=backend, worker=worker)
        self.min_lock_seconds = number("min_lock_seconds", min_lock_seconds)
        self.max_lock_seconds = number("max_lock_seconds", max_lock_seconds)
        less_than(
            "min_lock_seconds",
            self.min_lock_seconds,
            "max_lock_seconds",
            self.max_lock_seconds,
            equal=True,
        )
        self._timeout = min(DEFAULT_BACKEND_TIMEOUT, self.max_lock_seconds)
        self._acquired_at: float | None = None
        self._hold_until = -float("inf")
        # Monotonic time before which this worker knows the lock is not free:
        # its own minimum hold, or the hold another worker is known to keep.
        self._busy_until = -float("inf")

    async def __aenter__(self) -> Self:
        """Take the lock now, or raise `anyio.WouldBlock` if it is held."""
        if not await self.try_acquire():
            raise anyio.WouldBlock
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the lock, or keep it until `min_lock_seconds` have passed."""
        with anyio.CancelScope(shield=True):
            await self.release()

    async def try_acquire(self, *, hold: float | None = None) -> bool:
        """Take the lock if it is free; False if another worker holds it.

        The lock is taken for `hold` seconds (`max_lock_seconds` by default;
        interval tasks take `min_lock_seconds` and call `extend()` if the run
        goes on). While this worker knows the lock cannot be free (its own
        minimum hold is running, or a failed attempt told it how long another
        worker still holds its minimum hold), it answers False without asking
        the backend.
        """
        started = time.monotonic()
        if started < self._busy_until:
            return False
        duration = self.max_lock_seconds if hold is None else hold
        backend = self.backend
        fast = getattr(backend, "acquire_or_remaining", None)
        if fast is None:
            acquired = await call_backend(
                lambda: backend.acquire(
                    name=self.key, token=self.worker, duration=duration
                ),
                lambda: LockAcquireError(name=self.name, token=self.worker),
                self._timeout,
            )
        else:
            remaining: float = await call_backend(
                lambda: fast(name=self.key, token=self.worker, duration=duration),
                lambda: LockAcquireError(name=self.name, token=self.worker),
                self._timeout,
            )
            acquired = remaining <= 0
            if 0 < remaining <= self.min_lock_seconds:
                # The holder is in its minimum hold: nobody can take it before.
                self._busy_until = started + remaining
        if not acquired:
            return False
        answered = time.monotonic()
        if answered - started >= duration / 2:
            # A very late answer: the lease may have run out (and another
            # worker taken the lock) before we saw it. Confirm it first.
            started = time.monotonic()
            confirmed = await call_backend(
                lambda: backend.acquire(
                    name=self.key, token=self.worker, duration=duration
                ),
                lambda: LockAcquireError(name=self.name, token=self.worker),
                self._timeout,
            )
            answered = time.monotonic()
            if not confirmed or answered - started >= duration / 2:
                return False
        # The run starts now: the minimum hold counts from here (`release`
        # makes up for a slow answer). The server's expiry is at least
        # `started + duration`: it received the request after `started`.
        self._acquired_at = answered
        self._hold_until = started + duration
        return True

    @property
    def hold_until(self) -> float:
        """Monotonic time before which the server surely keeps this worker's hold."""
        return self._hold_until

    async def extend(self) -> bool:
        """Extend a held lock to `max_lock_seconds` after its acquisition.

        Returns False when the lock is no longer held by this worker (it
        expired and another worker took it).
        """
        acquired_at = self._acquired_at
        if acquired_at is None:
            return False
        started = time.monotonic()
        duration = acquired_at + self.max_lock_seconds - started
        if duration <= 0:
            return False
        backend = self.backend
        extended = await call_backend(
            lambda: backend.acquire(
                name=self.key, token=self.worker, duration=duration
            ),
            lambda: LockAcquireError(name=self.name, token=self.worker),
            self._timeout,
        )
        if extended:
            self._hold_until = started + duration
        return extended

    async def release(self) -> None:
        """Release now if `min_lock_seconds` passed, else keep it until then.

        When the lock was taken for just `min_lock_seconds` and not extended,
        the server already expires it at the right time: no call is made.
        """
        acquired_at, self._acquired_at = self._acquired_at, None
        if acquired_at is None:
            return
        backend = self.backend
        min_until = acquired_at + self.min_lock_seconds
        remaining = min_until - time.monotonic()
        if remaining > 0:
            self._busy_until = min_until
            slack = min(_SAME_EXPIRY, self.min_lock_seconds * 0.02)
            if -slack <= self._hold_until - min_until <= 0.001:
                return  # the server expires the hold at the right time
            await call_backend(
                lambda: backend.acquire(
                    name=self.key, token=self.worker, duration=remaining
                ),
                lambda: LockReleaseError(name=self.name, token=self.worker),
                self._timeout,
            )
        else:
            await call_backend(
                lambda: backend.release(name=self.key, token=self.worker),
                lambda: LockReleaseError(name=self.name, token=self.worker),
                self._timeout,
            )

    async def locked(self) -> bool:
        """Whether any worker holds the lock."""
        backend = self.backend
        return await call_backend(
            lambda: backend.locked(name=self.key),
            lambda: LockStateError(name=self.name, operation="locked()"),
            self._timeout,
        )

    async def owned(self) -> bool:
        """Whether this worker holds the lock."""
        backend = self.backend
        return await call_backend(
            lambda: backend.owned(name=self.key, token=self.worker),
            lambda: LockStateError(name=self.name, operation="owned()"),
            self._timeout,
        )
