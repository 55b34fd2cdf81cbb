"""The public surface named in API.md, the error hierarchy and the registry."""

from __future__ import annotations

import importlib
import warnings

import pytest

import grelmicro
from grelmicro.errors import GrelmicroError, OutOfContextError
from grelmicro.sync import _backends
from grelmicro.sync.abc import SyncBackend, Synchronization
from grelmicro.sync.errors import (
    BackendNotLoadedError,
    LockAcquireError,
    LockNotOwnedError,
    LockReleaseError,
    SyncBackendError,
)
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task.errors import TaskAddOperationError, TaskError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("grelmicro.task", ["TaskManager", "TaskRouter", "Run", "current_run"]),
        ("grelmicro.task.manager", ["TaskManager"]),
        ("grelmicro.task.router", ["TaskRouter"]),
        ("grelmicro.task.abc", ["Task"]),
        ("grelmicro.sync", ["Lock", "TaskLock", "LeaderElection"]),
        (
            "grelmicro.sync.abc",
            [
                "SyncBackend",
                "Synchronization",
                "FencingBackend",
                "FireClaimBackend",
                "RemainingBackend",
                "ReleaseWatchBackend",
                "NameCheckBackend",
            ],
        ),
        ("grelmicro.sync.memory", ["MemorySyncBackend"]),
        ("grelmicro.sync.redis", ["RedisSyncBackend"]),
        ("grelmicro.sync.nats", ["NatsSyncBackend"]),
        ("grelmicro.brokers", ["backend_for"]),
        ("grelmicro.errors", ["GrelmicroError", "OutOfContextError"]),
        (
            "grelmicro.sync.errors",
            [
                "SyncBackendError",
                "BackendNotLoadedError",
                "LockAcquireError",
                "LockReleaseError",
            ],
        ),
        ("grelmicro.task.errors", ["TaskError"]),
    ],
)
def test_public_names_import(module: str, names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_error_hierarchy() -> None:
    assert issubclass(SyncBackendError, GrelmicroError)
    for cls in (
        BackendNotLoadedError,
        LockAcquireError,
        LockReleaseError,
        LockNotOwnedError,
    ):
        assert issubclass(cls, SyncBackendError)
    assert issubclass(TaskError, GrelmicroError)
    assert issubclass(TaskError, RuntimeError)
    assert issubclass(TaskAddOperationError, TaskError)
    assert issubclass(OutOfContextError, RuntimeError)
    assert issubclass(OutOfContextError, GrelmicroError)


def test_memory_backend_implements_protocol() -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert isinstance(backend, SyncBackend)


def test_primitives_are_synchronizations() -> None:
    from grelmicro.sync import LeaderElection, Lock, TaskLock

    for primitive in (Lock("a"), TaskLock("a"), LeaderElection("a")):
        assert isinstance(primitive, Synchronization)


def test_version() -> None:
    assert isinstance(grelmicro.__version__, str)


async def test_registry_enter_exit_restores_previous_default() -> None:
    first = MemorySyncBackend()
    assert _backends.get_default_backend() is first
    second = MemorySyncBackend(auto_register=False)
    assert _backends.get_default_backend() is first
    async with second:
        assert _backends.get_default_backend() is second
    assert _backends.get_default_backend() is first
    async with first:
        pass
    with pytest.raises(BackendNotLoadedError, match="backend"):
        _backends.get_default_backend()


async def test_memory_backend_semantics() -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.acquire(name="k", token="a", duration=10)
    assert await backend.acquire(name="k", token="a", duration=10)
    assert not await backend.acquire(name="k", token="b", duration=10)
    assert await backend.locked(name="k")
    assert await backend.owned(name="k", token="a")
    assert not await backend.owned(name="k", token="b")
    assert not await backend.release(name="k", token="b")
    assert await backend.release(name="k", token="a")
    assert not await backend.locked(name="k")
    assert not await backend.release(name="k", token="a")
    remaining = await backend.acquire_or_remaining(name="k", token="a", duration=5)
    assert remaining == 0
    remaining = await backend.acquire_or_remaining(name="k", token="b", duration=5)
    assert 4 < remaining <= 5


@pytest.mark.parametrize(
    "target",
    [
        "grelmicro.task.manager:TaskManager.__init__",
        "grelmicro.task.manager:TaskManager.stop",
        "grelmicro.task.router:TaskRouter.interval",
        "grelmicro.task.router:TaskRouter.scheduled",
        "grelmicro.task._run:Run.__init__",
        "grelmicro.sync.lock:Lock.__init__",
        "grelmicro.sync.tasklock:TaskLock.__init__",
        "grelmicro.sync.leaderelection:LeaderElection.__init__",
        "grelmicro.sync.memory:MemorySyncBackend.__init__",
        "grelmicro.sync.abc:SyncBackend.acquire",
        "grelmicro.sync.abc:FencingBackend.acquire_fenced",
        "grelmicro.sync.abc:FireClaimBackend.claim_fire",
    ],
)
def test_type_hints_resolve_at_runtime(target: str) -> None:
    # Documentation tools evaluate them (Doc was once imported only for mypy).
    import typing

    module, _, qualname = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    hints = typing.get_type_hints(obj, include_extras=True)
    assert hints
