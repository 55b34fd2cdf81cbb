"""Distributed resource lock."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from types import ModuleType, TracebackType
from typing import Annotated, Any, Self
from uuid import UUID

import anyio
from typing_extensions import Doc

from grelmicro import _metrics
from grelmicro._validate import number
from grelmicro.sync._primitive import (
    DEFAULT_BACKEND_TIMEOUT,
    Capabilities,
    Primitive,
    acquire_or_give_back,
    call_backend,
    task_holder_id,
    thread_holder_id,
)
from grelmicro.sync.abc import FencedAcquire, SyncBackend
from grelmicro.sync.errors import (
    LockAcquireError,
    LockNotOwnedError,
    LockReleaseError,
    LockStateError,
)


class Lock(Primitive):
    """A distributed lock, held by one task of one worker at a time.

    The lock is owned by the task (or thread) that acquired it: another task of
    the same worker waits like any other worker. The lease expires on the
    server after `lease_duration` seconds, so a crashed holder never blocks
    the others for longer than that.

    ```python
    lock = Lock("report")

    async with lock:
        ...
    ```
    """

    kind = "lock"

    def __init__(
        self,
        name: Annotated[str, Doc("The name of the resource to lock.")],
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
            float, Doc("Seconds the lock stays held if it is not released.")
        ] = 60,
        retry_interval: Annotated[
            float, Doc("Seconds between two attempts while waiting for the lock.")
        ] = 0.1,
    ) -> None:
        super().__init__(name, backend=backend, worker=worker)
        self.lease_duration = number("lease_duration", lease_duration)
        self.retry_interval = number("retry_interval", retry_interval)
        self._timeout = DEFAULT_BACKEND_TIMEOUT
        # The holder token and fencing token of this worker's current holding.
        self._holder: str | None = None
        self._fence: int | None = None
        # The last task that used the lock, and its token.
        self._token_of: tuple[weakref.ref[asyncio.Task[Any]], str] | None = None

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of this worker's current holding; None when not held.

        It grows with every acquisition of the lock across all workers: pass
        it to the storage the lock protects so that a holder paused past its
        lease cannot overwrite a later holder's writes. None too on a backend
        that cannot issue tokens.
        """
        return self._fence if self._holder is not None else None

    # Tokens -----------------------------------------------------------------

    def _task_token(self) -> str:
        task = asyncio.current_task()
        cached = self._token_of
        if cached is not None and cached[0]() is task:
            return cached[1]
        token = f"{self.worker}/{task_holder_id()}"
        if task is not None:
            self._token_of = (weakref.ref(task), token)
        return token

    def _thread_token(self) -> str:
        return f"{self.worker}/{thread_holder_id()}"

    # Token-level operations (shared by the async API and `from_thread`) -----

    async def do_acquire(self, token: str) -> bool:
        """Try once to take (or extend) the lock for `token`.

        If the call is cancelled or fails, the token is given back at once
        (the server may have applied it late): no lease is left unowned.
        """
        caps = self.caps
        if not _metrics.ENABLED.on:
            answer = await acquire_or_give_back(
                caps,
                name=self.key,
                token=token,
                duration=self.lease_duration,
                error=lambda: LockAcquireError(name=self.name, token=token),
                timeout=self._timeout,
            )
        else:
            answer = await self._acquire_measured(caps, token)
        if not answer.acquired:
            return False
        if self._holder != token:
            self._holder = token
        self._fence = answer.fence
        return True

    async def _acquire_measured(self, caps: Capabilities, token: str) -> FencedAcquire:
        started = time.perf_counter()
        try:
            answer = await acquire_or_give_back(
                caps,
                name=self.key,
                token=token,
                duration=self.lease_duration,
                error=lambda: LockAcquireError(name=self.name, token=token),
                timeout=self._timeout,
            )
        except Exception:
            _metrics.lock_acquire("lock", "error", time.perf_counter() - started)
            raise
        outcome = "acquired" if answer.acquired else "busy"
        _metrics.lock_acquire("lock", outcome, time.perf_counter() - started)
        return answer

    async def do_acquire_wait(self, token: str) -> None:
        """Take the lock for `token`, retrying every `retry_interval`.

        With a backend that reports releases (`ReleaseWatchBackend`), a
        waiter retries as soon as the lock is freed.
        """
        while not await self.do_acquire(token):
            watch = self.caps.release_watch
            if watch is None:
                await anyio.sleep(self.retry_interval)
                continue
            with anyio.move_on_after(self.retry_interval):
                try:
                    await watch.wait_released(name=self.key)
                except Exception:
                    await anyio.sleep(self.retry_interval)

    async def do_release(self, token: str) -> None:
        """Release the lock held by `token`; `LockNotOwnedError` if it does not."""
        released = await call_backend(
            lambda: self.backend.release(name=self.key, token=token),
            lambda: LockReleaseError(name=self.name, token=token),
            self._timeout,
        )
        if self._holder == token:
            self._holder = None
            self._fence = None
        if not released:
            raise LockNotOwnedError(name=self.name, token=token)

    async def do_owned(self, token: str) -> bool:
        """Whether `token` holds the lock."""
        backend = self.backend
        return await call_backend(
            lambda: backend.owned(name=self.key, token=token),
            lambda: LockStateError(name=self.name, operation=f"owned(token={token!r})"),
            self._timeout,
        )

    # Async API ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Wait for the lock and take it."""
        token = self._task_token()
        if not await self.do_acquire(token):
            await self.do_acquire_wait(token)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the lock (even when the block is cancelled)."""
        token = self._task_token()
        if exc_type is not None:
            with anyio.CancelScope(shield=True):
                await self.do_release(token)
            return
        # The common exit costs no cancel scope: a release interrupted by a
        # cancellation is made again, shielded, before the cancellation goes
        # on (the first one may have been applied: owner-only, it then
        # answers "not owned", which is not an error here).
        try:
            await self.do_release(token)
        except asyncio.CancelledError:
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(LockNotOwnedError),
            ):
                await self.do_release(token)
            raise

    async def acquire(self) -> None:
        """Wait until the lock is free, then take it.

        Raises `LockAcquireError` when the backend fails.
        """
        await self.do_acquire_wait(self._task_token())

    async def acquire_nowait(self) -> None:
        """Take the lock now, or raise `anyio.WouldBlock` if another owner holds it."""
        if not await self.do_acquire(self._task_token()):
            raise anyio.WouldBlock

    async def release(self) -> None:
        """Release the lock; `LockNotOwnedError` if this task does not hold it."""
        await self.do_release(self._task_token())

    async def locked(self) -> bool:
        """Whether any owner holds the lock."""
        backend = self.backend
        return await call_backend(
            lambda: backend.locked(name=self.key),
            lambda: LockStateError(name=self.name, operation="locked()"),
            self._timeout,
        )

    async def owned(self) -> bool:
        """Whether the current task holds the lock."""
        return await self.do_owned(self._task_token())

    @property
    def from_thread(self) -> ThreadLockAdapter:
        """A blocking adapter for code running in a worker thread (`to_thread`)."""
        return ThreadLockAdapter(self)


class ThreadLockAdapter:
    """Blocking access to a `Lock` from an anyio worker thread.

    The owner is the calling thread. Use it from code started with
    `anyio.to_thread.run_sync` (sync task functions run that way).
    """

    def __init__(self, lock: Lock) -> None:
        self._lock = lock

    def __enter__(self) -> Self:
        """Wait for the lock and take it."""
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the lock."""
        self.release()

    def acquire(self) -> None:
        """Wait until the lock is free, then take it."""
        _from_thread().run(self._lock.do_acquire_wait, self._lock._thread_token())

    def acquire_nowait(self) -> None:
        """Take the lock now, or raise `anyio.WouldBlock`."""
        token = self._lock._thread_token()
        if not _from_thread().run(self._lock.do_acquire, token):
            raise anyio.WouldBlock

    def release(self) -> None:
        """Release the lock held by this thread."""
        _from_thread().run(self._lock.do_release, self._lock._thread_token())

    def locked(self) -> bool:
        """Whether any owner holds the lock."""
        locked: bool = _from_thread().run(self._lock.locked)
        return locked

    def owned(self) -> bool:
        """Whether this thread holds the lock."""
        owned: bool = _from_thread().run(
            self._lock.do_owned, self._lock._thread_token()
        )
        return owned


def _from_thread() -> ModuleType:
    """`anyio.from_thread`, imported on first use (it is slow to import)."""
    import anyio.from_thread

    return anyio.from_thread
