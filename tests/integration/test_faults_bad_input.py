"""Bad input: every invalid argument fails at construction or decoration time.

The error is raised before anything runs, names the parameter (or the URL,
broker type or bucket) and what is wrong with it, and leaves no task behind:
a failed decoration adds nothing to the router, a failed manager never
starts. No server is needed except for the backend-less manager case, which
checks that a task with no backend anywhere never runs its function.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from grelmicro.errors import GrelmicroError
from grelmicro.sync import LeaderElection, Lock, TaskLock
from grelmicro.sync.errors import BackendNotLoadedError
from grelmicro.task import TaskManager, TaskRouter
from tests.integration.faults.targets import require_kind

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def job() -> None:
    """A task function."""


def decorate(**kwargs: Any) -> Callable[[], Any]:
    """Decorate `job` on a fresh router with `kwargs`; check nothing was added."""

    def attempt() -> None:
        router = TaskRouter()
        try:
            router.interval(**kwargs)(job)
        finally:
            assert router.tasks == [], "a task was added despite the error"

    return attempt


# (id, call, exception type, words the message must contain)
DECORATION: list[tuple[str, Callable[[], Any], type[BaseException], list[str]]] = [
    ("seconds=0", decorate(seconds=0), ValueError, ["seconds", "> 0", "0"]),
    ("seconds<0", decorate(seconds=-1), ValueError, ["seconds", "-1"]),
    ("seconds=nan", decorate(seconds=float("nan")), ValueError, ["seconds", "nan"]),
    ("seconds=inf", decorate(seconds=float("inf")), ValueError, ["seconds", "inf"]),
    ("seconds='5'", decorate(seconds="5"), ValueError, ["seconds", "'5'"]),
    ("seconds=True", decorate(seconds=True), ValueError, ["seconds", "True"]),
    (
        "max_lock<seconds",
        decorate(seconds=2, max_lock_seconds=1),
        ValueError,
        ["max_lock_seconds", "seconds"],
    ),
    (
        "min_lock>max_lock",
        decorate(seconds=1, max_lock_seconds=2, min_lock_seconds=3),
        ValueError,
        ["min_lock_seconds", "max_lock_seconds"],
    ),
    (
        "min_lock alone",
        decorate(seconds=1, min_lock_seconds=1),
        ValueError,
        ["min_lock_seconds", "max_lock_seconds", "leader"],
    ),
    (
        "max_lock=0",
        decorate(seconds=1, max_lock_seconds=0),
        ValueError,
        ["max_lock_seconds"],
    ),
    (
        "sync=TaskLock+max_lock",
        decorate(seconds=1, sync=TaskLock("t"), max_lock_seconds=5),
        ValueError,
        ["sync", "TaskLock", "max_lock_seconds"],
    ),
    (
        "sync=LeaderElection+leader",
        decorate(seconds=1, sync=LeaderElection("e"), leader=LeaderElection("f")),
        ValueError,
        ["sync", "LeaderElection", "leader"],
    ),
    ("name=''", decorate(seconds=1, name=""), ValueError, ["name"]),
    ("leader=object", decorate(seconds=1, leader=object()), ValueError, ["leader"]),
    ("sync=object", decorate(seconds=1, sync=object()), ValueError, ["sync"]),
    (
        "backend=object",
        decorate(seconds=1, max_lock_seconds=5, backend=object()),
        ValueError,
        ["backend", "SyncBackend"],
    ),
    (
        "worker=''",
        decorate(seconds=1, max_lock_seconds=5, worker=""),
        ValueError,
        ["worker"],
    ),
    (
        "worker=3",
        decorate(seconds=1, max_lock_seconds=5, worker=3),
        ValueError,
        ["worker", "3"],
    ),
    (
        "not callable",
        lambda: TaskRouter().interval(seconds=1)(3),
        TypeError,
        ["callable", "3"],
    ),
    (
        "tasks=[object]",
        lambda: TaskManager(tasks=[object()]),
        TypeError,
        ["task", "Task"],
    ),
]

PRIMITIVES: list[tuple[str, Callable[[], Any], type[BaseException], list[str]]] = [
    (
        "renew_deadline>=lease_duration",
        lambda: LeaderElection("e", lease_duration=2, renew_deadline=2),
        ValueError,
        ["renew_deadline", "lease_duration"],
    ),
    (
        "default renew_deadline>lease_duration",
        lambda: LeaderElection("e", lease_duration=2),
        ValueError,
        ["renew_deadline", "lease_duration"],
    ),
    (
        "retry_interval>=renew_deadline",
        lambda: LeaderElection("e", renew_deadline=1, retry_interval=1),
        ValueError,
        ["retry_interval", "renew_deadline"],
    ),
    (
        "backend_timeout>=renew_deadline",
        lambda: LeaderElection(
            "e", renew_deadline=1, retry_interval=0.5, backend_timeout=1
        ),
        ValueError,
        ["backend_timeout", "renew_deadline"],
    ),
    (
        "error_interval=0",
        lambda: LeaderElection("e", error_interval=0),
        ValueError,
        ["error_interval"],
    ),
    ("election name=''", lambda: LeaderElection(""), ValueError, ["name"]),
    (
        "lease_duration=0",
        lambda: Lock("l", lease_duration=0),
        ValueError,
        ["lease_duration"],
    ),
    (
        "retry_interval<0",
        lambda: Lock("l", retry_interval=-1),
        ValueError,
        ["retry_interval"],
    ),
    (
        "min_lock>max_lock (TaskLock)",
        lambda: TaskLock("t", min_lock_seconds=5, max_lock_seconds=1),
        ValueError,
        ["min_lock_seconds", "max_lock_seconds"],
    ),
    (
        "lock backend=object",
        lambda: Lock("l", backend=object()),
        ValueError,
        ["backend"],
    ),
]


def check_error(
    call: Callable[[], Any], error: type[BaseException], words: list[str]
) -> str:
    """Call, expect `error` (a GrelmicroError for ValueErrors) naming `words`."""
    with warnings.catch_warnings():
        # Deprecated arguments warn; the error must come first or regardless.
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(error) as caught:
            call()
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    if error is ValueError:
        assert isinstance(caught.value, GrelmicroError), repr(caught.value)
    return message


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in DECORATION + PRIMITIVES],
)
def test_invalid_task_and_primitive_arguments(
    call: Callable[[], Any], error: type[BaseException], words: list[str]
) -> None:
    """Decorators and primitives reject bad values up front, naming them."""
    check_error(call, error, words)


def redis_cases() -> list[tuple[str, Callable[[], Any], list[str]]]:
    """RedisSyncBackend construction errors."""
    from grelmicro.sync.redis import RedisSyncBackend

    def build(*args: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: RedisSyncBackend(*args, auto_register=False, **kwargs)

    return [
        ("scheme", build("http://localhost:6379"), ["URL", "http", "redis://"]),
        ("port", build("redis://localhost:abc"), ["URL", "redis://localhost:abc"]),
        ("empty url", build(""), ["url"]),
        ("url not str", build(6379), ["url", "6379"]),
        ("client type", build(client=object()), ["client"]),
        ("url and client", build("redis://x", client=object()), ["url", "client"]),
        ("prefix type", build("redis://x", prefix=1), ["prefix"]),
    ]


def nats_cases() -> list[tuple[str, Callable[[], Any], list[str]]]:
    """NatsSyncBackend construction errors."""
    from grelmicro.sync.nats import (  # type: ignore[import-not-found,unused-ignore]
        NatsSyncBackend,
    )

    def build(*args: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: NatsSyncBackend(*args, auto_register=False, **kwargs)

    url = "nats://localhost:4222"
    return [
        ("scheme", build("http://localhost:4222"), ["URL", "http"]),
        ("port", build("nats://localhost:abc"), ["URL"]),
        ("empty url", build(""), ["url"]),
        ("url not str", build(4222), ["url", "4222"]),
        ("client type", build(client=object()), ["client"]),
        ("url and client", build(url, client=object()), ["url", "client"]),
        ("bucket empty", build(url, bucket=""), ["bucket"]),
        ("bucket space", build(url, bucket="my locks"), ["bucket", "my locks"]),
        ("bucket dot", build(url, bucket="a.b"), ["bucket", "a.b"]),
        ("bucket wildcard", build(url, bucket="a*"), ["bucket", "a*"]),
        ("bucket not str", build(url, bucket=3), ["bucket", "3"]),
        ("replicas=0", build(url, replicas=0), ["replicas", "0"]),
        ("replicas=6", build(url, replicas=6), ["replicas", "6"]),
        ("replicas='3'", build(url, replicas="3"), ["replicas", "'3'"]),
    ]


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_invalid_backend_arguments(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends reject bad URLs, clients, prefixes, buckets and replica counts
    at construction (before connecting), naming what is wrong."""
    require_kind(kind)
    cases = redis_cases() if kind == "redis" else nats_cases()
    failures = []
    for case_id, call, words in cases:
        try:
            check_error(call, ValueError, words)
        except AssertionError as exc:  # report every case, not just the first
            failures.append(f"{case_id}: {exc}")
        except pytest.fail.Exception as exc:
            failures.append(f"{case_id}: {exc}")
    # No URL at all, and none in the environment: the message says how to fix it.
    env = "REDIS_URL" if kind == "redis" else "NATS_URL"
    monkeypatch.delenv(env, raising=False)
    backend_class: Any
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend as backend_class
    else:
        from grelmicro.sync.nats import (  # type: ignore[import-not-found,unused-ignore]
            NatsSyncBackend as backend_class,
        )
    try:
        check_error(lambda: backend_class(auto_register=False), ValueError, [env])
    except (AssertionError, pytest.fail.Exception) as exc:
        failures.append(f"no url: {exc}")
    assert failures == []


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_url_password_is_not_in_the_error(kind: str) -> None:
    """A rejected URL is named without its password."""
    require_kind(kind)
    backend_class: Any
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend as backend_class
    else:
        from grelmicro.sync.nats import (  # type: ignore[import-not-found,unused-ignore]
            NatsSyncBackend as backend_class,
        )
    with pytest.raises(ValueError) as caught:
        backend_class("http://user:s3cret@localhost:4222", auto_register=False)
    assert "s3cret" not in str(caught.value)
    assert "localhost" in str(caught.value)


def test_invalid_broker_types() -> None:
    """Only FastStream RedisBroker and NatsBroker are accepted, at construction."""
    from faststream.nats import NatsBroker
    from faststream.redis import RedisBroker

    from grelmicro.brokers import backend_for

    for broker in (object(), "redis://localhost", None.__class__):
        message = check_error(lambda b=broker: backend_for(b), TypeError, [])
        assert "RedisBroker" in message
        assert "NatsBroker" in message
        check_error(lambda b=broker: TaskManager(broker=b), TypeError, ["NatsBroker"])
    check_error(
        lambda: backend_for(RedisBroker(), bucket="locks"),
        ValueError,
        ["bucket", "RedisBroker"],
    )
    check_error(
        lambda: backend_for(NatsBroker(), prefix="app:"),
        ValueError,
        ["prefix", "NatsBroker"],
    )


def test_bad_nats_bucket_through_the_broker() -> None:
    """An invalid bucket for a NatsBroker fails at backend_for, not at first use."""
    require_kind("nats")
    from faststream.nats import NatsBroker

    from grelmicro.brokers import backend_for

    check_error(
        lambda: backend_for(NatsBroker(), bucket="my locks"),
        ValueError,
        ["bucket", "my locks"],
    )


def no_backend_manager(ran: list[str]) -> TaskManager:
    """A manager whose distributed tasks have no backend, and none is loaded."""
    manager = TaskManager()
    leader = LeaderElection(
        "nobackend",
        lease_duration=2,
        renew_deadline=1.5,
        retry_interval=0.05,
        backend_timeout=0.5,
    )

    @manager.interval(seconds=0.05, name="locked-nobackend", max_lock_seconds=1)
    async def locked_job() -> None:
        ran.append("locked")

    @manager.interval(seconds=0.05, name="gated-nobackend", leader=leader)
    async def gated_job() -> None:
        ran.append("gated")

    return manager


@pytest.mark.anyio
async def test_no_backend_anywhere_never_runs_the_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A distributed task with no backend given and none loaded never runs its
    function, and the error says how to load a backend."""
    ran: list[str] = []
    manager = no_backend_manager(ran)
    error: BaseException | None = None
    with caplog.at_level(logging.ERROR):
        try:
            async with manager:
                await anyio.sleep(0.6)
        except BaseException as exc:  # today: an ExceptionGroup at exit
            error = exc
    assert ran == []
    text = "\n".join(
        f"{r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
    )
    text += f"\n{error!r}"
    if isinstance(error, BaseExceptionGroup):
        text += "".join(f"\n{e}" for e in error.exceptions)
    assert "No synchronization backend is loaded" in text, text
    assert "Pass backend=" in text, text


@pytest.mark.anyio
async def test_no_backend_anywhere_fails_when_entering_the_manager() -> None:
    """Entering a manager whose primitives have no backend (none given, none
    loaded) raises BackendNotLoadedError before any task starts."""
    ran: list[str] = []
    entered = False
    manager = no_backend_manager(ran)

    async def enter() -> None:
        nonlocal entered
        async with manager:
            entered = True
            await anyio.sleep(0.3)

    with pytest.raises(BackendNotLoadedError) as caught:
        await enter()
    assert not entered
    assert ran == []
    assert "nobackend" in str(caught.value)
