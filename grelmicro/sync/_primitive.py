"""What every synchronization primitive shares: naming, backend lookup, calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar
from uuid import UUID, uuid4

from grelmicro._validate import SettingsValidationError, non_empty_str
from grelmicro.sync._backends import get_default_backend
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import BackendNotLoadedError, SyncBackendError

T = TypeVar("T")

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, worker={self.worker!r})"


WaitReleased = Callable[..., Awaitable[None]]


def wait_released_of(backend: SyncBackend | None) -> WaitReleased | None:
    """The backend's optional `wait_released(*, name)` method, if it has one.

    It returns once the key is seen free (released, deleted or expired), or
    earlier: callers check again by acquiring.
    """
    if backend is None:
        return None
    waiter: WaitReleased | None = getattr(backend, "wait_released", None)
    return waiter


async def call_backend(
    call: Callable[[], Awaitable[T]],
    error: Callable[[], SyncBackendError],
    timeout: float,  # noqa: ASYNC109
) -> T:
    """Run one backend call bounded by `timeout`, wrapping every failure in `error()`.

    `BackendNotLoadedError` is raised as itself; cancellation passes through.
    """
    try:
        # asyncio's own timeout: the same bound as anyio.fail_after at a
        # fraction of the cost on this hot path (grelmicro runs on asyncio).
        async with asyncio.timeout(timeout):
            return await call()
    except BackendNotLoadedError:
        raise
    except Exception as exc:
        raise error() from exc
