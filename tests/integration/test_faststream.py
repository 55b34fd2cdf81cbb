"""FastStream integration on real servers: the broker's connection is shared.

Each FastStream app here is real (a RedisBroker or NatsBroker connected to the
session's server), run either like `faststream run` does (`app.run()`) or
under FastStream's `TestApp`. Locks, tasks and elections get unique names, so
tests never see each other's keys.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from uuid import uuid4

import anyio
import anyio.to_thread
import pytest
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from faststream import ContextRepo, FastStream, TestApp
from faststream.nats import NatsBroker, NatsRouter
from faststream.redis import RedisBroker, RedisRouter

from grelmicro.brokers import BrokerNotConnectedError, backend_for
from grelmicro.errors import GrelmicroError
from grelmicro.sync import LeaderElection, Lock
from grelmicro.sync.errors import SyncSettingsValidationError
from grelmicro.sync.redis import RedisSyncBackend
from grelmicro.task import TaskManager

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KINDS = ["redis", "nats"]


def nats_backend_available() -> bool:
    return importlib.util.find_spec("grelmicro.sync.nats") is not None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:10]}"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "nats" and not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    return str(request.param)


@pytest.fixture
def url(request: pytest.FixtureRequest, kind: str) -> str:
    return str(request.getfixturevalue(f"{kind}_url"))


def make_broker(kind: str, url: str, *, name: str | None = None) -> Any:
    """A broker without FastStream's logging (quiet tests)."""
    if kind == "redis":
        return RedisBroker(url, client_name=name, logger=None)
    return NatsBroker(url, name=name, logger=None)


def lifespan_for(manager: TaskManager | None) -> Any:
    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        if manager is None:
            yield
            return
        async with manager:
            yield

    return lifespan


@asynccontextmanager
async def running(app: FastStream) -> AsyncIterator[FastStream]:
    """Run `app.run()` in the background, as `faststream run` does, then exit it."""
    async with anyio.create_task_group() as group:
        group.start_soon(partial(app.run, sleep_time=0.01))
        await wait_until(lambda: bool(getattr(app, "running", False)), timeout=10)
        try:
            yield app
        finally:
            app.exit()


async def run_until_stopped(
    app: FastStream, *, task_status: TaskStatus[anyio.Event] = TASK_STATUS_IGNORED
) -> None:
    """Run `app.run()` until `app.exit()`; started with the event set once it ended."""
    stopped = anyio.Event()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(partial(app.run, sleep_time=0.01))
            await wait_until(lambda: bool(getattr(app, "running", False)), timeout=10)
            task_status.started(stopped)
    finally:
        stopped.set()


async def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.02
) -> float:
    """Poll `predicate` until true; the seconds it took (fails after `timeout`)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await anyio.sleep(interval)
    return time.monotonic() - start


# backend_for -------------------------------------------------------------------


def test_backend_for_redis_broker() -> None:
    broker = RedisBroker("redis://127.0.0.1:1", logger=None)
    backend = backend_for(broker)
    assert isinstance(backend, RedisSyncBackend)
    assert backend.prefix == ""
    prefixed = backend_for(broker, prefix="svc:")
    assert isinstance(prefixed, RedisSyncBackend)
    assert prefixed.prefix == "svc:"


def test_backend_for_nats_broker() -> None:
    if not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    from grelmicro.sync.nats import NatsSyncBackend

    broker = NatsBroker("nats://127.0.0.1:1", logger=None)
    backend = backend_for(broker)
    assert isinstance(backend, NatsSyncBackend)
    assert backend.bucket == "grelmicro"
    other = backend_for(broker, bucket="svc-locks")
    assert isinstance(other, NatsSyncBackend)
    assert other.bucket == "svc-locks"


def test_backend_for_is_not_registered_as_default() -> None:
    from grelmicro.sync._backends import loaded_backends

    backend = backend_for(RedisBroker("redis://127.0.0.1:1", logger=None))
    assert backend not in loaded_backends()


@pytest.mark.parametrize(
    "broker",
    [
        object(),
        "redis://localhost:6379",
        RedisRouter(),  # a FastStream router, not a broker
        NatsRouter(),
        RedisSyncBackend("redis://localhost:6379", auto_register=False),
    ],
    ids=["object", "url", "redis-router", "nats-router", "sync-backend"],
)
def test_backend_for_rejects_other_types(broker: object) -> None:
    with pytest.raises(TypeError) as caught:
        backend_for(broker)
    message = str(caught.value)
    assert "faststream.redis.RedisBroker" in message
    assert "faststream.nats.NatsBroker" in message
    assert type(broker).__name__ in message


def test_backend_for_rejects_the_other_brokers_option() -> None:
    with pytest.raises(SyncSettingsValidationError, match="bucket") as caught:
        backend_for(RedisBroker("redis://127.0.0.1:1", logger=None), bucket="b")
    assert "prefix=" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(SyncSettingsValidationError, match="prefix") as caught:
        backend_for(NatsBroker("nats://127.0.0.1:1", logger=None), prefix="p:")
    assert "bucket=" in str(caught.value)


def test_task_manager_builds_the_brokers_backend() -> None:
    manager = TaskManager(broker=RedisBroker("redis://127.0.0.1:1", logger=None))
    assert isinstance(manager.backend, RedisSyncBackend)
    with pytest.raises(TypeError, match="RedisBroker"):
        TaskManager(broker=object())


def test_brokers_without_faststream() -> None:
    """grelmicro.brokers imports without FastStream; the broker modules say what to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["faststream"] = None  # as if FastStream were not installed
        import grelmicro.brokers
        from grelmicro.errors import DependencyNotFoundError
        try:
            grelmicro.brokers.backend_for(object())
        except TypeError as exc:
            print("TYPE", exc)
        for module in ("grelmicro.brokers.redis", "grelmicro.brokers.nats"):
            try:
                __import__(module)
            except DependencyNotFoundError as exc:
                print("MISSING", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TYPE ")
    assert "pip install 'grelmicro[faststream]'" in lines[0]
    missing = [line for line in lines if line.startswith("MISSING")]
    assert len(missing) == 2
    assert all("grelmicro[faststream]" in line for line in missing)


# The connection is shared ----------------------------------------------------------


async def redis_connections(url: str, client_name: str) -> int:
    """Connections named `client_name` in Redis `CLIENT LIST`."""
    from redis.asyncio import Redis

    admin = Redis.from_url(url)
    try:
        clients = await admin.client_list()
    finally:
        await admin.aclose()
    return sum(1 for client in clients if client.get("name") == client_name)


def nats_connections(monitor_url: str, name: str) -> int:
    """Client connections named `name` in the NATS monitoring `/connz`."""
    with urllib.request.urlopen(f"{monitor_url}/connz?limit=1024", timeout=5) as reply:
        connz = json.load(reply)
    return sum(1 for conn in connz.get("connections") or [] if conn.get("name") == name)


def coordinated_app(
    broker: Any, *, with_tasks: bool, auto_start: bool = True
) -> tuple[FastStream, TaskManager, dict[str, Any]]:
    """An app with a subscriber; with_tasks adds locked tasks and an election."""
    seen: dict[str, Any] = {"messages": 0, "runs": 0, "resource": 0}
    manager = TaskManager(broker=broker, auto_start=auto_start)
    leader = LeaderElection(
        unique("count-leader"),
        lease_duration=5,
        renew_deadline=3,
        retry_interval=0.1,
        backend_timeout=2,
    )
    manager.add_task(leader)
    seen["leader"] = leader

    @manager.interval(seconds=0.1, max_lock_seconds=5, name=unique("count-locked"))
    async def locked() -> None:
        seen["runs"] += 1

    @manager.interval(seconds=0.1, leader=leader, name=unique("count-leader-only"))
    async def leader_only() -> None:
        seen["runs"] += 1

    @manager.interval(
        seconds=0.1, max_lock_seconds=5, sync=Lock(unique("count-resource"))
    )
    async def with_resource() -> None:
        seen["resource"] += 1

    subject = unique("count-subject")

    @broker.subscriber(subject)
    async def on_message(message: str) -> None:
        seen["messages"] += 1

    app = FastStream(broker, lifespan=lifespan_for(manager if with_tasks else None))
    seen["subject"] = subject
    return app, manager, seen


async def measure_redis(url: str, *, with_tasks: bool) -> int:
    """Run the app; its connections to Redis once everything has run."""
    name = unique("grelmicro-count")
    broker = make_broker("redis", url, name=name)
    app, manager, seen = coordinated_app(
        broker, with_tasks=with_tasks, auto_start=False
    )

    @app.after_startup
    async def publish_then_start() -> None:
        await broker.publish("hello", seen["subject"])
        if with_tasks:
            await manager.start()

    async with running(app):
        await wait_until(lambda: seen["messages"] >= 1, timeout=10)
        if with_tasks:
            await wait_until(
                lambda: seen["runs"] >= 10 and seen["resource"] >= 3, timeout=10
            )
            assert seen["leader"].is_leader()
        else:
            await anyio.sleep(0.5)
        count = await redis_connections(url, name)
    assert await redis_connections(url, name) == 0
    return count


async def test_redis_connection_count_is_the_same_with_and_without_tasks(
    redis_url: str,
) -> None:
    """Same app (a subscriber, one publish), with and without grelmicro tasks.

    The app's pool holds its subscriber's connection and the one its publish
    used; grelmicro's commands reuse that idle pool connection.
    """
    without_tasks = await measure_redis(redis_url, with_tasks=False)
    with_tasks = await measure_redis(redis_url, with_tasks=True)
    assert with_tasks == without_tasks
    assert without_tasks == 2  # the subscriber's connection and the pool's one


async def test_redis_tasks_use_one_pool_connection_at_a_time(redis_url: str) -> None:
    """Many tasks and an election firing together still use one pool connection.

    redis-py opens a pool connection per concurrent command: grelmicro sends
    its commands one at a time, so it never needs more than one.
    """
    name = unique("grelmicro-count")
    broker = make_broker("redis", redis_url, name=name)
    app, manager, seen = coordinated_app(broker, with_tasks=True)
    for index in range(10):

        @manager.interval(
            seconds=0.05, max_lock_seconds=5, name=unique(f"count-burst-{index}")
        )
        async def burst() -> None:
            seen["runs"] += 1

    async with running(app):
        await wait_until(lambda: seen["runs"] >= 50, timeout=10)
        # The subscriber's connection plus one pool connection for grelmicro.
        assert await redis_connections(redis_url, name) == 2


async def measure_nats(url: str, monitor_url: str, *, with_tasks: bool) -> int:
    """Run the app under `app.run()`; its connections to NATS once everything ran."""
    name = unique("grelmicro-count")
    broker = make_broker("nats", url, name=name)
    app, _, seen = coordinated_app(broker, with_tasks=with_tasks)

    @app.after_startup
    async def publish() -> None:
        await broker.publish("hello", seen["subject"])

    async with running(app):
        await wait_until(lambda: seen["messages"] >= 1, timeout=10)
        if with_tasks:
            await wait_until(
                lambda: seen["runs"] >= 10 and seen["resource"] >= 3, timeout=10
            )
            assert seen["leader"].is_leader()
        else:
            await anyio.sleep(0.5)
        count = await anyio.to_thread.run_sync(nats_connections, monitor_url, name)
    await wait_until(lambda: nats_connections(monitor_url, name) == 0, timeout=5)
    return count


async def test_nats_connection_count_is_the_same_with_and_without_tasks(
    nats_server: Any,
) -> None:
    """One NATS connection per app, with or without tasks, under `app.run()`.

    The tasks start in the lifespan, before FastStream connects the broker:
    the backend waits for FastStream's own connection instead of racing it.
    """
    if not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    monitor_url = nats_server.monitor_url
    if monitor_url is None:
        pytest.skip("the NATS server has no monitoring endpoint (external NATS_URL)")
    counts = {
        with_tasks: await measure_nats(
            nats_server.url, monitor_url, with_tasks=with_tasks
        )
        for with_tasks in (False, True)
    }
    assert counts == {False: 1, True: 1}


async def test_manager_entered_before_the_user_starts_the_broker(
    nats_server: Any,
) -> None:
    """No application: the user starts the broker after entering the manager."""
    if not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    monitor_url = nats_server.monitor_url
    name = unique("grelmicro-plain")
    broker = make_broker("nats", nats_server.url, name=name)
    manager = TaskManager(broker=broker)
    runs = 0

    @manager.interval(seconds=0.1, max_lock_seconds=5, name=unique("plain"))
    async def locked() -> None:
        nonlocal runs
        runs += 1

    async with manager:
        await anyio.sleep(0.2)  # the tasks already wait for the connection
        await broker.start()
        try:
            await wait_until(lambda: runs >= 3, timeout=10)
            if monitor_url is not None:
                assert nats_connections(monitor_url, name) == 1
        finally:
            await broker.stop()


async def test_backend_fails_fast_once_the_broker_is_closed(redis_url: str) -> None:
    broker = make_broker("redis", redis_url)
    backend = backend_for(broker)
    await broker.start()
    key = unique("closed")
    assert await backend.acquire(name=key, token="t", duration=5)
    assert await backend.release(name=key, token="t")
    await broker.stop()
    with anyio.fail_after(1), pytest.raises(BrokerNotConnectedError, match="closed"):
        await backend.acquire(name=key, token="t", duration=5)
    assert issubclass(BrokerNotConnectedError, GrelmicroError)


# Coordination between apps ----------------------------------------------------------


async def test_locked_task_runs_once_per_interval_across_two_apps(
    kind: str, url: str
) -> None:
    interval = 1.0
    task_name = unique("two-apps")
    runs: list[tuple[float, str]] = []
    apps = []
    for app_name in ("a", "b"):
        broker = make_broker(kind, url)
        manager = TaskManager(broker=broker)

        @manager.interval(seconds=interval, max_lock_seconds=10, name=task_name)
        async def job(app_name: str = app_name) -> None:
            runs.append((time.monotonic(), app_name))

        apps.append(FastStream(broker, lifespan=lifespan_for(manager), logger=None))

    async with TestApp(apps[0]), TestApp(apps[1]):
        await wait_until(lambda: len(runs) >= 4, timeout=15)
    times = [at for at, _ in runs]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # The lock holds each run for `interval` seconds (min_lock_seconds): two
    # runs of one interval would be a few milliseconds apart.
    assert min(gaps) > interval * 0.9, runs
    assert {app for _, app in runs} <= {"a", "b"}


async def test_task_publishes_to_a_subscriber_of_the_same_app(
    kind: str, url: str
) -> None:
    broker = make_broker(kind, url)
    manager = TaskManager(broker=broker)
    subject = unique("publish")
    received: list[dict[str, Any]] = []

    @manager.interval(seconds=0.2, max_lock_seconds=5, name=unique("publisher"))
    async def publisher() -> None:
        await broker.publish({"n": len(received)}, subject)

    @broker.subscriber(subject)
    async def on_message(message: dict[str, Any]) -> None:
        received.append(message)

    app = FastStream(broker, lifespan=lifespan_for(manager), logger=None)
    async with TestApp(app):
        await wait_until(lambda: len(received) >= 2, timeout=10)
    assert received[0] == {"n": 0}


async def test_leaving_app_hands_over_leadership_and_resource_lock(
    kind: str, url: str
) -> None:
    """When one app stops, the other takes over within a retry_interval.

    The lease (10 s) and the resource lock's lease (60 s) are far longer than
    the bound: the stopping app released both over its broker connection,
    before FastStream closed the broker.

    Two apps in one process share the process-wide default backend, so each
    app's primitives are given their own manager's broker backend: the first
    app's releases must go over the first app's connection, as they would in
    its own process.
    """
    retry_interval = 0.2
    election = unique("handover")
    resource = unique("handover-resource")
    task_name = unique("handover-task")
    holders: dict[str, list[str]] = {"resource": []}
    leaders: dict[str, LeaderElection] = {}
    apps: dict[str, FastStream] = {}
    for app_name in ("first", "second"):
        broker = make_broker(kind, url)
        manager = TaskManager(broker=broker)
        leader = LeaderElection(
            election,
            backend=manager.backend,
            lease_duration=10,
            renew_deadline=5,
            retry_interval=retry_interval,
            backend_timeout=2,
        )
        manager.add_task(leader)
        leaders[app_name] = leader

        # Holds the resource lock until its app stops (the task is cancelled).
        @manager.interval(
            seconds=0.1,
            sync=Lock(resource, backend=manager.backend),
            name=task_name + app_name,
        )
        async def hold_resource(app_name: str = app_name) -> None:
            holders["resource"].append(app_name)
            await anyio.sleep_forever()

        apps[app_name] = FastStream(broker, lifespan=lifespan_for(manager), logger=None)

    async with anyio.create_task_group() as group:
        # Each app in its own task, as in its own process: one stops, one stays.
        first_stopped = await group.start(run_until_stopped, apps["first"])
        await wait_until(leaders["first"].is_leader, timeout=10)
        await wait_until(lambda: holders["resource"] == ["first"], timeout=10)
        await group.start(run_until_stopped, apps["second"])
        await anyio.sleep(retry_interval * 3)
        assert not leaders["second"].is_leader()
        assert holders["resource"] == ["first"]

        stopped_at = time.monotonic()
        apps["first"].exit()
        await first_stopped.wait()
        assert not leaders["first"].is_leader()
        await wait_until(leaders["second"].is_leader, timeout=5)
        leader_took = time.monotonic() - stopped_at
        await wait_until(lambda: holders["resource"][-1:] == ["second"], timeout=5)
        lock_took = time.monotonic() - stopped_at
        apps["second"].exit()
    # Bounds far below the leases, generous for a loaded machine.
    assert leader_took < 3, leader_took
    assert lock_took < 3, lock_took


async def test_stop_tasks_releases_before_a_hand_stopped_broker_closes(
    redis_url: str,
) -> None:
    """Without an application, `stop_tasks` is the hook to call before `broker.stop()`."""
    from grelmicro.brokers import stop_tasks

    broker = make_broker("redis", redis_url)
    manager = TaskManager(broker=broker)
    leader = LeaderElection(
        unique("hand-stopped"),
        lease_duration=10,
        renew_deadline=5,
        retry_interval=0.1,
        backend_timeout=2,
    )
    manager.add_task(leader)
    await broker.start()
    async with manager:
        await wait_until(leader.is_leader, timeout=10)
        await stop_tasks(manager)
        assert not leader.is_leader()
        await broker.stop()
    other = RedisSyncBackend(redis_url, auto_register=False)
    async with other:
        assert not await other.locked(name=leader.key)


async def test_attempts_before_the_app_connects_skip_quietly(
    kind: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9, case 9: the lifespan runs before FastStream connects the
    broker. Coordinated attempts made meanwhile skip at DEBUG (no ERROR, no
    full backend timeout each); runs start once the app connects."""
    import logging

    broker = make_broker(kind, url)
    manager = TaskManager(broker=broker)
    app = FastStream(broker, lifespan=lifespan_for(None))
    runs: list[float] = []

    # max_lock_seconds=2 bounds each backend call to 2 s: a call that waited
    # for the connection until its timeout would log an ERROR within the
    # 2.5 s below.
    @manager.interval(seconds=0.1, max_lock_seconds=2, name=unique("early"))
    async def early() -> None:
        runs.append(time.monotonic())

    with caplog.at_level(logging.DEBUG, logger="grelmicro"):
        async with manager:
            # The app owns the broker but has not started it: attempts wait a
            # little, then skip quietly.
            await anyio.sleep(2.5)
            assert not runs
            async with running(app):
                await wait_until(lambda: bool(runs), timeout=10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert any("not connected yet" in r.getMessage() for r in caplog.records)
