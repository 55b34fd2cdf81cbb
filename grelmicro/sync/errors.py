"""Errors raised by the synchronization primitives and backends."""

from __future__ import annotations

from grelmicro.errors import GrelmicroError, SettingsValidationError


class SyncError(GrelmicroError):
    """Root of the synchronization errors."""


class SyncSettingsValidationError(SyncError, SettingsValidationError):
    """A backend or broker integration was configured with invalid settings."""


class SyncBackendError(SyncError):
    """A synchronization backend failed (driver, connection or server error)."""


class BackendNotLoadedError(SyncBackendError):
    """No backend was given to a primitive and no default backend is loaded."""

    def __init__(self, primitive: str = "this primitive") -> None:
        super().__init__(
            f"No synchronization backend is loaded for {primitive}. Pass backend=... "
            "to the primitive, enter a backend with 'async with backend:' (for "
            "example MemorySyncBackend(), RedisSyncBackend(url) or "
            "NatsSyncBackend(url)), or give the TaskManager a broker "
            "(TaskManager(broker=broker))"
        )


class BackendNotReadyError(SyncBackendError):
    """The backend's connection is not open yet (the application is starting).

    Raised, for example, while a FastStream app has not connected its broker:
    tasks skip their attempt quietly (DEBUG) instead of logging an error.
    """


class SyncBackendTimeoutError(SyncBackendError, TimeoutError):
    """A backend call did not answer in time."""


class LockAcquireError(SyncBackendError):
    """The backend failed while acquiring a lock."""

    def __init__(self, *, name: str, token: str) -> None:
        super().__init__(f"Failed to acquire lock: name={name!r}, token={token!r}")
        self.name = name
        self.token = token


class LockReleaseError(SyncBackendError):
    """The backend failed while releasing a lock."""

    def __init__(self, *, name: str, token: str) -> None:
        super().__init__(f"Failed to release lock: name={name!r}, token={token!r}")
        self.name = name
        self.token = token


class LockNotOwnedError(LockReleaseError):
    """A lock was released by a token that does not hold it."""

    def __init__(self, *, name: str, token: str) -> None:
        SyncBackendError.__init__(
            self,
            f"Lock not owned: name={name!r}, token={token!r} (it was never acquired, "
            "already released, or its lease expired)",
        )
        self.name = name
        self.token = token


class LockStateError(SyncBackendError):
    """The backend failed while reading the state of a lock (locked/owned)."""

    def __init__(self, *, name: str, operation: str) -> None:
        super().__init__(f"Failed to check lock state: name={name!r}, {operation}")
        self.name = name
        self.operation = operation
