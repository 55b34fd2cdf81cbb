"""What every synchronization primitive shares: naming, backend binding, calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol, TypeVar
from uuid import UUID, uuid4

import anyio

from grelmicro._validate import SettingsValidationError, non_empty_str
from grelmicro.sync._backends import get_default_backend
from grelmicro.sync.abc import (
    FencedAcquire,
    FencingBackend,
    NameCheckBackend,
    ReleaseWatchBackend,
    RemainingBackend,
    SyncBackend,
)
from grelmicro.sync.errors import BackendNotLoadedError, SyncBackendError

T = TypeVar("T")

logger = logging.getLogger("grelmicro.sync")

#: Upper bound for one backend call made by `Lock` and `TaskLock`.
DEFAULT_BACKEND_TIMEOUT = 5.0


def worker_id(worker: str | UUID | None) -> str:
    """Validate a `worker=` argument; a fresh UUID when None."""
    if worker is None:
        return uuid4().hex
    if isinstance(worker, UUID):
        return str(worker)
    if isinstance(worker, str) and worker:
        return worker
    msg = f"worker must be a non-empty str or a UUID, got {worker!r}"
    raise SettingsValidationError(msg)


def check_backend(backend: SyncBackend | None) -> SyncBackend | None:
    """Validate a `backend=` argument."""
    if backend is not None and not isinstance(backend, SyncBackend):
        msg = (
            "backend must implement grelmicro.sync.abc.SyncBackend "
            f"(acquire, release, locked, owned), got {backend!r}"
        )
        raise SettingsValidationError(msg)
    return backend


# Holder tokens -------------------------------------------------------------------

# Unique for the life of the process: an id() or a thread ident is reused once
# its task or thread is gone, and a new holder must never "own" a dead one's lock.
_holder_ids = itertools.count(1)
_task_ids: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
    weakref.WeakKeyDictionary()
)
_thread_ids = threading.local()


def task_holder_id() -> str:
    """A process-unique id of the current asyncio task."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside a task under anyio
        return thread_holder_id()
    number = _task_ids.get(task)
    if number is None:
        number = _task_ids[task] = next(_holder_ids)
    return f"task-{number}"


def thread_holder_id() -> str:
    """A process-unique id of the current thread."""
    number: int | None = getattr(_thread_ids, "number", None)
    if number is None:
        number = _thread_ids.number = next(_holder_ids)
    return f"thread-{number}"


# Backend capabilities ------------------------------------------------------------


class AcquireCall(Protocol):
    """`FencingBackend.acquire_fenced`'s shape."""

    def __call__(
        self, *, name: str, token: str, duration: float
    ) -> Awaitable[FencedAcquire]: ...


class Capabilities:
    """The optional capabilities of one backend, tested once when bound."""

    __slots__ = (
        "acquire",
        "backend",
        "fencing",
        "name_check",
        "release_watch",
        "remaining",
    )

    def __init__(self, backend: SyncBackend) -> None:
        self.backend = backend
        self.fencing = backend if isinstance(backend, FencingBackend) else None
        self.remaining = backend if isinstance(backend, RemainingBackend) else None
        self.release_watch = (
            backend if isinstance(backend, ReleaseWatchBackend) else None
        )
        self.name_check = backend if isinstance(backend, NameCheckBackend) else None
        #: Take or extend: fenced when the backend can, else as well as it
        #: can (the backend's own method when fenced: no extra call).
        self.acquire: AcquireCall = (
            self.fencing.acquire_fenced
            if self.fencing is not None
            else self._acquire_unfenced
        )

    async def _acquire_unfenced(
        self, *, name: str, token: str, duration: float
    ) -> FencedAcquire:
        """Take or extend on a backend without fencing tokens."""
        if self.remaining is not None:
            left = await self.remaining.acquire_or_remaining(
                name=name, token=token, duration=duration
            )
            return FencedAcquire(None, left) if left > 0 else _UNFENCED
        acquired = await self.backend.acquire(name=name, token=token, duration=duration)
        return _UNFENCED if acquired else _BUSY


#: Acquired on a backend without tokens: `fence` is None but `remaining` is 0.
_UNFENCED = FencedAcquire(None, 0.0)
#: Busy on a backend that cannot tell for how long.
_BUSY = FencedAcquire(None, float("inf"))


class Primitive:
    """Base of `Lock`, `TaskLock` and `LeaderElection`."""

    kind: ClassVar[str] = "lock"

    def __init__(
        self, name: str, *, backend: SyncBackend | None, worker: str | UUID | None
    ) -> None:
        self.name = non_empty_str("name", name)
        self.key = f"{self.kind}:{name}"
        self._backend = check_backend(backend)
        self.worker = worker_id(worker)
        self._caps: Capabilities | None = None

    @property
    def explicit_backend(self) -> SyncBackend | None:
        """The backend given at construction, or None to use the default."""
        return self._backend

    @property
    def backend(self) -> SyncBackend:
        """The backend given at construction, else the current default backend."""
        if self._backend is not None:
            return self._backend
        return get_default_backend(f"{type(self).__name__}({self.name!r})")

    @property
    def caps(self) -> Capabilities:
        """The capabilities of the backend in use (tested once per backend)."""
        backend = self.backend
        caps = self._caps
        if caps is None or caps.backend is not backend:
            caps = self._caps = Capabilities(backend)
            if caps.name_check is not None:
                caps.name_check.check_name(self.key)
        return caps

    def bind(self) -> None:
        """Resolve the backend now and check this primitive's name against it.

        Called when a `TaskManager` starts, so a name the backend cannot store
        fails then, not at every run.
        """
        _ = self.caps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, worker={self.worker!r})"


# Deadlines of backend calls ------------------------------------------------------


class _Call:
    """One backend call in flight: its task, deadline and state."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False


class _Deadlines:
    """The deadlines of one event loop's backend calls, on one loop timer.

    `asyncio.timeout` costs a timer handle per call (scheduled, then
    cancelled: most calls last a millisecond against a deadline seconds
    away). Here a call costs a set insertion and removal; a timer fires at
    the earliest deadline, cancels the calls past theirs the way
    `asyncio.timeout` does, and is set again for the next one. Nothing here
    refers to the loop (only weakly): a closed loop is not kept alive.
    """

    __slots__ = ("calls", "loop", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.calls: set[_Call] = set()
        #: When the earliest timer still pending fires (inf: none).
        self.when = math.inf

    def start(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], timeout: float
    ) -> _Call:
        call = _Call(task, loop.time() + timeout)
        self.calls.add(call)
        if call.deadline < self.when:
            # An earlier deadline than the pending timer's: one more timer
            # (a later one that fires for nothing costs a scan).
            self.when = call.deadline
            loop.call_at(call.deadline, self._fire, loop)
        return call

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now >= self.when:
            self.when = math.inf
        for call in list(self.calls):
            if call.deadline <= now:
                self.calls.discard(call)
                if not call.task.done():
                    call.expired = True
                    call.task.cancel()
        if self.calls:
            earliest = min(call.deadline for call in self.calls)
            if earliest < self.when:
                self.when = earliest
                loop.call_at(earliest, self._fire, loop)


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)
_last_deadlines: list[_Deadlines | None] = [None]


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    deadlines = _last_deadlines[0]
    if deadlines is None or deadlines.loop() is not loop:
        deadlines = _deadlines.get(loop)
        if deadlines is None:
            deadlines = _deadlines[loop] = _Deadlines(loop)
        _last_deadlines[0] = deadlines
    return deadlines


async def call_backend(
    call: Callable[[], Awaitable[T]],
    error: Callable[[], SyncBackendError],
    timeout: float,  # noqa: ASYNC109
) -> T:
    """Run one backend call bounded by `timeout`, wrapping every failure in `error()`.

    `BackendNotLoadedError` is raised as itself; cancellation passes through.
    """
    try:
        awaitable = call()
    except BackendNotLoadedError:
        raise
    except Exception as exc:
        raise error() from exc
    return await bounded(awaitable, error, timeout)


async def bounded(
    awaitable: Awaitable[T],
    error: Callable[[], SyncBackendError],
    timeout: float,  # noqa: ASYNC109
) -> T:
    """`call_backend` for a call already made (a coroutine not yet awaited)."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always inside a task under anyio
        async with asyncio.timeout(timeout):
            return await awaitable
    loop = task.get_loop()
    deadlines = _deadlines_of(loop)
    pending = deadlines.start(loop, task, timeout)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if pending.expired:
            # Past the deadline: the cancellation was ours (unless the task
            # was also cancelled from outside), raised as a timeout the way
            # `asyncio.timeout` does.
            pending.expired = False
            if task.uncancel() <= pending.cancelling:
                raise error() from TimeoutError()
        raise
    except BackendNotLoadedError:
        raise
    except Exception as exc:
        raise error() from exc
    finally:
        deadlines.calls.discard(pending)
        if pending.expired:
            task.uncancel()


async def acquire_or_give_back(
    caps: Capabilities,
    *,
    name: str,
    token: str,
    duration: float,
    error: Callable[[], SyncBackendError],
    timeout: float,  # noqa: ASYNC109
) -> FencedAcquire:
    """One acquisition whose caller may give up: never leave a lease nobody owns.

    If the call is cancelled, times out or fails, the server may still apply
    it (a late answer): the token that was sent is released at once (shielded,
    owner-only, best effort, bounded by `timeout`), so the lock is free again
    within one round trip instead of held until its lease ends.
    """
    try:
        return await bounded(
            caps.acquire(name=name, token=token, duration=duration), error, timeout
        )
    except BackendNotLoadedError:
        raise
    except BaseException:
        await give_back(caps.backend, name=name, token=token, timeout=timeout)
        raise


async def give_back(
    backend: SyncBackend,
    *,
    name: str,
    token: str,
    timeout: float,  # noqa: ASYNC109
) -> None:
    """Release `token`'s hold on `name` if it has one: shielded, best effort."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
        try:
            await backend.release(name=name, token=token)
        except Exception as exc:
            logger.debug("Could not give back %s (%s): %r", name, token, exc)
