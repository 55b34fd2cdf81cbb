"""Cron tasks on the memory backend, with an injectable clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from grelmicro import _metrics
from grelmicro.errors import SettingsValidationError
from grelmicro.sync import Lock
from grelmicro.sync.abc import FIRE_BEHIND, FireRetake
from grelmicro.sync.errors import BackendNotLoadedError
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import Run, TaskManager, TaskRouter, _cron, current_run
from grelmicro.task._cron import (
    CronTask,
    FireClaimUnsupportedError,
    build_cron_task,
    check_cron_args,
)
from grelmicro.task.abc import Task
from grelmicro.task.errors import FunctionTypeError
from tests.unit.conftest import CountingBackend

pytestmark = pytest.mark.anyio

ZURICH = ZoneInfo("Europe/Zurich")
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """A wall clock the test moves: sleeps up to `limit` return at once."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.limit = start
        self._moved = anyio.Event()

    def now(self) -> float:
        return self.t

    async def sleep_until(self, instant: float) -> None:
        while instant > self.limit:
            moved = self._moved
            await moved.wait()
        self.t = max(self.t, instant)
        await anyio.sleep(0)

    async def advance(self, until: float) -> None:
        """Let the tasks run every fire up to `until`, and wait for them."""
        self.limit = until
        moved, self._moved = self._moved, anyio.Event()
        moved.set()
        await wait_all_tasks_blocked()
        self.t = max(self.t, until)


class ScriptedBackend(MemorySyncBackend):
    """The memory backend, with fire-claim calls that fail or refuse on demand."""

    def __init__(self) -> None:
        super().__init__(auto_register=False)
        self.fail_claims = False
        self.refuse_keeps = False
        self.fail_retakes = False

    async def claim_fire(
        self,
        *,
        name: str,
        fire: int,
        token: str,
        lease: float | None,
        after: int | None = None,
    ) -> int | None:
        if self.fail_claims:
            msg = "connection refused"
            raise ConnectionError(msg)
        return await super().claim_fire(
            name=name, fire=fire, token=token, lease=lease, after=after
        )

    async def keep_fire(
        self, *, name: str, fire: int, token: str, lease: float
    ) -> bool:
        if self.refuse_keeps:
            return False
        return await super().keep_fire(name=name, fire=fire, token=token, lease=lease)

    async def retake_fire(
        self, *, name: str, fire: int, token: str, lease: float
    ) -> FireRetake:
        if self.fail_retakes:
            msg = "connection refused"
            raise ConnectionError(msg)
        return await super().retake_fire(name=name, fire=fire, token=token, lease=lease)


def make_task(
    function: Callable[..., Any],
    expression: str = "* * * * * *",
    *,
    clock: FakeClock | None = None,
    name: str = "job",
    timezone: str = "UTC",
    **options: Any,
) -> CronTask:
    settings: dict[str, Any] = {
        "name": name,
        "timezone": timezone,
        "local": False,
        "misfire_grace_seconds": None,
        "at_least_once": False,
        "lease_seconds": 60,
        "sync": None,
        "backend": None,
        "worker": None,
        "cancel_on_loss": True,
    }
    retry = options.pop("retry_seconds", None)
    settings.update(options)
    schedule, grace, lease, worker = check_cron_args(expression, **settings)
    settings.update(misfire_grace_seconds=grace, lease_seconds=lease, worker=worker)
    del settings["timezone"]
    return build_cron_task(
        function, schedule=schedule, clock=clock, retry_seconds=retry, **settings
    )


async def ran_until(backend: MemorySyncBackend, fire: float) -> None:
    """The fleet has claimed every fire of task "job" up to `fire` already."""
    assert await backend.claim_fire(
        name="cron:job", fire=round(fire * 1000), token="earlier", lease=None
    )


class Recorder:
    """Records the runs of a task function."""

    def __init__(self, work: float = 0.0) -> None:
        self.runs: list[Run] = []
        self.work = work

    async def __call__(self) -> None:
        self.runs.append(current_run())
        if self.work:
            await anyio.sleep(self.work)

    @property
    def fires(self) -> list[float]:
        return [run.scheduled_at.timestamp() for run in self.runs]


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record the metric hooks the cron task calls."""
    calls: list[tuple[str, ...]] = []

    class Run_(_metrics.RunRecorder):
        def __init__(self, name: str) -> None:
            self.name = name

        def finish(self, outcome: str, error: BaseException | None = None) -> None:
            calls.append(("finish", self.name, outcome))

    def start_run(
        name: str, *, scheduled_at: float, fencing_token: int | None = None
    ) -> _metrics.RunRecorder:
        calls.append(("start", name))
        return Run_(name)

    monkeypatch.setattr(_metrics, "start_run", start_run)
    monkeypatch.setattr(
        _metrics, "count_outcome", lambda name, outcome: calls.append((outcome, name))
    )
    monkeypatch.setattr(
        _metrics,
        "lock_acquire",
        lambda kind, outcome, seconds: calls.append(("lock", kind, outcome)),
    )
    return calls


# The decorator -----------------------------------------------------------------------


def test_decorator_returns_the_function_and_adds_a_task() -> None:
    router = TaskRouter()

    async def job() -> None: ...

    assert router.cron("*/5 * * * *")(job) is job
    (task,) = router.tasks
    assert isinstance(task, Task)
    assert isinstance(task, CronTask)
    assert task.name.endswith(
        ":test_decorator_returns_the_function_and_adds_a_task.<locals>.job"
    )
    assert task.needs_default_backend
    assert task.resource_lock is None


def test_task_properties_for_the_manager() -> None:
    router = TaskRouter()
    lock = Lock("resource")
    backend = MemorySyncBackend(auto_register=False)
    router.cron("@daily", name="a", sync=lock)(lambda: None)
    router.cron("@daily", name="b", backend=backend)(lambda: None)
    router.cron("@daily", name="c", local=True)(lambda: None)
    a, b, c = router.tasks
    assert isinstance(a, CronTask)
    assert isinstance(b, CronTask)
    assert isinstance(c, CronTask)
    assert a.resource_lock is lock
    assert a.needs_default_backend
    assert not b.needs_default_backend
    assert not c.needs_default_backend
    assert a.key == "cron:a"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expression": "61 * * * *"}, "'61 \\* \\* \\* \\*'.*bad minute"),
        ({"timezone": "Europe/Atlantis"}, "timezone 'Europe/Atlantis'"),
        ({"timezone": 2}, "timezone must be"),
        ({"misfire_grace_seconds": -1}, "misfire_grace_seconds must be > 0"),
        ({"misfire_grace_seconds": 0}, "misfire_grace_seconds must be > 0"),
        ({"misfire_grace_seconds": "5"}, "misfire_grace_seconds must be a number"),
        ({"lease_seconds": 0}, "lease_seconds must be > 0"),
        ({"lease_seconds": -3}, "lease_seconds must be > 0"),
        ({"lease_seconds": float("inf")}, "lease_seconds must be finite"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"local": "yes"}, "local must be a bool"),
        ({"at_least_once": 1}, "at_least_once must be a bool"),
        ({"cancel_on_loss": None}, "cancel_on_loss must be a bool"),
        ({"sync": object()}, "sync must be a grelmicro.sync.Lock"),
        ({"backend": object()}, "backend must implement"),
        ({"worker": ""}, "worker must be"),
        ({"local": True, "at_least_once": True}, "at_least_once=True needs"),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs: dict[str, Any], match: str) -> None:
    router = TaskRouter()
    expression = kwargs.pop("expression", "* * * * *")
    with pytest.raises(SettingsValidationError, match=match):
        router.cron(expression, **kwargs)
    assert router.tasks == []


def test_not_a_callable() -> None:
    with pytest.raises(FunctionTypeError):
        TaskRouter().cron("* * * * *")(42)  # type: ignore[type-var]


# Starting -------------------------------------------------------------------------------


async def test_no_backend_at_start_raises() -> None:
    task = make_task(Recorder())
    with pytest.raises(BackendNotLoadedError, match="cron task 'job'"):
        await task()


async def test_backend_without_fire_claims_raises_at_start() -> None:
    class Plain:
        async def __aenter__(self) -> Plain:
            return self

        async def __aexit__(self, *args: object) -> None: ...

        async def acquire(self, *, name: str, token: str, duration: float) -> bool:
            return True

        async def release(self, *, name: str, token: str) -> bool:
            return True

        async def locked(self, *, name: str) -> bool:
            return False

        async def owned(self, *, name: str, token: str) -> bool:
            return False

    task = make_task(Recorder(), backend=Plain())
    with pytest.raises(FireClaimUnsupportedError, match="FireClaimBackend"):
        await task()


async def test_default_backend_is_resolved_at_start() -> None:
    recorder = Recorder()
    clock = FakeClock(T0)
    task = make_task(recorder, clock=clock)
    async with MemorySyncBackend() as backend, anyio.create_task_group() as tg:
        await ran_until(backend, T0)
        await tg.start(task)
        await clock.advance(T0 + 3)
        tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + 1, T0 + 2, T0 + 3]
    assert await backend.last_fire(name="cron:job") == (T0 + 3) * 1000


# Runs ----------------------------------------------------------------------------------


async def test_local_runs_every_fire_with_the_run_context() -> None:
    recorder = Recorder()
    clock = FakeClock(T0 + 0.5)
    task = make_task(recorder, "*/2 * * * * *", clock=clock, local=True)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 8.5)
        tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + 2, T0 + 4, T0 + 6, T0 + 8]
    run = recorder.runs[0]
    assert run.name == "job"
    assert run.scheduled_at == datetime.fromtimestamp(T0 + 2, UTC)
    assert run.scheduled_at.tzinfo is UTC
    assert run.fencing_token is None


async def test_sync_function_sees_its_run_in_the_worker_thread() -> None:
    seen: list[tuple[float, int | None]] = []

    def job() -> None:
        run = current_run()
        seen.append((run.scheduled_at.timestamp(), run.fencing_token))

    clock = FakeClock(T0)
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0)
    task = make_task(job, clock=clock, backend=backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 1)
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == [(T0 + 1, 2)]
    with pytest.raises(RuntimeError):
        current_run()


async def test_fast_depends_parameters_and_current_run_dependency() -> None:
    from fast_depends import Depends

    seen: list[Run] = []

    async def job(run: Run = Depends(current_run)) -> None:  # noqa: B008
        seen.append(run)

    clock = FakeClock(T0)
    task = make_task(job, clock=clock, local=True)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 1)
        tg.cancel_scope.cancel()
    assert [run.scheduled_at.timestamp() for run in seen] == [T0 + 1]


async def test_each_fire_runs_once_across_workers(
    metrics: list[tuple[str, ...]],
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0)
    clock = FakeClock(T0)
    recorders = [Recorder() for _ in range(3)]
    tasks = [
        make_task(r, clock=clock, backend=backend, worker=f"w{i}")
        for i, r in enumerate(recorders)
    ]
    async with anyio.create_task_group() as tg:
        for task in tasks:
            await tg.start(task)
        await clock.advance(T0 + 20)
        tg.cancel_scope.cancel()
    runs = [run for r in recorders for run in r.runs]
    assert sorted(run.scheduled_at.timestamp() for run in runs) == [
        T0 + i for i in range(1, 21)
    ]
    tokens = [
        run.fencing_token or 0 for run in sorted(runs, key=lambda r: r.scheduled_at)
    ]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 20
    assert metrics.count(("lock", "cron", "acquired")) == 20
    # The other workers found each fire they tried already claimed.
    assert metrics.count(("lock", "cron", "busy")) >= 2
    assert metrics.count(("finish", "job", "success")) == 20


async def test_dst_days_fire_once_per_wall_clock_match() -> None:
    """Through the task loop: a spring-forward then a fall-back day in Zurich."""
    for day_start, day_end, expected in [
        (
            datetime(2026, 3, 29, 0, 0, tzinfo=ZURICH),
            datetime(2026, 3, 29, 3, 45, tzinfo=ZURICH),
            ["00:30+01:00", "01:30+01:00", "03:00+02:00", "03:30+02:00"],
        ),
        (
            datetime(2026, 10, 25, 0, 0, tzinfo=ZURICH),
            datetime(2026, 10, 25, 3, 45, tzinfo=ZURICH),
            ["00:30+02:00", "01:30+02:00", "02:30+02:00", "03:30+01:00"],
        ),
    ]:
        recorder = Recorder()
        start = day_start.timestamp()
        clock = FakeClock(start)
        backend = MemorySyncBackend(auto_register=False)
        task = make_task(
            recorder,
            "30 * * * *",
            clock=clock,
            backend=backend,
            timezone="Europe/Zurich",
        )
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(day_end.timestamp())
            tg.cancel_scope.cancel()
        assert [
            run.scheduled_at.astimezone(ZURICH).isoformat(timespec="minutes")[11:]
            for run in recorder.runs
        ] == expected


async def test_function_errors_are_logged_and_do_not_stop_the_task(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    calls: list[float] = []

    async def job() -> None:
        calls.append(current_run().scheduled_at.timestamp())
        msg = "boom"
        raise ValueError(msg)

    clock = FakeClock(T0)
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0)
    task = make_task(job, clock=clock, backend=backend)
    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0 + 2)
            tg.cancel_scope.cancel()
    assert calls == [T0 + 1, T0 + 2]
    errors = [r for r in caplog.records if r.message == "Task execution error: job"]
    assert len(errors) == 2
    assert errors[0].exc_info is not None
    assert metrics.count(("finish", "job", "error")) == 2


async def test_backend_errors_are_logged_and_do_not_stop_the_task(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    recorder = Recorder()
    backend = ScriptedBackend()
    await ran_until(backend, T0)
    clock = FakeClock(T0)
    task = make_task(recorder, clock=clock, backend=backend)
    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            backend.fail_claims = True
            await clock.advance(T0 + 2)
            backend.fail_claims = False
            await clock.advance(T0 + 3)
            tg.cancel_scope.cancel()
    # The fires whose claims failed were never claimed: once the backend
    # answers, the next claim finds them unclaimed (claims stay in order) and
    # this worker claims and runs them, in order, before T0 + 3.
    assert recorder.fires == [T0 + 1, T0 + 2, T0 + 3]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].message == "Task synchronization error: job"
    assert "cron:job" in str(errors[0].exc_info[1])  # type: ignore[index]
    assert ("lock", "cron", "error") in metrics


async def test_busy_resource_lock_skips_the_fire(
    metrics: list[tuple[str, ...]],
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0)
    lock = Lock("resource", backend=backend)
    recorder = Recorder()
    clock = FakeClock(T0)
    task = make_task(recorder, clock=clock, backend=backend, sync=lock)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 1)
        await lock.acquire()
        await clock.advance(T0 + 2)
        await lock.release()
        await clock.advance(T0 + 3)
        tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + 1, T0 + 3]
    assert ("skipped", "job") in metrics
    assert not await lock.locked()


# Missed fires ---------------------------------------------------------------------------


async def test_first_start_runs_no_missed_fire() -> None:
    recorder = Recorder()
    backend = MemorySyncBackend(auto_register=False)
    clock = FakeClock(T0 + 34.5)  # the fire of T0 + 30 is 4.5 s old
    task = make_task(recorder, "*/10 * * * * *", clock=clock, backend=backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 39)
        tg.cancel_scope.cancel()
    assert recorder.runs == []


class ClaimedFirst(MemorySyncBackend):
    """Nothing is claimed when the task reads (twice); a worker with a slower
    clock claims `fire` as its very first claim an instant before this
    worker's first claim arrives (the two first claims race)."""

    def __init__(self, fire: float) -> None:
        super().__init__(auto_register=False)
        self.fire = fire
        self.raced = False
        self.behind = 0

    async def claim_fire(
        self,
        *,
        name: str,
        fire: int,
        token: str,
        lease: float | None,
        after: int | None = None,
    ) -> int | None:
        if not self.raced:
            self.raced = True
            assert await super().claim_fire(
                name=name, fire=round(self.fire * 1000), token="slow", lease=None
            )
        answer = await super().claim_fire(
            name=name, fire=fire, token=token, lease=lease, after=after
        )
        self.behind += answer == FIRE_BEHIND
        return answer


async def test_simultaneous_first_claims_leave_no_fire_unclaimed() -> None:
    """The task's very first start on two workers with clocks 3.5 s apart:
    the slow one's first claim (T0 + 2) lands just before the fast one's
    (T0 + 6, the first fire of its window). The fast worker's claim carries
    the fire before it, finds it unclaimed, and the fast worker claims and
    runs the fires from T0 + 3 in order: none is left between the two first
    claims (a claim that passed over T0 + 3 to T0 + 5 would leave them
    unclaimable)."""
    backend = ClaimedFirst(T0 + 2)
    recorder = Recorder()
    clock = FakeClock(T0 + 5.5)  # its window begins at T0 + 5
    task = make_task(recorder, clock=clock, backend=backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 10)
        tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + i for i in range(3, 11)]
    assert backend.behind == 1
    assert await backend.last_fire(name="cron:job") == (T0 + 10) * 1000


async def test_a_fire_due_less_than_the_window_ago_is_on_time() -> None:
    """A fire due just before the very first start is on time; a fire due 3 s
    ago after an outage is the latest missed one: either way a starting
    worker runs it, once, without WARNING."""
    for stored, now in ((None, T0 + 30.3), (T0 + 20, T0 + 33)):
        backend = MemorySyncBackend(auto_register=False)
        if stored is not None:
            await ran_until(backend, stored)
        recorder = Recorder()
        clock = FakeClock(now)
        task = make_task(recorder, "*/10 * * * * *", clock=clock, backend=backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0 + 39)
            tg.cancel_scope.cancel()
        assert recorder.fires == [T0 + 30], stored


async def test_a_worker_starting_ahead_never_claims_past_unclaimed_fires() -> None:
    """Clocks skewed: a worker 1.5 s ahead starts while the fleet, 1.5 s
    behind, has claimed up to T0 - 1; it claims T0 and T0 + 1 before T0 + 2."""
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0 - 1)
    ahead = Recorder()
    clock = FakeClock(T0 + 1.6)
    task = make_task(ahead, clock=clock, backend=backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 3)
        tg.cancel_scope.cancel()
    assert ahead.fires == [T0, T0 + 1, T0 + 2, T0 + 3]


async def test_latest_missed_fire_runs_once_and_older_ones_are_counted(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    # The fleet last claimed the fire of T0, then went down for 35 s.
    assert await backend.claim_fire(
        name="cron:job", fire=int(T0 * 1000), token="old", lease=None
    )
    clock = FakeClock(T0 + 35)
    recorders = [Recorder(), Recorder()]
    tasks = [
        make_task(r, "*/10 * * * * *", clock=clock, backend=backend) for r in recorders
    ]
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            for task in tasks:
                await tg.start(task)
            await clock.advance(T0 + 41)
            tg.cancel_scope.cancel()
    runs = sorted(f for r in recorders for f in r.fires)
    assert runs == [T0 + 30, T0 + 40]  # the latest missed one, then on schedule
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missed 2 fire(s)" in warnings[0].message
    assert "job" in warnings[0].message
    assert metrics.count(("missed", "job")) == 2


async def test_missed_fire_older_than_the_grace_does_not_run(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.claim_fire(
        name="cron:job", fire=int(T0 * 1000), token="old", lease=None
    )
    clock = FakeClock(T0 + 35)
    recorders = [Recorder(), Recorder()]
    tasks = [
        make_task(
            r,
            "*/10 * * * * *",
            clock=clock,
            backend=backend,
            misfire_grace_seconds=4,
        )
        for r in recorders
    ]
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            for task in tasks:
                await tg.start(task)
            await clock.advance(T0 + 41)
            tg.cancel_scope.cancel()
    assert sorted(f for r in recorders for f in r.fires) == [T0 + 40]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "missed 3 fire(s)" in warnings[0].message
    assert "misfire_grace_seconds=4" in warnings[0].message
    assert metrics.count(("missed", "job")) == 3


async def test_missed_fire_within_the_grace_runs() -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.claim_fire(
        name="cron:job", fire=int(T0 * 1000), token="old", lease=None
    )
    recorder = Recorder()
    clock = FakeClock(T0 + 13)
    task = make_task(
        recorder,
        "*/10 * * * * *",
        clock=clock,
        backend=backend,
        misfire_grace_seconds=4,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 14)
        tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + 10]


async def test_restart_with_nothing_missed_runs_nothing_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.claim_fire(
        name="cron:job", fire=int((T0 + 30) * 1000), token="old", lease=None
    )
    recorder = Recorder()
    clock = FakeClock(T0 + 35)
    task = make_task(recorder, "*/10 * * * * *", clock=clock, backend=backend)
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0 + 39)
            tg.cancel_scope.cancel()
    assert recorder.runs == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# At least once -----------------------------------------------------------------------------


async def test_at_least_once_reruns_a_fire_whose_claimant_died(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0 - 1)
    clock = FakeClock(T0 - 1)
    recorder = Recorder()
    task = make_task(
        recorder,
        clock=clock,
        backend=backend,
        at_least_once=True,
        lease_seconds=0.4,
        retry_seconds=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        # A worker that then dies claims the fire of T0 first.
        dead_fence = await backend.claim_fire(
            name="cron:job", fire=int(T0 * 1000), token="dead", lease=0.4
        )
        assert dead_fence is not None
        claimed = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
            await clock.advance(T0)
            with anyio.fail_after(3):
                while not recorder.runs:
                    await anyio.sleep(0.01)
        rerun_after = time.monotonic() - claimed
        tg.cancel_scope.cancel()
    (run,) = recorder.runs
    assert run.scheduled_at.timestamp() == T0
    assert run.fencing_token is not None
    assert run.fencing_token > (dead_fence or 0)
    assert 0.4 <= rerun_after <= 0.4 + 0.05 + 0.5
    assert any("taken over" in r.message for r in caplog.records)


async def test_at_least_once_completed_fire_never_runs_again() -> None:
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0 - 1)
    clock = FakeClock(T0 - 1)
    recorders = [Recorder(work=0.6), Recorder(work=0.6)]
    tasks = [
        make_task(
            r,
            clock=clock,
            backend=backend,
            at_least_once=True,
            lease_seconds=0.3,
            retry_seconds=0.05,
        )
        for r in recorders
    ]
    async with anyio.create_task_group() as tg:
        for task in tasks:
            await tg.start(task)
        await clock.advance(T0)
        await anyio.sleep(1.5)  # the run (kept past its first lease), then idle
        tg.cancel_scope.cancel()
    assert sorted(f for r in recorders for f in r.fires) == [T0]


async def test_at_least_once_lost_lease_cancels_the_run(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    backend = ScriptedBackend()
    await ran_until(backend, T0 - 1)
    clock = FakeClock(T0 - 1)
    finished: list[bool] = []

    async def job() -> None:
        await anyio.sleep(2)
        finished.append(True)

    task = make_task(
        job, clock=clock, backend=backend, at_least_once=True, lease_seconds=0.3
    )
    backend.refuse_keeps = True
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0)
            await anyio.sleep(0.6)
            tg.cancel_scope.cancel()
    assert finished == []
    assert next(
        r.message for r in caplog.records if r.levelno == logging.WARNING
    ).startswith("Task lock lost while running: job")
    assert ("finish", "job", "lost") in metrics


async def test_at_least_once_lost_lease_without_cancel_marks_the_run_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = ScriptedBackend()
    await ran_until(backend, T0 - 1)
    clock = FakeClock(T0 - 1)
    seen: list[bool] = []

    async def job() -> None:
        run = current_run()
        await run.wait_lost()
        seen.append(run.lost)

    task = make_task(
        job,
        clock=clock,
        backend=backend,
        at_least_once=True,
        lease_seconds=0.3,
        cancel_on_loss=False,
    )
    backend.refuse_keeps = True
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0)
            with anyio.fail_after(3):
                while not seen:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert seen == [True]
    assert any(
        r.message.startswith("Task lock lost while running: job")
        for r in caplog.records
    )


# With a manager ---------------------------------------------------------------------------


async def test_with_a_manager_and_the_wall_clock() -> None:
    seen: list[Run] = []
    manager = TaskManager()

    @manager.cron("* * * * * *", name="tick")
    async def tick() -> None:
        seen.append(current_run())

    backend = CountingBackend()
    async with backend:
        with anyio.move_on_after(2.2):
            async with manager:
                await anyio.sleep_forever()
    # The first start also runs the fires due in the last 4 s (on time).
    fires = [run.scheduled_at.timestamp() for run in seen]
    assert 1 <= len(fires) <= 3 + 4
    assert fires == [fires[0] + i for i in range(len(fires))]
    for run in seen:
        assert run.scheduled_at.microsecond == 0
        assert run.fencing_token is not None


async def test_a_just_due_fire_beyond_the_grace_is_left_to_live_workers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A starting worker whose clock runs ahead must not take a fire away
    from live workers whose clocks are behind: within the 2 s of tolerated
    skew, a fire too old for its grace is neither run nor claimed by it. It
    cannot tell this from a short outage, so it reports the fire as missed
    (one WARNING), saying that it did not run it here."""
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.claim_fire(
        name="cron:job", fire=int((T0 + 20) * 1000), token="live", lease=None
    )
    starting = Recorder()
    clock = FakeClock(T0 + 31.5)  # 1.5 s past the fire of T0 + 30
    task = make_task(
        starting,
        "*/10 * * * * *",
        clock=clock,
        backend=backend,
        misfire_grace_seconds=0.5,
    )
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await wait_all_tasks_blocked()
            # A live worker, its clock 1.5 s behind, claims the fire on time.
            live = await backend.claim_fire(
                name="cron:job", fire=int((T0 + 30) * 1000), token="live", lease=None
            )
            tg.cancel_scope.cancel()
    assert live is not None
    assert starting.runs == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "missed 1 fire(s)" in warnings[0]
    assert "misfire_grace_seconds=0.5; not run here" in warnings[0]


async def test_a_short_outage_reports_the_fires_too_old_for_the_grace(
    caplog: pytest.LogCaptureFixture, metrics: list[tuple[str, ...]]
) -> None:
    """Every worker down for 5 s (shorter than the 8 s after which an
    unclaimed fire surely means an outage): at restart, the fires older than
    the grace do not run and one WARNING counts them; the fire within the
    grace and the next fires run. A stalled loop later skips a fire for the
    grace without a WARNING (other workers most likely ran it)."""
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0)
    recorder = Recorder()
    clock = FakeClock(T0 + 5.2)  # T0 + 1 .. T0 + 4 are over 1 s old
    task = make_task(recorder, clock=clock, backend=backend, misfire_grace_seconds=1)
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with anyio.create_task_group() as tg:
            await tg.start(task)
            await clock.advance(T0 + 7)
            # The loop stalls 2.5 s: the fire of T0 + 8 is too old when it wakes.
            clock.t = T0 + 10.5
            await clock.advance(T0 + 11)
            tg.cancel_scope.cancel()
    assert recorder.fires == [T0 + 5, T0 + 6, T0 + 7, T0 + 10, T0 + 11]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "missed 4 fire(s)" in warnings[0]
    assert "the latest one, due " in warnings[0]
    assert "misfire_grace_seconds=1" in warnings[0]
    assert metrics.count(("missed", "job")) == 4


async def test_a_watcher_without_backend_answers_stops_watching(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the time the backend remembers a completed fire, a takeover
    could run it again: a watcher that cannot reach the backend gives up."""
    monkeypatch.setattr(_cron, "WATCH_BLIND_LIMIT", 0.3)
    backend = ScriptedBackend()
    await ran_until(backend, T0 - 1)
    clock = FakeClock(T0 - 1)
    recorder = Recorder()
    task = make_task(
        recorder,
        clock=clock,
        backend=backend,
        at_least_once=True,
        lease_seconds=0.2,
        retry_seconds=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        assert await backend.claim_fire(
            name="cron:job", fire=int(T0 * 1000), token="other", lease=0.2
        )
        backend.fail_retakes = True
        with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
            await clock.advance(T0)
            await anyio.sleep(0.6)
            backend.fail_retakes = False  # answers again, too late
            await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert recorder.runs == []
    assert any(
        r.message.startswith("Cron fire no longer watched: job") for r in caplog.records
    )


async def test_a_worker_starting_while_another_works_through_its_window() -> None:
    """Another worker, its clock 4 s behind (the most two clocks may differ),
    has just claimed the first fire of its on-time window (T0 - 2, its clock
    at T0 - 2.5): this worker continues in order from there instead of
    taking the gap for an outage."""
    backend = MemorySyncBackend(auto_register=False)
    await ran_until(backend, T0 - 2)
    ahead = Recorder()
    clock = FakeClock(T0 + 1.5)
    task = make_task(ahead, clock=clock, backend=backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await clock.advance(T0 + 2)
        tg.cancel_scope.cancel()
    assert ahead.fires == [T0 + i for i in range(-1, 3)]
