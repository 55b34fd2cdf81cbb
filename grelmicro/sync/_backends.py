"""The default-backend registry.

A backend entered with ``async with backend:`` (or created with
``auto_register=True``) becomes the default for primitives given no
``backend=``. The registry is a plain process-wide stack, not a ContextVar:
primitives are usually created at import time, long before any event loop
runs, and resolve their backend when they are first used.
"""

from __future__ import annotations

from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import BackendNotLoadedError

_loaded: list[SyncBackend] = []


def register_backend(backend: SyncBackend) -> None:
    """Make `backend` the default backend (the most recent registration wins)."""
    if _loaded and _loaded[-1] is backend:
        return
    _loaded.append(backend)


def unregister_backend(backend: SyncBackend) -> None:
    """Remove every registration of `backend`; the previous default comes back."""
    _loaded[:] = [b for b in _loaded if b is not backend]


def get_default_backend(primitive: str = "this primitive") -> SyncBackend:
    """Return the default backend, or raise `BackendNotLoadedError`."""
    if not _loaded:
        raise BackendNotLoadedError(primitive)
    return _loaded[-1]


def loaded_backends() -> tuple[SyncBackend, ...]:
    """The registered backends, oldest first."""
    return tuple(_loaded)
