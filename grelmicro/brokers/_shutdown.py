"""Stop the managers of a FastStream app before the app closes its broker.

FastStream closes the broker *before* the code after the lifespan's `yield`
runs: by the time `async with task:` exits, the connection the backend
borrows is gone, and leadership and locks could not be released (the others
would wait for the leases to expire). So a `TaskManager(broker=...)`, when
entered, asks `hook_shutdown` to call its `stop()` from the application's
own shutdown hook, which runs while the broker is still connected:
`FastStream.on_shutdown` (also `AsgiFastStream`, and `TestApp`), or the
FastAPI `StreamRouter.on_broker_shutdown`.

One hook is registered per application, however many managers share it and
however often they are entered. A broker that no application owns (started
by hand in a FastAPI lifespan) has no hook: enter the manager inside the
broker's lifetime, or `await manager.stop()` before `broker.stop()`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from grelmicro.brokers._connection import owner_of, reset

logger = logging.getLogger("grelmicro.task")


class _AppManagers:
    """The managers stopped by one application's shutdown hook."""

    def __init__(self) -> None:
        self.managers: weakref.WeakSet[Any] = weakref.WeakSet()

    async def stop_all(self, *_: Any) -> None:
        for manager in list(self.managers):
            if manager.running:
                logger.debug("Stopping tasks before the broker closes")
                await manager.stop()


_apps: weakref.WeakKeyDictionary[Any, _AppManagers] = weakref.WeakKeyDictionary()
#: Applications that are not weak-referenceable, by id (kept for the process).
_strong_apps: dict[int, tuple[Any, _AppManagers]] = {}


def hook_shutdown(manager: Any) -> None:
    """Have the application owning `manager.broker` stop `manager` first.

    Called by `TaskManager.__aenter__` when it was given a broker.
    """
    broker = manager.broker
    reset(broker)
    owner = owner_of(broker)
    if owner is None:
        return
    managers = _managers_of(owner)
    if managers is not None:
        managers.managers.add(manager)


def _managers_of(owner: Any) -> _AppManagers | None:
    try:
        managers = _apps.get(owner)
    except TypeError:  # not weak-referenceable
        entry = _strong_apps.get(id(owner))
        managers = entry[1] if entry is not None else None
    if managers is not None:
        return managers
    managers = _AppManagers()
    if not _register(owner, managers.stop_all):
        return None
    try:
        _apps[owner] = managers
    except TypeError:
        _strong_apps[id(owner)] = (owner, managers)
    return managers


def _register(owner: Any, stop_all: Callable[..., Awaitable[None]]) -> bool:
    """Register `stop_all` as `owner`'s hook that runs before its broker stops."""
    # FastStream's FastAPI StreamRouter: hooks receive the FastAPI app and run
    # right before the broker is stopped.
    on_broker_shutdown: Callable[[Callable[[Any], Awaitable[None]]], Any] | None = (
        getattr(owner, "on_broker_shutdown", None)
    )
    if callable(on_broker_shutdown):

        async def before_broker_shutdown(app: Any) -> None:
            await stop_all()

        on_broker_shutdown(before_broker_shutdown)
        return True
    # FastStream / AsgiFastStream (and TestApp, which calls app.stop()):
    # on_shutdown hooks run before the broker is stopped.
    on_shutdown: Callable[[Callable[[], Awaitable[None]]], Any] | None = getattr(
        owner, "on_shutdown", None
    )
    if callable(on_shutdown):

        async def before_shutdown() -> None:
            await stop_all()

        on_shutdown(before_shutdown)
        return True
    logger.debug(
        "No shutdown hook on %s: the tasks stop when the manager exits",
        type(owner).__name__,
    )
    return False


async def stop_tasks(manager: Any) -> None:
    """Stop the tasks of `manager` now: the same as `await manager.stop()`.

    Kept for code written against grelmicro 0.7.0's first releases.
    """
    await manager.stop()
