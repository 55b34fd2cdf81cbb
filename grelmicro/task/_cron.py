"""Cron tasks: run a function at the wall-clock times of a cron expression.

Each fire is claimed once across the fleet through the backend's
`FireClaimBackend` capability, under the key ``cron:<name>``. A fire is
identified by its scheduled time in whole milliseconds since the epoch, which
every worker computes from the schedule alone: workers whose clocks disagree
by a second or two still name the same fire, and the backend accepts only a
fire later than the latest claimed one, so each fire is claimed once.

Delivery:

- default: the claim is final. A claimant that dies mid-run loses the fire.
- ``at_least_once=True``: the claim is a lease of ``lease_seconds``, kept
  while the run lasts and finished when it ends; the workers that lost the
  claim watch the fire and take it over (`retake_fire`) if the lease lapses
  unfinished. A finished fire never runs again.
- ``local=True``: every worker runs every fire; no backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from grelmicro import _metrics
from grelmicro.sync._backends import get_default_backend
from grelmicro.sync._primitive import (
    DEFAULT_BACKEND_TIMEOUT,
    call_backend,
    worker_id,
)
from grelmicro.sync.abc import (
    FIRE_BEHIND,
    FireClaimBackend,
    NameCheckBackend,
    SyncBackend,
)
from grelmicro.sync.errors import SyncBackendError
from grelmicro.sync.lock import Lock
from grelmicro.task._cron_args import (
    MISSED_COUNT_LIMIT,
    Clock,
    CronBackendError,
    FireClaimUnsupportedError,
    SyncErrorLog,
    WallClock,
    check_cron_args,
    report_missed,
)
from grelmicro.task._cron_schedule import CronSchedule, to_datetime, to_ms
from grelmicro.task._interval import default_task_name, prepare_call
from grelmicro.task._run import Run, enter_local_run, set_current_run
from grelmicro.task.errors import FunctionTypeError

logger = logging.getLogger("grelmicro.task")

T = TypeVar("T")

#: The clock skew the claims tolerate: each worker's clock may be this many
#: seconds off, so two clocks may differ by twice as much.
CLOCK_SKEW = 2.0
#: On a task's very first start (no fire ever claimed), a fire due this
#: recently (by this worker's clock) still runs: a task deployed right at a
#: fire time runs that fire.
ON_TIME_WINDOW = 0.5
#: A fire never claimed and older than this means every worker was down (the
#: missed-fire case: the latest due fire runs once, the older ones are counted
#: in one WARNING). Younger unclaimed fires are attempted in order: a worker
#: whose clock is up to twice the skew behind may be about to claim them.
#: Twice that largest clock difference: the rest is room for the fire
#: granularity (the latest claimed fire is up to a period old) and for a
#: worker slowed seconds by a loaded machine.
CATCH_UP_HORIZON = 4 * CLOCK_SKEW
#: Seconds a worker watching an at-least-once fire goes on without an answer
#: from the backend before it stops watching: the backends remember a
#: completed fire for 60 s, and a takeover after they forgot could run it again.
WATCH_BLIND_LIMIT = 30.0


def skip_late(
    schedule: CronSchedule,
    fire: float,
    now: float,
    fires: Iterator[float],
    label: str,
) -> tuple[float, Iterator[float]]:
    """The fire to attempt now that `fire` is due (`now` on the task's clock),
    and the fires after it.

    Woken late (a stalled loop): of the fires older than the catch-up
    horizon, only the latest is attempted (the others were most likely run by
    other workers); the recent ones follow.
    """
    if fire < now - CATCH_UP_HORIZON:
        latest = schedule.latest_at_or_before(now - CATCH_UP_HORIZON)
        if latest is not None and latest > fire:
            logger.debug(
                "Cron task woke late: %s, skipping to %s",
                label,
                to_datetime(latest).isoformat(),
            )
            return latest, schedule.iter_after(latest)
    return fire, fires


class _LateFires:
    """Fires due before a restart that a cron task skipped for being older than
    `misfire_grace_seconds`, counted until reported in one WARNING."""

    __slots__ = ("after", "count", "latest")

    def __init__(self) -> None:
        self.count = 0
        self.after: float | None = None
        self.latest = 0.0

    def add(self, fire: float, previous: float | None) -> None:
        if not self.count:
            self.after = previous
        self.count += 1
        self.latest = fire

    def report(self, name: str, grace: float | None) -> None:
        after = self.latest if self.after is None else self.after
        report_missed(
            name,
            self.count,
            capped=False,
            after=after,
            due=self.latest,
            grace=grace,
            at_start=True,
        )
        self.count = 0


class CronTask(SyncErrorLog):
    """Runs a function at each fire of a cron schedule, until cancelled.

    Built by `TaskRouter.cron`; it implements `grelmicro.task.abc.Task`.
    """

    def __init__(
        self,
        *,
        function: Callable[..., Any],
        name: str,
        schedule: CronSchedule,
        local: bool = False,
        misfire_grace_seconds: float | None = None,
        at_least_once: bool = False,
        lease_seconds: float = 60.0,
        sync: Lock | None = None,
        backend: SyncBackend | None = None,
        worker: str | None = None,
        cancel_on_loss: bool = True,
        clock: Clock | None = None,
        retry_seconds: float | None = None,
    ) -> None:
        self._name = name
        self.function = function
        self.schedule = schedule
        self.local = local
        self.misfire_grace_seconds = misfire_grace_seconds
        self.at_least_once = at_least_once
        self.lease_seconds = lease_seconds
        self._sync = sync
        self._backend = backend
        self.worker = worker_id(worker)
        self.cancel_on_loss = cancel_on_loss
        self.clock: Clock = clock or WallClock()
        #: Seconds between two attempts to take over a watched fire.
        self.retry_seconds = (
            retry_seconds
            if retry_seconds is not None
            else min(max(lease_seconds / 4, 0.05), 5.0)
        )
        self.key = f"cron:{name}"
        self._call = prepare_call(function)

    # Task protocol and what the manager checks at entry -----------------------------

    @property
    def name(self) -> str:
        """The task's name."""
        return self._name

    @property
    def needs_default_backend(self) -> bool:
        """Whether the task uses the default backend (coordinated, no `backend=`)."""
        return not self.local and self._backend is None

    @property
    def resource_lock(self) -> Lock | None:
        """The `sync=` resource lock, if any."""
        return self._sync

    def __repr__(self) -> str:
        return (
            f"CronTask(name={self._name!r}, expression="
            f"{self.schedule.expression!r}, timezone={self.schedule.timezone!r})"
        )

    def resolve_backend(self) -> FireClaimBackend | None:
        """The backend claims go to (None for local tasks); fails if unusable."""
        if self.local:
            return None
        backend = self._backend
        if backend is None:
            backend = get_default_backend(f"cron task {self._name!r}")
        if not isinstance(backend, FireClaimBackend):
            raise FireClaimUnsupportedError(name=self._name, backend=backend)
        if isinstance(backend, NameCheckBackend):
            backend.check_name(self.key)
        return backend

    # The loop --------------------------------------------------------------------------

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Fire until cancelled; raises at start if no usable backend."""
        backend = self.resolve_backend()
        clock = self.clock
        schedule = self.schedule
        async with anyio.create_task_group() as task_group:
            task_status.started()
            start = clock.now()
            cursor = start
            first_start = False
            if backend is not None:
                cursor, first_start = await self._catch_up(backend, task_group, start)
            fires = schedule.iter_after(cursor)
            # The fire before the next one, when the loop just handled it.
            previous: float | None = None
            late = _LateFires()
            # Fires due before this instant and skipped for the grace are
            # reported as missed (a restart, not the very first start).
            missed_before = None if first_start or backend is None else start
            while (fire := next(fires, None)) is not None:
                if late.count and clock.now() < fire:
                    late.report(self._name, self.misfire_grace_seconds)
                await clock.sleep_until(fire)
                now = clock.now()
                due, fires = skip_late(schedule, fire, now, fires, self._name)
                if due != fire:
                    previous = None
                if self.past_grace(due, now):
                    if missed_before is not None and due <= missed_before:
                        # Due before this worker started, unclaimed and too
                        # old now: missed while no worker was up, as far as
                        # this worker can tell (it is left unclaimed for
                        # workers whose clocks are behind).
                        if previous is None:
                            previous = schedule.latest_at_or_before(due - 0.001)
                        late.add(due, previous)
                    previous = due
                    continue
                if late.count:
                    late.report(self._name, self.misfire_grace_seconds)
                if backend is None:
                    task_group.start_soon(self.run_local, due)
                else:
                    after = self._after(due, previous, now)
                    fence = await self._claim(backend, task_group, due, after=after)
                    if fence == FIRE_BEHIND:
                        resume = await self._behind(backend, due, now)
                        fires, previous = schedule.iter_after(resume), None
                        continue
                previous = due
            logger.info("Cron task has no more fires: %s", self._name)
            await anyio.sleep_forever()

    def past_grace(self, fire: float, now: float) -> bool:
        """Whether `fire` is older than `misfire_grace_seconds` at `now` (skipped)."""
        grace = self.misfire_grace_seconds
        if grace is not None and now - fire > grace:
            logger.debug(
                "Cron fire older than misfire_grace_seconds: %s at %s",
                self._name,
                to_datetime(fire).isoformat(),
            )
            return True
        return False

    async def run_local(self, fire: float) -> None:
        """One run of a local task for `fire`, in its own task (no claim)."""
        if self._sync is None and not _metrics.ENABLED.on:
            # Nothing to record and no lock: the run alone.
            enter_local_run(self._name, fire)
            await self._run_function()
        else:
            await self._execute(fire, None, None, None)

    def _after(self, fire: float, previous: float | None, now: float) -> float | None:
        """The fire that must be claimed before `fire` (claims stay in
        order), or None when `fire` may pass over unclaimed fires: those are
        older than the catch-up horizon or than the misfire grace (no worker
        runs them).

        `previous` is the fire the loop handled just before, when it is
        `fire`'s predecessor in the schedule; else it is computed.
        """
        if previous is None:
            previous = self.schedule.latest_at_or_before(fire - 0.001)
        if previous is None or previous < now - CATCH_UP_HORIZON:
            return None
        grace = self.misfire_grace_seconds
        if grace is not None and now - previous > grace:
            return None
        return previous

    async def _behind(
        self, backend: FireClaimBackend, fire: float, now: float
    ) -> float:
        """The instant to go on from when the claim of `fire` found earlier
        fires unclaimed: the latest claimed fire (those after it are claimed
        in order, and run, by this worker), or the catch-up horizon.

        This happens when the latest claim passed over no fire but another
        worker has not claimed the next ones yet: on a task's very first start
        (workers with clocks apart each begin at a different fire), or when a
        claim was lost on the way.
        """
        horizon = now - CATCH_UP_HORIZON
        answered, last = await self._latest_claimed(backend)
        if not answered:
            return fire  # unknown: go on after `fire` (as if it was claimed)
        if last is None:  # pragma: no cover - a mark never goes away
            return max(fire - 0.001, horizon)
        logger.debug(
            "Cron fires unclaimed before %s: %s claims them from %s",
            to_datetime(fire).isoformat(),
            self._name,
            to_datetime(last).isoformat(),
        )
        return max(last, horizon)

    async def _latest_claimed(
        self, backend: FireClaimBackend
    ) -> tuple[bool, float | None]:
        """Whether the backend answered, and the latest claimed fire (None if
        none was ever claimed); a failure is logged."""
        try:
            stored = await self._backend_call(
                lambda: backend.last_fire(name=self.key), "last_fire"
            )
        except SyncBackendError as exc:
            self._log_sync_error(exc)
            return False, None
        return True, None if stored is None else stored / 1000

    async def _catch_up(
        self, backend: FireClaimBackend, task_group: TaskGroup, now: float
    ) -> tuple[float, bool]:
        """At start: handle the fires missed while no worker was up.

        Returns the instant after which the loop attempts fires in order, and
        whether this is the task's very first start. On the very first start
        (no fire ever claimed), fires due less than `ON_TIME_WINDOW` ago are
        on time (if another worker starts claiming meanwhile, the claims stay
        in order: see `_behind`). Unclaimed fires younger than `CATCH_UP_HORIZON`
        are attempted in order too (another worker may be claiming them).
        An older fire never claimed means every worker was down: the latest
        due fire runs once (within the grace), the others are counted in one
        WARNING.
        """
        window_start = now - ON_TIME_WINDOW
        horizon = now - CATCH_UP_HORIZON
        _, last = await self._latest_claimed(backend)
        if last is None:
            # Never claimed (or unknown): the very first start.
            return window_start, True
        due = self.schedule.latest_at_or_before(now)
        if due is None or last >= due or last >= horizon:
            return max(last, horizon), False
        older = self.schedule.count_between(last, due, limit=MISSED_COUNT_LIMIT)
        grace = self.misfire_grace_seconds
        run_it = grace is None or now - due <= grace
        if not run_it and not older and due > horizon:
            # Too old to run here, but nothing shows the fleet was down: it
            # is left to workers whose clocks are behind.
            return horizon, False
        fence = await self._claim(
            backend, task_group, due, run=run_it, final=not run_it
        )
        if fence is not None and (missed := older + (0 if run_it else 1)):
            # Only the worker that claimed the latest fire reports.
            report_missed(
                self._name,
                missed,
                capped=older >= MISSED_COUNT_LIMIT,
                after=last,
                due=due,
                grace=None if run_it else grace,
            )
        return due, False

    async def _claim(
        self,
        backend: FireClaimBackend,
        task_group: TaskGroup,
        fire: float,
        *,
        run: bool = True,
        final: bool = False,
        after: float | None = None,
    ) -> int | None:
        """Claim `fire`; start its run if claimed, else watch it (at-least-once).

        Returns the fencing token when claimed, None when another worker
        claimed it, `FIRE_BEHIND` when the fire `after` is not claimed yet
        (nothing was written).
        """
        fire_ms = to_ms(fire)
        after_ms = None if after is None else to_ms(after)
        leased = self.at_least_once and not final
        lease = self.lease_seconds if leased else None
        started = time.monotonic()
        try:
            fence = await self._backend_call(
                lambda: backend.claim_fire(
                    name=self.key,
                    fire=fire_ms,
                    token=self.worker,
                    lease=lease,
                    after=after_ms,
                ),
                f"claim_fire(fire={fire_ms})",
            )
        except SyncBackendError as exc:
            _metrics.lock_acquire("cron", "error", time.monotonic() - started)
            self._log_sync_error(exc)
            if leased and run:  # the claim may have been stored: watch it
                task_group.start_soon(self._watch, backend, fire)
            return None
        self._sync_recovered()
        if fence == FIRE_BEHIND:
            return fence
        _metrics.lock_acquire(
            "cron", "busy" if fence is None else "acquired", time.monotonic() - started
        )
        if fence is None:
            if leased and run:
                task_group.start_soon(self._watch, backend, fire)
            return None
        if run:
            lease_from = started if leased else None
            task_group.start_soon(self._execute, fire, fence, backend, lease_from)
        return fence

    async def _watch(self, backend: FireClaimBackend, fire: float) -> None:
        """Take over a leased fire if its claimant's lease lapses unfinished."""
        fire_ms = to_ms(fire)
        last_answer = time.monotonic()
        while True:
            await anyio.sleep(self.retry_seconds)
            started = time.monotonic()
            if started - last_answer > WATCH_BLIND_LIMIT:
                # The backend forgets a completed fire's marker after a while:
                # past that, a takeover could run a completed fire again.
                logger.warning(
                    "Cron fire no longer watched: %s due %s (the backend did "
                    "not answer for %.0f s)",
                    self._name,
                    to_datetime(fire).isoformat(),
                    started - last_answer,
                )
                return
            try:
                retake = await self._backend_call(
                    lambda: backend.retake_fire(
                        name=self.key,
                        fire=fire_ms,
                        token=self.worker,
                        lease=self.lease_seconds,
                    ),
                    f"retake_fire(fire={fire_ms})",
                )
            except SyncBackendError as exc:
                self._log_sync_error(exc)
                continue
            last_answer = time.monotonic()
            if retake.done:
                return
            if retake.fence is not None:
                _metrics.lock_acquire("cron", "acquired", time.monotonic() - started)
                logger.warning(
                    "Cron fire taken over: %s due %s (its claimant's lease "
                    "lapsed before the run finished)",
                    self._name,
                    to_datetime(fire).isoformat(),
                )
                await self._execute(fire, retake.fence, backend, started)
                return

    # One run ---------------------------------------------------------------------------

    async def _execute(
        self,
        fire: float,
        fence: int | None,
        backend: FireClaimBackend | None,
        lease_from: float | None,
    ) -> None:
        """Run the function for `fire`, in this task (its own task).

        `lease_from` (monotonic) is when the fire's lease was taken, for
        at-least-once runs; None for runs whose claim is final (or local).
        """
        run = Run(name=self._name, scheduled_at=to_datetime(fire), fencing_token=fence)
        set_current_run(run)
        leased = backend is not None and lease_from is not None
        resource = self._sync
        if resource is not None:
            try:
                await resource.acquire_nowait()
            except anyio.WouldBlock:
                logger.debug("Task skipped: %s", self._name)
                _metrics.count_outcome(self._name, "skipped")
                if leased:  # skipped on purpose: the fire is done with
                    await self._finish(backend, fire)
                return
            except SyncBackendError as exc:
                self._log_sync_error(exc)
                return  # a leased fire lapses and is retried elsewhere
        recorder = _metrics.start_run(
            self._name, scheduled_at=fire, fencing_token=fence
        )
        outcome: str | None = "success"
        error: BaseException | None = None
        try:
            if backend is not None and lease_from is not None:
                error = await self._run_leased(run, backend, fire, lease_from)
            else:
                error = await self._run_function()
            if error is not None:
                outcome = "error"
            if run.lost:
                outcome = "lost"
        except BaseException:  # cancelled: the manager is stopping
            outcome = "lost" if run.lost else None
            raise
        finally:
            if outcome is None:
                recorder.cancel()  # cut off by the worker stopping
            else:
                recorder.finish(outcome, error)
            if resource is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await resource.release()
                    except SyncBackendError as exc:
                        self._log_sync_error(exc)
        if leased and not run.lost:
            await self._finish(backend, fire)

    async def _run_function(self) -> Exception | None:
        try:
            await self._call()
        except Exception as exc:
            logger.exception("Task execution error: %s", self._name)
            return exc
        return None

    async def _run_leased(
        self, run: Run, backend: FireClaimBackend, fire: float, lease_from: float
    ) -> Exception | None:
        """Run the function while keeping the fire's lease; cancel it on loss."""
        scope = anyio.CancelScope()
        error: Exception | None = None
        async with anyio.create_task_group() as keepers:
            keepers.start_soon(self._keep, run, backend, fire, lease_from, scope)
            with scope:
                error = await self._run_function()
            keepers.cancel_scope.cancel()
        return error

    async def _keep(
        self,
        run: Run,
        backend: FireClaimBackend,
        fire: float,
        lease_from: float,
        scope: anyio.CancelScope,
    ) -> None:
        """Extend the lease every third of it; mark the run lost when it lapses."""
        lease = self.lease_seconds
        expires = lease_from + lease
        fire_ms = to_ms(fire)
        while True:
            await anyio.sleep(max(lease / 3, 0.01))
            started = time.monotonic()
            if started >= expires:
                break
            try:
                with anyio.move_on_after(max(expires - started, 0.0)) as deadline:
                    kept = await self._backend_call(
                        lambda: backend.keep_fire(
                            name=self.key, fire=fire_ms, token=self.worker, lease=lease
                        ),
                        f"keep_fire(fire={fire_ms})",
                        timeout=min(DEFAULT_BACKEND_TIMEOUT, lease / 3),
                    )
                if deadline.cancelled_caught:
                    break
            except SyncBackendError as exc:
                self._log_sync_error(exc)
                continue  # retried until the lease is over
            if not kept:
                break
            expires = started + lease
        logger.warning(
            "Task lock lost while running: %s (the lease on the fire due %s "
            "could not be kept; another worker may run it again)",
            self._name,
            to_datetime(fire).isoformat(),
        )
        run.mark_lost()
        if self.cancel_on_loss:
            scope.cancel()

    async def _finish(self, backend: FireClaimBackend | None, fire: float) -> None:
        if backend is None:
            return
        fire_ms = to_ms(fire)
        with anyio.CancelScope(shield=True):
            try:
                done = await self._backend_call(
                    lambda: backend.finish_fire(
                        name=self.key, fire=fire_ms, token=self.worker
                    ),
                    f"finish_fire(fire={fire_ms})",
                )
            except SyncBackendError as exc:
                self._log_sync_error(exc)
                return
        if not done:
            logger.warning(
                "Task lock lost while running: %s (the lease on the fire due %s "
                "lapsed before the run finished; another worker may run it again)",
                self._name,
                to_datetime(fire).isoformat(),
            )

    # Backend calls and their errors -------------------------------------------------

    async def _backend_call(
        self,
        call: Callable[[], Awaitable[T]],
        operation: str,
        *,
        timeout: float = DEFAULT_BACKEND_TIMEOUT,  # noqa: ASYNC109
    ) -> T:
        return await call_backend(
            call, lambda: CronBackendError(key=self.key, operation=operation), timeout
        )


def build_cron_task(
    function: Callable[..., Any],
    *,
    schedule: CronSchedule,
    name: str | None,
    local: bool,
    misfire_grace_seconds: float | None,
    at_least_once: bool,
    lease_seconds: float,
    sync: Lock | None,
    backend: SyncBackend | None,
    worker: str | None,
    cancel_on_loss: bool,
    clock: Clock | None = None,
    retry_seconds: float | None = None,
) -> CronTask:
    """The `CronTask` running `function` (arguments validated by `check_cron_args`)."""
    if not callable(function):
        raise FunctionTypeError(function)
    return CronTask(
        function=function,
        name=name or default_task_name(function),
        schedule=schedule,
        local=local,
        misfire_grace_seconds=misfire_grace_seconds,
        at_least_once=at_least_once,
        lease_seconds=lease_seconds,
        sync=sync,
        backend=backend,
        worker=worker,
        cancel_on_loss=cancel_on_loss,
        clock=clock,
        retry_seconds=retry_seconds,
    )


__all__ = [
    "Clock",
    "CronBackendError",
    "CronTask",
    "FireClaimUnsupportedError",
    "WallClock",
    "build_cron_task",
    "check_cron_args",
]
