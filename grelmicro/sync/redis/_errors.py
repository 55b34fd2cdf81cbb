"""The Redis backend's errors, and how driver errors are wrapped into them."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from grelmicro.sync.errors import SyncBackendError, SyncBackendTimeoutError


class RedisSyncBackendError(SyncBackendError):
    """A Redis command failed (server error, wrong key type, script error...)."""

    def __init__(self, *, operation: str, name: str, cause: BaseException) -> None:
        super().__init__(
            f"Redis sync backend failed: operation={operation}, name={name!r} "
            f"({type(cause).__name__}: {cause})"
        )
        self.operation = operation
        self.name = name


class RedisSyncBackendConnectionError(RedisSyncBackendError):
    """The Redis server could not be reached (refused, reset, closed)."""


class RedisSyncBackendTimeoutError(
    RedisSyncBackendConnectionError, SyncBackendTimeoutError
):
    """The Redis server did not answer in time."""


class RedisSyncBackendReplicationError(RedisSyncBackendError):
    """A write was not acknowledged by `wait_replicas` replicas in time.

    Raised only by a backend created with `wait_replicas`: an acquisition
    that is not known to be on enough replicas is given back (released) before
    this is raised, so nobody holds a lock a failover could silently lose.
    """


class Unacknowledged(Exception):
    """A write fewer replicas than `wait_replicas` acknowledged in time."""

    def __init__(self, answer: int, acks: int) -> None:
        super().__init__(answer, acks)
        self.answer = answer
        self.acks = acks


class ReplicaAcknowledgementMissingError(Exception):
    """The cause of a `RedisSyncBackendReplicationError`."""


def wrap(operation: str, name: str, exc: BaseException) -> RedisSyncBackendError:
    """`exc` as the backend error for `operation` on `name`."""
    if isinstance(exc, RedisSyncBackendError):
        return exc
    if isinstance(exc, ReplicaAcknowledgementMissingError):
        return RedisSyncBackendReplicationError(
            operation=operation, name=name, cause=exc
        )
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return RedisSyncBackendTimeoutError(operation=operation, name=name, cause=exc)
    if isinstance(exc, RedisConnectionError | OSError):
        return RedisSyncBackendConnectionError(
            operation=operation, name=name, cause=exc
        )
    return RedisSyncBackendError(operation=operation, name=name, cause=exc)
