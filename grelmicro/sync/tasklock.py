"""Task lock: run a job at most once per interval across all workers."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Annotated, Self
from uuid import UUID

import anyio
from typing_extensions import Doc

from grelmicro import _metrics
from grelmicro._validate import less_than, number
from grelmicro.sync._primitive import (
    DEFAULT_BACKEND_TIMEOUT,
    Primitive,
    acquire_or_give_back,
    call_backend,
    give_back,
)
from grelmicro.sync.abc import FencedAcquire, SyncBackend
from grelmicro.sync.errors import LockAcquireError, LockReleaseError, LockStateError

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
        # Set while a coroutine of this worker holds the lock, or is taking it:
        # the token is the worker's, so the backend alone cannot keep a second
        # coroutine of the same worker out.
        self._in_use = False
        self._acquired_at: float | None = None
        self._fence: int | None = None
        # Monotonic time before which the server surely keeps the hold...
        self._sure_until = -float("inf")
        # ...and after which it surely does not (a pending extension counts).
        self._max_until = -float("inf")
        # Monotonic time before which this worker knows the lock is not free:
        # its own minimum hold, or the hold another worker is known to keep.
        self._busy_until = -float("inf")

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of this worker's current holding; None when not held.

        It grows with every acquisition of the task lock across all workers
        (not with extensions). None too on a backend that cannot issue tokens.
        """
        return self._fence if self._acquired_at is not None else None

    async def __aenter__(self) -> Self:
        """Take the lock now, or raise `anyio.WouldBlock` if it is held.

        Another coroutine of this worker holding it counts as held.
        """
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

    def _error(self) -> LockAcquireError:
        return LockAcquireError(name=self.name, token=self.worker)

    async def _acquire(
        self, duration: float, *, extension: bool = False
    ) -> FencedAcquire:
        started = time.perf_counter()
        caps = self.caps
        try:
            if extension:
                # The holding goes on whatever this answer: `release` ends it.
                answer = await call_backend(
                    lambda: caps.acquire(
                        name=self.key, token=self.worker, duration=duration
                    ),
                    self._error,
                    self._timeout,
                )
            else:
                answer = await acquire_or_give_back(
                    caps,
                    name=self.key,
                    token=self.worker,
                    duration=duration,
                    error=self._error,
                    timeout=self._timeout,
                )
        except Exception:
            if _metrics.ENABLED.on:
                _metrics.lock_acquire(
                    "tasklock", "error", time.perf_counter() - started
                )
            raise
        if _metrics.ENABLED.on:
            outcome = "acquired" if answer.acquired else "busy"
            _metrics.lock_acquire("tasklock", outcome, time.perf_counter() - started)
        return answer

    async def try_acquire(self, *, hold: float | None = None) -> bool:
        """Take the lock if it is free; False if another worker holds it.

        The lock is taken for `hold` seconds (`max_lock_seconds` by default;
        interval tasks take `min_lock_seconds` and call `extend()` if the run
        goes on). While this worker knows the lock cannot be free (its own
        minimum hold is running, another of its coroutines holds it, or a
        failed attempt told it how long another worker still holds its
        minimum hold), it answers False without asking the backend. A call
        that is cancelled or fails gives its token back: no lease is left
        that nobody owns.
        """
        if self._in_use:
            return False
        started = time.monotonic()
        if started < self._busy_until:
            return False
        duration = self.max_lock_seconds if hold is None else hold
        self._in_use = True
        try:
            answer = await self._acquire(duration)
            if not answer.acquired:
                if 0 < answer.remaining <= self.min_lock_seconds:
                    # The holder is in its minimum hold: nobody can take it before.
                    self._busy_until = started + answer.remaining
                self._in_use = False
                return False
            answered = time.monotonic()
            if answered - started >= duration / 2:
                # A very late answer: the lease may have run out (and another
                # worker taken the lock) before we saw it. Confirm it first;
                # if that is late or lost too, give the lock back.
                started = time.monotonic()
                answer = await self._acquire(duration)
                answered = time.monotonic()
                if not answer.acquired or answered - started >= duration / 2:
                    if answer.acquired:
                        await give_back(
                            self.backend,
                            name=self.key,
                            token=self.worker,
                            timeout=self._timeout,
                        )
                    self._in_use = False
                    return False
        except BaseException:
            self._in_use = False
            raise
        # The run starts now: the minimum hold counts from here (`release`
        # makes up for a slow answer). The server's expiry is at least
        # `started + duration` (it received the request after `started`) and
        # at most `answered + duration`.
        self._acquired_at = answered
        self._fence = answer.fence
        self._sure_until = started + duration
        self._max_until = answered + duration
        return True

    @property
    def hold_until(self) -> float:
        """Monotonic time before which the server surely keeps this worker's hold."""
        return self._sure_until

    @property
    def acquired_at(self) -> float | None:
        """Monotonic time at which this worker's current holding began."""
        return self._acquired_at

    async def extend(self) -> bool:
        """Extend a held lock to `max_lock_seconds` after its acquisition.

        Returns False when the lock is no longer held by this worker without
        a gap: it expired (and another worker may have taken it), even if
        this call took it again (a new fencing token tells the gap).
        """
        acquired_at = self._acquired_at
        if acquired_at is None:
            return False
        started = time.monotonic()
        duration = acquired_at + self.max_lock_seconds - started
        if duration <= 0:
            return False
        # The server may apply this even if the answer never comes back:
        # `release` must then shorten the hold again.
        self._max_until = max(self._max_until, acquired_at + self.max_lock_seconds)
        answer = await self._acquire(duration, extension=True)
        if self._acquired_at != acquired_at:
            return False  # released meanwhile: this late answer changes nothing
        if not answer.acquired:
            return False
        self._sure_until = started + duration
        if (
            answer.fence is not None
            and self._fence is not None
            and answer.fence != self._fence
        ):
            # Mine again, but after a gap: another worker may have run.
            self._fence = answer.fence
            return False
        return True

    async def release(self) -> None:
        """Release now if `min_lock_seconds` passed, else keep it until then.

        When the server already expires the hold at the right time (taken for
        just `min_lock_seconds`, not extended), no call is made.
        """
        acquired_at, self._acquired_at = self._acquired_at, None
        self._fence = None
        if acquired_at is None:
            return
        try:
            await self._release(acquired_at)
        finally:
            self._in_use = False

    async def _release(self, acquired_at: float) -> None:
        backend = self.backend
        min_until = acquired_at + self.min_lock_seconds
        now = time.monotonic()
        remaining = min_until - now
        if remaining > 0:
            self._busy_until = min_until
            slack = min(_SAME_EXPIRY, self.min_lock_seconds * 0.02)
            if (
                self._max_until <= min_until + 0.001
                and self._sure_until >= min_until - slack
            ):
                return  # the server expires the hold at the right time
            await call_backend(
                lambda: backend.acquire(
                    name=self.key, token=self.worker, duration=remaining
                ),
                lambda: LockReleaseError(name=self.name, token=self.worker),
                self._timeout,
            )
        elif now < self._max_until:
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
