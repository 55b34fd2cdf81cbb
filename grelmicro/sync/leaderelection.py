"""Leader election: one worker at a time holds a renewed lease."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Annotated, Self
from uuid import UUID

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from typing_extensions import Doc

from grelmicro import _metrics
from grelmicro._validate import less_than, number
from grelmicro.sync._primitive import Capabilities, Primitive, call_backend, give_back
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import (
    BackendNotReadyError,
    LockAcquireError,
    LockReleaseError,
)

logger = logging.getLogger("grelmicro.sync")


class LeaderElection(Primitive):
    """Elect one leader among the workers, with a lease renewed in the background.

    Add it to a `TaskManager` (it is a task): it keeps trying to take the
    lease and, once leader, renews it every `retry_interval`. `is_leader()`
    turns False as soon as `renew_deadline` passes without a successful
    renewal, so a leader cut off from the backend steps down before its lease
    (`lease_duration`) can expire and another worker can take over. When the
    task is cancelled (the manager exits), it releases the lease at once.

    `async with leader:` is a guard: it enters only while this worker is the
    leader and raises `anyio.WouldBlock` otherwise.
    """

    kind = "leader"

    def __init__(
        self,
        name: Annotated[str, Doc("The name of the election.")],
        *,
        backend: Annotated[
            SyncBackend | None,
            Doc("The backend; the default backend when None, resolved at first use."),
        ] = None,
        worker: Annotated[
            str | UUID | None,
            Doc("This worker's identity; a random UUID when None."),
        ] = None,
        lease_duration: Annotated[
            float, Doc("Seconds the lease lasts on the backend after each renewal.")
        ] = 15,
        renew_deadline: Annotated[
            float,
            Doc(
                "Seconds without a successful renewal after which the leader steps down."
            ),
        ] = 10,
        retry_interval: Annotated[
            float, Doc("Seconds between two attempts to take or renew the lease.")
        ] = 2,
        backend_timeout: Annotated[
            float, Doc("Maximum seconds one backend call may take.")
        ] = 5,
        error_interval: Annotated[
            float, Doc("Minimum seconds between two logs of repeated backend errors.")
        ] = 30,
    ) -> None:
        super().__init__(name, backend=backend, worker=worker)
        self.lease_duration = number("lease_duration", lease_duration)
        self.renew_deadline = number("renew_deadline", renew_deadline)
        self.retry_interval = number("retry_interval", retry_interval)
        self.backend_timeout = number("backend_timeout", backend_timeout)
        self.error_interval = number("error_interval", error_interval)
        less_than(
            "renew_deadline",
            self.renew_deadline,
            "lease_duration",
            self.lease_duration,
        )
        less_than(
            "retry_interval", self.retry_interval, "renew_deadline", self.renew_deadline
        )
        less_than(
            "backend_timeout",
            self.backend_timeout,
            "renew_deadline",
            self.renew_deadline,
        )
        # Monotonic time at which the last successful acquire/renew was *sent*.
        self._renewed_at: float | None = None
        # The fencing token of the current term (None: not leader, or no tokens).
        self._fence: int | None = None
        # Counts the terms this worker began (a term ends when leadership is lost).
        self._term = 0
        # Set once a round got an answer from the backend since the start.
        self._settled = False
        self._changed: anyio.Event | None = None
        self._running = False
        # True after a round in which another worker held the lease.
        self._lost_to_other = False
        # Seconds left on the other worker's lease, when the backend says.
        self._lease_left: float | None = None
        self._last_error_log = -float("inf")
        self._errors_suppressed = 0

    # State ----------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this worker is the leader now.

        False once `renew_deadline` has passed since the last successful
        renewal, even before the background task notices it.
        """
        renewed_at = self._renewed_at
        return (
            renewed_at is not None
            and time.monotonic() - renewed_at < self.renew_deadline
        )

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of this worker's current term; None when not leader.

        Each term (a fresh acquisition of the lease, not a renewal) gets a
        token greater than every earlier term's, across all workers. None
        too on a backend that cannot issue tokens.
        """
        return self._fence if self.is_leader() else None

    @property
    def running(self) -> bool:
        """Whether the election task is running."""
        return self._running

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self, timeout: float | None) -> None:  # noqa: ASYNC109
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        if timeout is None:
            await event.wait()
            return
        with anyio.move_on_after(timeout):
            await event.wait()

    async def wait_for_leader(self) -> None:
        """Wait until this worker is the leader."""
        while not self.is_leader():
            await self._wait_change(None)

    @property
    def settled(self) -> bool:
        """Whether the running election has had its first answer from the backend.

        Before that, `is_leader()` is False only because nobody knows yet.
        """
        return self._settled

    async def wait_settled(self) -> None:
        """Wait until the election's first answer from the backend."""
        while not self._settled:
            await self._wait_change(None)

    @property
    def term(self) -> int:
        """How many terms this worker has begun (grows when it becomes leader)."""
        return self._term

    async def wait_term_end(self, term: int) -> None:
        """Wait until term number `term` ends (returns at once if it already did).

        Unlike `wait_lose_leader`, this also returns when leadership lapsed
        and was taken again (a new term) between two checks.
        """
        while self._term == term and self.is_leader():
            renewed_at = self._renewed_at
            assert renewed_at is not None
            left = renewed_at + self.renew_deadline - time.monotonic()
            await self._wait_change(max(left, 0.0))

    async def wait_lose_leader(self) -> None:
        """Wait until this worker is no longer the leader."""
        while self.is_leader():
            renewed_at = self._renewed_at
            assert renewed_at is not None
            left = renewed_at + self.renew_deadline - time.monotonic()
            await self._wait_change(max(left, 0.0))

    # Guard ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Enter only while this worker is the leader; else raise `WouldBlock`."""
        if not self.is_leader():
            raise anyio.WouldBlock
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Nothing to release: the lease is managed by the election task."""

    # Task -------------------------------------------------------------------

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Run the election until cancelled, then release the lease.

        One election may be added to several managers of one process: it runs
        once, in the manager that started it first; the others only wait (a
        manager that did not start it does not stop it).
        """
        if self._running:
            task_status.started()
            await anyio.sleep_forever()
        self._running = True
        self._settled = False
        _metrics.leader_status(self.name, False)  # a follower exports 0 too
        task_status.started()
        try:
            while True:
                await self._round()
                await self._sleep_until_next_round()
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                await self._step_down()

    async def _sleep_until_next_round(self) -> None:
        """Wait `retry_interval`; a follower wakes early when the lease is freed.

        Backends that can tell when a key is released or expires (the
        `ReleaseWatchBackend` capability, such as a NATS KV watch) let a
        follower take over at once after a graceful stop instead of at its
        next retry.
        """
        wait = self.retry_interval
        lease_left = self._lease_left
        if self._lost_to_other and lease_left is not None:
            # The failed attempt told how long the other lease lasts: retry
            # right when it runs out (a crashed leader), not up to one
            # retry_interval later.
            wait = min(wait, lease_left + 0.001)
        caps = self._caps_or_none() if self._lost_to_other else None
        watch = caps.release_watch if caps is not None else None
        if watch is None:
            await anyio.sleep(wait)
            return
        deadline = time.monotonic() + wait
        with anyio.move_on_after(wait):
            try:
                await watch.wait_released(name=self.key)
            except Exception:
                logger.debug("wait_released failed: %s", self.name, exc_info=True)
                await anyio.sleep(max(deadline - time.monotonic(), 0.0))

    def _caps_or_none(self) -> Capabilities | None:
        try:
            return self.caps
        except Exception:
            return None

    async def _round(self) -> None:
        """Take or renew the lease once."""
        started = time.monotonic()
        self._lease_left = None
        was_leader = self.is_leader()
        try:
            caps = self.caps
            answer = await call_backend(
                lambda: caps.acquire(
                    name=self.key, token=self.worker, duration=self.lease_duration
                ),
                lambda: LockAcquireError(name=self.key, token=self.worker),
                self.backend_timeout,
            )
        except BaseException as exc:
            if _metrics.ENABLED.on:
                _metrics.lock_acquire("leader", "error", time.monotonic() - started)
            backend = self.backend_or_none()
            if not was_leader and backend is not None:
                # A follower's acquire that failed or was cancelled (at
                # shutdown) may still be applied by the server: give the
                # lease back at once. A leader keeps its lease until
                # renew_deadline; its step-down releases it.
                await give_back(
                    backend,
                    name=self.key,
                    token=self.worker,
                    timeout=self.backend_timeout,
                )
            if not isinstance(exc, Exception):
                raise
            self._lost_to_other = False
            self._log_error(exc)
            if self._renewed_at is not None and not self.is_leader():
                self._set_leader(None)
            return
        acquired = answer.acquired
        if _metrics.ENABLED.on:
            _metrics.lock_acquire(
                "leader",
                "acquired" if acquired else "busy",
                time.monotonic() - started,
            )
        if not acquired and answer.remaining != float("inf"):
            self._lease_left = answer.remaining
        self._lost_to_other = not acquired
        self._recovered()
        if not self._settled:
            self._settled = True
            self._notify()
        if (
            acquired
            and self._renewed_at is not None
            and answer.fence is not None
            and self._fence is not None
            and answer.fence != self._fence
        ):
            # Leader again, but after a gap: the lease lapsed in between and
            # another worker may have led. That ends the term.
            logger.warning(
                "Leadership lapsed and was taken again: %s (worker %s); a new "
                "term begins",
                self.name,
                self.worker,
            )
            self._set_leader(None)
        if acquired:
            self._fence = answer.fence
        self._set_leader(started if acquired else None)

    def backend_or_none(self) -> SyncBackend | None:
        """The backend in use, or None when none is loaded."""
        try:
            return self.backend
        except Exception:
            return None

    def _set_leader(self, renewed_at: float | None) -> None:
        was_leader = self._renewed_at is not None
        self._renewed_at = renewed_at
        if renewed_at is not None and not was_leader:
            self._term += 1
            logger.info("Leader elected: %s (worker %s)", self.name, self.worker)
            _metrics.leader_status(self.name, True)
            self._notify()
        elif renewed_at is None and was_leader:
            logger.info("Leader lost: %s (worker %s)", self.name, self.worker)
            self._fence = None
            _metrics.leader_status(self.name, False)
            self._notify()

    async def _step_down(self) -> None:
        """Stop leading and release the lease (a follower's in-flight acquire
        was given back by `_round` when it was cancelled)."""
        was_leader = self._renewed_at is not None
        self._set_leader(None)
        if not was_leader:
            return
        try:
            backend = self.backend
            await call_backend(
                lambda: backend.release(name=self.key, token=self.worker),
                lambda: LockReleaseError(name=self.key, token=self.worker),
                self.backend_timeout,
            )
        except Exception:
            logger.warning(
                "Leader election could not release the lease: %s (it expires "
                "within lease_duration=%ss)",
                self.name,
                self.lease_duration,
                exc_info=True,
            )

    def _log_error(self, exc: BaseException) -> None:
        if _not_ready(exc):
            logger.debug("Leader election waits for its backend: %s", self.name)
            return
        now = time.monotonic()
        if now - self._last_error_log >= self.error_interval:
            suppressed = self._errors_suppressed
            extra = f" ({suppressed} similar errors not logged)" if suppressed else ""
            logger.error(
                "Leader election backend error: %s%s", self.name, extra, exc_info=exc
            )
            self._last_error_log = now
            self._errors_suppressed = 0
        else:
            self._errors_suppressed += 1
            logger.debug("Leader election backend error: %s: %r", self.name, exc)

    def _recovered(self) -> None:
        if self._last_error_log != -float("inf"):
            logger.info("Leader election backend recovered: %s", self.name)
            self._last_error_log = -float("inf")
            self._errors_suppressed = 0


def _not_ready(exc: BaseException) -> bool:
    """Whether `exc` says the backend is not connected yet (application start-up)."""
    while exc is not None:
        if isinstance(exc, BackendNotReadyError):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False
