"""Stop a manager's tasks before its broker closes.

FastStream closes the broker *before* the code after the lifespan's `yield`
runs: by the time `async with task:` exits, the connection the backend
borrows is gone, and leadership and locks could not be released (the others
would wait for the leases to expire). `attach()` fixes the order:

- the manager starts its tasks in a task group hosted by a small runner task
  (started in the manager's own task group), so they can be stopped from
  another task and awaited;
- a shutdown hook registered on the application that owns the broker
  (`FastStream.on_shutdown`, which runs before the broker is stopped, or the
  FastAPI `StreamRouter.on_broker_shutdown`) cancels those tasks and waits
  until they have released what they hold, over the still-open connection.

A broker that no application owns (started by hand in a FastAPI lifespan) has
no hook: enter the manager inside the broker's lifetime and the normal exit
order releases everything.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus

from grelmicro.brokers._connection import owner_of, reset

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger("grelmicro.task")

#: Upper bound, in seconds, on how long a shutdown hook waits for the tasks to
#: release what they hold (each release is already bounded by its own timeout).
SHUTDOWN_TIMEOUT = 10.0


class _Runner:
    """Hosts the task group a manager starts its tasks in."""

    def __init__(self) -> None:
        self.group: TaskGroup | None = None
        self.done = anyio.Event()

    async def run(
        self, *, task_status: TaskStatus[TaskGroup] = TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with anyio.create_task_group() as group:
                self.group = group
                task_status.started(group)
                await anyio.sleep_forever()
        finally:
            self.group = None
            self.done.set()

    async def stop(self) -> None:
        group = self.group
        if group is not None:
            group.cancel_scope.cancel()
        with anyio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
            await self.done.wait()
        if scope.cancelled_caught:
            logger.warning(
                "Tasks did not stop within %ss of the broker's shutdown",
                SHUTDOWN_TIMEOUT,
            )


class _Attachment:
    """Per manager: the runner of the current run, the owners already hooked."""

    def __init__(self) -> None:
        self.runner: _Runner | None = None
        self.hooked: list[Any] = []

    async def stop(self) -> None:
        runner = self.runner
        if runner is not None:
            logger.debug("Stopping tasks before the broker closes")
            await runner.stop()


_attachments: weakref.WeakKeyDictionary[Any, _Attachment] = weakref.WeakKeyDictionary()


async def attach(manager: Any, task_group: TaskGroup) -> TaskGroup:
    """Prepare `manager`, entered with `broker=`, for its broker's shutdown.

    Call it from `TaskManager.__aenter__` once the backend is entered, and
    start the tasks in the task group it returns. It starts, in
    `task_group`, a runner hosting that group, and registers (once per
    application) a hook on the application that owns the broker which stops
    the tasks, and so releases leadership and locks, before the broker
    closes. Cancelling `task_group` (the manager's exit) stops the runner
    and its tasks too.
    """
    broker = manager.broker
    reset(broker)
    attachment = _attachments.get(manager)
    if attachment is None:
        attachment = _attachments[manager] = _Attachment()
    runner = _Runner()
    group: TaskGroup = await task_group.start(runner.run)
    attachment.runner = runner
    _hook_owner(attachment, owner_of(broker))
    return group


async def stop_tasks(manager: Any) -> None:
    """Stop the tasks of `manager` now and wait until they released what they hold.

    What the shutdown hooks call; also usable by hand, before stopping a
    broker the manager borrows (`await stop_tasks(task); await broker.stop()`).
    Does nothing when `manager` is not running with a broker.
    """
    attachment = _attachments.get(manager)
    if attachment is not None:
        await attachment.stop()


def _hook_owner(attachment: _Attachment, owner: Any) -> None:
    if owner is None or any(hooked is owner for hooked in attachment.hooked):
        return
    stop = attachment.stop
    # FastStream's FastAPI StreamRouter: hooks receive the FastAPI app and run
    # right before the broker is stopped.
    on_broker_shutdown: Callable[[Callable[[Any], Awaitable[None]]], Any] | None = (
        getattr(owner, "on_broker_shutdown", None)
    )
    if callable(on_broker_shutdown):

        async def before_broker_shutdown(app: Any) -> None:
            await stop()

        on_broker_shutdown(before_broker_shutdown)
        attachment.hooked.append(owner)
        return
    # FastStream / AsgiFastStream (and TestApp, which calls app.stop()):
    # on_shutdown hooks run before the broker is stopped.
    on_shutdown: Callable[[Callable[[], Awaitable[None]]], Any] | None = getattr(
        owner, "on_shutdown", None
    )
    if callable(on_shutdown):

        async def before_shutdown() -> None:
            await stop()

        on_shutdown(before_shutdown)
        attachment.hooked.append(owner)
        return
    logger.debug(
        "No shutdown hook on %s: the tasks stop when the manager exits",
        type(owner).__name__,
    )
