"""Errors of the NATS backend, and the mapping from nats-py's exceptions."""

from __future__ import annotations

import nats.errors
import nats.js.errors

from grelmicro.sync.errors import SyncBackendError, SyncBackendTimeoutError


class NatsSyncBackendError(SyncBackendError):
    """A NATS request failed (JetStream API error, unexpected reply...)."""

    def __init__(self, *, operation: str, name: str, detail: str) -> None:
        super().__init__(
            f"NATS sync backend failed: operation={operation}, name={name!r} ({detail})"
        )
        self.operation = operation
        self.name = name


class NatsSyncBackendConnectionError(NatsSyncBackendError):
    """The NATS server could not be reached (refused, closed, no JetStream)."""


class NatsSyncBackendTimeoutError(
    NatsSyncBackendConnectionError, SyncBackendTimeoutError
):
    """The NATS server did not answer in time."""


class NatsSyncBackendBucketError(NatsSyncBackendError):
    """The KV bucket cannot be created or used as it is configured."""


_CONNECTION_ERRORS = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    OSError,
)

#: What a reply that does not follow the JetStream API raises inside nats-py
#: (a body that is not JSON, a missing field, a header block without the
#: expected headers).
MALFORMED_REPLY_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def wrap(operation: str, name: str, exc: BaseException) -> NatsSyncBackendError:
    """`exc` (raised by nats-py) as the backend error a caller can handle."""
    if isinstance(exc, NatsSyncBackendError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError included
        return NatsSyncBackendTimeoutError(
            operation=operation, name=name, detail=f"no answer in time ({detail})"
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return NatsSyncBackendConnectionError(
            operation=operation, name=name, detail=detail
        )
    if isinstance(exc, nats.js.errors.APIError):
        return NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"JetStream refused the request: {exc.description} "
            f"(code {exc.code}, error code {exc.err_code})",
        )
    if isinstance(exc, MALFORMED_REPLY_ERRORS):
        return NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"malformed reply from the server ({detail})",
        )
    return NatsSyncBackendError(operation=operation, name=name, detail=detail)


__all__ = [
    "NatsSyncBackendBucketError",
    "NatsSyncBackendConnectionError",
    "NatsSyncBackendError",
    "NatsSyncBackendTimeoutError",
]
