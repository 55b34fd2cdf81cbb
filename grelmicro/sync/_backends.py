"""The default-backend registry.

A backend entered with ``async with backend:`` (or created with
``auto_register=True``) becomes the default for primitives given no
``backend=``. The registry is a plain process-wide stack, not a ContextVar:
primitives are usually created at import time, long before any event loop
runs, and resolve their backend when they are first used.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import Self, cast

from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import BackendNotLoadedError

_loaded: list[SyncBackend] = []

#: The backend of the `TaskManager(broker=...)` whose tasks run in this
#: context. The manager sets it around the creation of its tasks (which copy
#: the context) and resets it right after, in the same task.
_scoped: ContextVar[SyncBackend | None] = ContextVar(
    "grelmicro_scoped_backend", default=None
)


def set_scoped_backend(backend: SyncBackend) -> Token[SyncBackend | None]:
    """Make `backend` the default of the current context, for the tasks it
    creates from now on (they copy the context); reset the token in the same
    task with `reset_scoped_backend` once they are created."""
    return _scoped.set(backend)


def reset_scoped_backend(token: Token[SyncBackend | None]) -> None:
    """Undo `set_scoped_backend` (in the task that set it)."""
    _scoped.reset(token)


def scoped_backend() -> SyncBackend | None:
    """The backend of the manager whose task is running, if any."""
    return _scoped.get()


def register_backend(backend: SyncBackend) -> None:
    """Make `backend` the default backend (the most recent registration wins)."""
    if _loaded and _loaded[-1] is backend:
        return
    _loaded.append(backend)


def unregister_backend(backend: SyncBackend) -> None:
    """Remove every registration of `backend`; the previous default comes back."""
    _loaded[:] = [b for b in _loaded if b is not backend]


def get_default_backend(primitive: str = "this primitive") -> SyncBackend:
    """Return the default backend, or raise `BackendNotLoadedError`.

    The backend of the manager running the current task comes first, then the
    most recently registered backend.
    """
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if not _loaded:
        raise BackendNotLoadedError(primitive)
    return _loaded[-1]


def loaded_backends() -> tuple[SyncBackend, ...]:
    """The registered backends, oldest first."""
    return tuple(_loaded)


class RegisteredBackend:
    """The lifecycle the built-in backends share.

    Entering makes the backend the default; exiting stops that and closes
    what the backend opened itself (`aclose`); a borrowed client stays open.
    """

    async def __aenter__(self) -> Self:
        """Make this backend the default (connections open on first use)."""
        register_backend(cast("SyncBackend", self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop being the default; close what the backend opened itself."""
        unregister_backend(cast("SyncBackend", self))
        await self.aclose()

    async def aclose(self) -> None:
        """Close what the backend opened itself (nothing by default)."""
