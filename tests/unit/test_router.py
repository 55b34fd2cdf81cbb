"""TaskRouter: decorators, validation at decoration time, deprecations."""

from __future__ import annotations

import re

import pytest

from grelmicro.errors import GrelmicroError
from grelmicro.sync import LeaderElection, Lock, TaskLock
from grelmicro.task import TaskManager, TaskRouter
from grelmicro.task import manager as manager_module
from grelmicro.task import router as router_module
from grelmicro.task._interval import IntervalTask
from grelmicro.task.errors import TaskAddOperationError, TaskError


def _only_task(router: TaskRouter) -> IntervalTask:
    (task,) = router.tasks
    assert isinstance(task, IntervalTask)
    return task


def test_public_import_paths_are_the_same_classes() -> None:
    assert manager_module.TaskManager is TaskManager
    assert router_module.TaskRouter is TaskRouter
    assert issubclass(TaskManager, TaskRouter)


def test_interval_returns_function_unchanged() -> None:
    router = TaskRouter()

    async def job() -> None: ...

    assert router.interval(seconds=1)(job) is job
    assert _only_task(router).name == f"{__name__}:{job.__qualname__}"


def test_default_name_of_nested_function_and_callable_object() -> None:
    router = TaskRouter()

    def make() -> object:
        def inner() -> None: ...

        return inner

    class Job:
        async def __call__(self) -> None: ...

    router.interval(seconds=1)(make())  # type: ignore[arg-type]
    router.interval(seconds=1)(Job())
    names = [task.name for task in router.tasks]
    assert names[0].endswith("make.<locals>.inner")
    assert names[0].startswith(f"{__name__}:")
    assert names[1].endswith("Job")


def test_explicit_name() -> None:
    router = TaskRouter()
    router.interval(seconds=1, name="cleanup")(lambda: None)
    assert _only_task(router).name == "cleanup"


def test_local_mode_has_no_lock() -> None:
    router = TaskRouter()
    router.interval(seconds=2)(lambda: None)
    task = _only_task(router)
    assert task.task_lock is None
    assert task.leader is None
    assert task.interval == 2


def test_max_lock_creates_task_lock_with_defaults() -> None:
    router = TaskRouter()
    router.interval(seconds=2, max_lock_seconds=10, name="t")(lambda: None)
    lock = _only_task(router).task_lock
    assert isinstance(lock, TaskLock)
    assert lock.name == "t"
    assert lock.key == "tasklock:t"
    assert lock.max_lock_seconds == 10
    assert lock.min_lock_seconds == 2


def test_leader_defaults_max_lock_to_five_intervals() -> None:
    router = TaskRouter()
    leader = LeaderElection("l")
    router.interval(seconds=3, leader=leader)(lambda: None)
    task = _only_task(router)
    assert task.leader is leader
    assert task.task_lock is not None
    assert task.task_lock.max_lock_seconds == 15
    assert task.task_lock.min_lock_seconds == 3


def test_custom_min_lock() -> None:
    router = TaskRouter()
    router.interval(seconds=1, max_lock_seconds=10, min_lock_seconds=4)(lambda: None)
    lock = _only_task(router).task_lock
    assert lock is not None
    assert lock.min_lock_seconds == 4


def test_resource_lock_is_kept() -> None:
    router = TaskRouter()
    lock = Lock("db")
    router.interval(seconds=1, sync=lock)(lambda: None)
    assert _only_task(router).sync is lock


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": float("nan")}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": 5, "max_lock_seconds": 4}, "max_lock_seconds"),
        ({"seconds": 1, "max_lock_seconds": 0}, "max_lock_seconds"),
        (
            {"seconds": 1, "max_lock_seconds": 5, "min_lock_seconds": 6},
            "min_lock_seconds",
        ),
        (
            {"seconds": 1, "max_lock_seconds": 5, "min_lock_seconds": 0},
            "min_lock_seconds",
        ),
        ({"seconds": 1, "min_lock_seconds": 1}, "min_lock_seconds"),
        ({"seconds": 1, "name": ""}, "name"),
        ({"seconds": 1, "leader": "not-a-leader"}, "leader"),
        ({"seconds": 1, "sync": object()}, "sync"),
        ({"seconds": 1, "backend": object()}, "backend"),
        ({"seconds": 1, "max_lock_seconds": 5, "worker": 3}, "worker"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_parameter(
    kwargs: dict[str, object], param: str
) -> None:
    router = TaskRouter()
    with pytest.raises(ValueError, match=re.escape(param)) as info:
        router.interval(**kwargs)(lambda: None)  # type: ignore[arg-type]
    assert isinstance(info.value, GrelmicroError)
    assert router.tasks == []


def test_worker_validated_only_when_locked() -> None:
    router = TaskRouter()
    with pytest.raises(ValueError, match="worker"):
        router.interval(seconds=1, max_lock_seconds=2, worker="")(lambda: None)


@pytest.mark.parametrize(
    "extra",
    [
        {"max_lock_seconds": 5},
        {"min_lock_seconds": 1},
        {"leader": "leader"},
    ],
)
@pytest.mark.parametrize("sync_kind", ["tasklock", "leader"])
def test_deprecated_sync_cannot_combine_with_lock_arguments(
    extra: dict[str, object], sync_kind: str
) -> None:
    router = TaskRouter()
    sync: TaskLock | LeaderElection = (
        TaskLock("x") if sync_kind == "tasklock" else LeaderElection("x")
    )
    kwargs = dict(extra)
    if kwargs.get("leader") == "leader":
        kwargs["leader"] = LeaderElection("other")
    param = next(iter(extra))
    with pytest.raises(ValueError, match=param):
        router.interval(seconds=1, sync=sync, **kwargs)(lambda: None)  # type: ignore[arg-type]


def test_deprecated_sync_task_lock_warns_and_is_used() -> None:
    router = TaskRouter()
    task_lock = TaskLock("legacy", max_lock_seconds=10)
    with pytest.deprecated_call(match="sync=TaskLock"):
        router.interval(seconds=1, sync=task_lock)(lambda: None)
    task = _only_task(router)
    assert task.task_lock is task_lock
    assert task.sync is None


def test_deprecated_sync_leader_election_warns_and_gates() -> None:
    router = TaskRouter()
    leader = LeaderElection("legacy")
    with pytest.deprecated_call(match="sync=LeaderElection"):
        router.interval(seconds=1, sync=leader)(lambda: None)
    task = _only_task(router)
    assert task.leader is leader
    assert task.sync is None


def test_scheduled_is_deprecated_and_equivalent() -> None:
    router = TaskRouter()
    with pytest.deprecated_call(match="scheduled"):
        router.scheduled(seconds=2, name="s")(lambda: None)
    lock = _only_task(router).task_lock
    assert lock is not None
    assert lock.max_lock_seconds == 10
    assert lock.min_lock_seconds == 2


def test_scheduled_with_max_lock_and_leader() -> None:
    router = TaskRouter()
    leader = LeaderElection("l")
    with pytest.deprecated_call():
        router.scheduled(seconds=2, max_lock_seconds=7, leader=leader)(lambda: None)
    task = _only_task(router)
    assert task.leader is leader
    assert task.task_lock is not None
    assert task.task_lock.max_lock_seconds == 7
    assert task.task_lock.min_lock_seconds == 2


def test_scheduled_validates() -> None:
    router = TaskRouter()
    with pytest.deprecated_call(), pytest.raises(ValueError, match="max_lock_seconds"):
        router.scheduled(seconds=5, max_lock_seconds=1)(lambda: None)


def test_decorating_non_callable_fails() -> None:
    router = TaskRouter()
    with pytest.raises(TypeError, match="callable"):
        router.interval(seconds=1)(42)  # type: ignore[type-var]


def test_include_router_flattens() -> None:
    parent, child, grandchild = TaskRouter(), TaskRouter(), TaskRouter()
    parent.interval(seconds=1, name="a")(lambda: None)
    child.interval(seconds=1, name="b")(lambda: None)
    grandchild.interval(seconds=1, name="c")(lambda: None)
    child.include_router(grandchild)
    parent.include_router(child)
    assert [t.name for t in parent.tasks] == ["a", "b", "c"]


def test_router_constructor_tasks_and_add_task() -> None:
    leader = LeaderElection("l")
    router = TaskRouter(tasks=[leader])
    assert router.tasks == [leader]
    with pytest.raises(TypeError, match="Task"):
        router.add_task("nope")  # type: ignore[arg-type]


def test_include_self_fails() -> None:
    router = TaskRouter()
    with pytest.raises(ValueError, match="itself"):
        router.include_router(router)


def test_adding_after_start_raises_task_error() -> None:
    router = TaskRouter()
    sub = TaskRouter()
    router.include_router(sub)
    router.do_mark_as_started()
    for action in (
        lambda: router.add_task(LeaderElection("x")),
        lambda: router.include_router(TaskRouter()),
        lambda: router.interval(seconds=1)(lambda: None),
        lambda: sub.interval(seconds=1)(lambda: None),
        lambda: TaskRouter().include_router(sub),
    ):
        with pytest.raises(TaskAddOperationError) as info:
            action()
        assert isinstance(info.value, TaskError)
        assert isinstance(info.value, RuntimeError)
