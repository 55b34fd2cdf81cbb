"""Where the backend's NATS client comes from, and its state on this event loop.

One `Connection` object per backend, in one of three modes:

- **own**: built from URLs; the backend opens the client on first use, closes
  it on exit, and opens a new one when it was closed (the server was gone
  longer than the client's reconnect attempts) or when the event loop changed;
- **borrowed**: a connected client given by the user, never closed;
- **provided**: an async callable returning the client (FastStream's
  ``broker.connect()``), awaited on every use, never closed.

Whatever the mode, the client is *prepared* (the bucket found or created and
checked) once per client and event loop, and the backend forgets what it knew
about keys whenever the client reconnected (the server may have lost its
storage meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from nats.aio.client import Client

from grelmicro.sync.errors import SyncBackendError
from grelmicro.sync.nats._settings import redact
from grelmicro.sync.nats.errors import NatsSyncBackendConnectionError, wrap

logger = logging.getLogger("grelmicro.sync")

#: Seconds to open the backend's own connection (built from a URL).
CONNECT_TIMEOUT: Final = 5.0

Prepare = Callable[[Client, str, str], Awaitable[None]]
Provider = Callable[[], Awaitable[Client]]


async def _on_reconnected() -> None:
    logger.info("NATS sync backend reconnected")


#: Options of the connection the backend opens from its URL: two seconds per
#: attempt, and two attempts per server (at first, and after a disconnection):
#: an unreachable server fails fast, and a client that gave up reconnecting
#: is closed, so the next operation opens a new one (a backend outlives
#: server restarts; its requests fail fast meanwhile).
_CONNECT_OPTIONS: Final[dict[str, Any]] = {
    "name": "grelmicro",
    "connect_timeout": 2,
    "reconnect_time_wait": 0.5,
    "max_reconnect_attempts": 1,
    "reconnected_cb": _on_reconnected,
}


class Connection:
    """The NATS client of one backend: its source, and its state on this loop."""

    def __init__(
        self,
        *,
        servers: list[str],
        client: Client | None,
        provider: Provider | None,
        prepare: Prepare,
        forget: Callable[[], None],
    ) -> None:
        self.servers = servers
        self.borrowed = client
        self.provider = provider
        self._prepare = prepare
        self.forget = forget
        #: The client in use; whether it was prepared; the loop it serves.
        self.nc: Client | None = client
        self.ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        #: The server's id for the current connection: it changes when the
        #: client reconnects (nats-py has no public reconnect counter).
        self._client_id: int | None = None
        self._owned: Client | None = None
        #: A task on the owned client's loop that closes it when that loop
        #: ends (or when the client is replaced), so no socket is left open.
        self._keeper: asyncio.Task[None] | None = None

    def describe(self) -> str:
        """The source of the client, for `repr` (passwords redacted)."""
        if self.servers:
            return f"url={redact(','.join(self.servers))!r}"
        if self.borrowed is not None:
            return f"client={self.borrowed!r}"
        return "client=<provider>"

    async def client(self, operation: str, name: str) -> Client:
        """The client to use, connected, prepared over this event loop."""
        if self.provider is not None:
            return await self._provided(operation, name)
        nc = self.nc
        if (
            nc is not None
            and self.ready
            and self._loop is asyncio.get_running_loop()
            and not nc.is_closed
        ):
            self._check_reconnected(nc)
            return nc
        return await self._connect(operation, name)

    def _check_reconnected(self, nc: Client) -> None:
        client_id = nc.client_id
        if client_id != self._client_id:
            self._client_id = client_id
            self.forget()

    def _setup_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            # A new event loop (tests run one per test): an own connection of
            # the old loop is unusable here; it is closed on its own loop.
            self._lock = asyncio.Lock()
            self._drop_owned()
            self._loop = loop
            self.ready = False
        return self._lock

    def _drop_owned(self) -> None:
        """Forget the own client, closing it on its event loop."""
        keeper, self._keeper = self._keeper, None
        owned, self._owned = self._owned, None
        if owned is not None and self.nc is owned:
            self.nc = None
        if keeper is None or keeper.done():
            return
        loop = keeper.get_loop()
        if loop.is_closed():  # pragma: no cover - the loop ended without cancelling
            logger.debug("The event loop of a NATS connection closed before it")
            return
        loop.call_soon_threadsafe(keeper.cancel)

    async def _connect(self, operation: str, name: str) -> Client:
        async with self._setup_lock():
            nc = self.nc
            if nc is None or nc.is_closed:
                if self.borrowed is not None:
                    raise NatsSyncBackendConnectionError(
                        operation=operation,
                        name=name,
                        detail="the NATS client given to NatsSyncBackend is closed",
                    )
                self._drop_owned()
                nc = await self._open(operation, name)
                self.nc = self._owned = nc
                self._keeper = asyncio.get_running_loop().create_task(_keep(nc))
                self.ready = False
            if not self.ready:
                await self._prepare_client(nc, operation, name)
            return nc

    async def _prepare_client(self, nc: Client, operation: str, name: str) -> None:
        self.ready = False
        await self._prepare(nc, operation, name)
        self._client_id = nc.client_id
        self.ready = True

    async def _provided(self, operation: str, name: str) -> Client:
        if self.nc is None or not self.ready:
            async with self._setup_lock():
                nc = await self._call_provider(operation, name)
                if nc is not self.nc or not self.ready:
                    self.nc = nc
                    await self._prepare_client(nc, operation, name)
                return nc
        nc = await self._call_provider(operation, name)
        if nc is not self.nc:
            async with self._setup_lock():
                self.nc = nc
                await self._prepare_client(nc, operation, name)
        else:
            self._check_reconnected(nc)
        return nc

    async def _call_provider(self, operation: str, name: str) -> Client:
        assert self.provider is not None
        try:
            nc = await self.provider()
        except SyncBackendError:
            raise
        except TimeoutError as exc:
            raise wrap(operation, name, exc) from exc
        except Exception as exc:
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail=f"the client provider failed: {type(exc).__name__}: {exc}",
            ) from exc
        if not isinstance(nc, Client):
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail=f"the client provider returned {nc!r}, not a nats Client",
            )
        return nc

    async def _open(self, operation: str, name: str) -> Client:
        nc = Client()
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            logger.debug("NATS connection error: %s: %s", type(exc).__name__, exc)

        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                await nc.connect(
                    servers=self.servers,
                    error_cb=on_error,
                    disconnected_cb=self._on_disconnected,
                    **_CONNECT_OPTIONS,
                )
        except BaseException as exc:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await nc.close()
                except Exception:
                    logger.debug("Closing a failed NATS connection failed")
            if isinstance(exc, Exception):
                servers = redact(",".join(self.servers))
                cause = errors[-1] if errors else exc
                raise NatsSyncBackendConnectionError(
                    operation=operation,
                    name=name,
                    detail=f"cannot connect to NATS at {servers}: "
                    f"{type(cause).__name__}: {cause}",
                ) from exc
            raise
        return nc

    async def _on_disconnected(self) -> None:
        if self._owned is not None and not self._owned.is_closed:
            logger.warning("NATS sync backend disconnected; reconnecting")

    def invalidate(self) -> None:
        """Prepare the client again before the next use (the bucket vanished)."""
        self.ready = False

    async def aclose(self) -> None:
        """Close the own client (a borrowed or provided one stays open)."""
        owned, self._owned = self._owned, None
        keeper, self._keeper = self._keeper, None
        if self.borrowed is None:
            self.nc = None
        self.ready = False
        if owned is None or owned.is_closed:
            if keeper is not None:
                keeper.cancel()
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
            try:
                await owned.close()
            except Exception as exc:
                logger.debug("Closing the NATS connection failed: %s", exc)
        if keeper is not None:
            keeper.cancel()


async def _keep(nc: Client) -> None:
    """Wait until cancelled (loop shutdown, or the client replaced), then close `nc`."""
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        if not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), CONNECT_TIMEOUT)
            except Exception as exc:  # pragma: no cover - best effort
                logger.debug("Closing a replaced NATS connection failed: %s", exc)
