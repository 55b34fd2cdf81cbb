"""Borrow a FastStream broker's connection without ever opening a second one.

FastStream's `await broker.connect()` is idempotent once the broker is
connected (it returns the client it already holds, without I/O), but two
concurrent first calls both open a connection: measured on FastStream 0.7.8,
a backend that connected from a task started in the lifespan raced the app's
own `broker.start()` and NATS saw two client connections. And the lifespan
runs *before* FastStream connects the broker.

So a backend never races the broker's owner. `BrokerConnection` is the
client provider given to `RedisSyncBackend.from_client_provider` /
`NatsSyncBackend.from_client_provider`; it is awaited before every backend
operation and:

1. when the broker is connected, returns `await broker.connect()` (the
   broker's own client, no I/O);
2. when the broker belongs to an application that starts it (a FastStream
   app, `AsgiFastStream`, or FastStream's FastAPI `StreamRouter`), waits for
   that application to connect it, and never connects it itself;
3. when nobody owns the broker (a plain FastAPI lifespan that starts the
   broker itself), waits `CONNECT_GRACE` seconds for the user's own start,
   then calls `await broker.connect()` itself, one caller at a time;
4. once the broker was seen connected and is closed again (the app is
   shutting down), fails at once with `BrokerNotConnectedError` instead of
   waiting, so a late release does not hold the shutdown back.

"Connected" is FastStream's public `broker.running` flag: set by
`broker.start()` (which connects first) and cleared by `broker.stop()`; or,
for a broker nobody started, the backend having connected it itself. No
private attribute of FastStream is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import anyio

from grelmicro.sync.errors import BackendNotReadyError, SyncBackendError

logger = logging.getLogger("grelmicro.sync")

#: Seconds a broker that no application owns is given to be connected by its
#: user before the backend connects it through `broker.connect()`.
CONNECT_GRACE = 1.0

#: Seconds between two checks while waiting for the broker to connect.
POLL_INTERVAL = 0.01

#: Seconds one backend call waits for the application to connect its broker
#: before it gives up quietly (the task skips that attempt at DEBUG level).
STARTUP_WAIT = 1.0

#: Seconds after which a broker still not connected is an error (logged at
#: ERROR by the tasks), not start-up.
STARTUP_GRACE = 30.0


class BrokerNotConnectedError(SyncBackendError):
    """The broker's connection is not open (not started yet, or closed)."""

    def __init__(self, broker: object, *, closed: bool) -> None:
        self.closed = closed
        name = type(broker).__name__
        if closed:
            msg = (
                f"The {name}'s connection is closed: the broker was stopped "
                "while the TaskManager using it was still running"
            )
        else:
            msg = (
                f"The {name} is not connected yet: start it (run the FastStream "
                "app, 'await broker.start()' or 'async with broker:')"
            )
        super().__init__(msg)


class BrokerStartingError(BrokerNotConnectedError, BackendNotReadyError):
    """The application has not connected its broker yet (it is starting)."""


class _BrokerState:
    """What every backend of one broker shares: the connect lock, the seen flag."""

    __slots__ = ("_lock", "_loop", "seen_connected", "self_connected", "waiting_since")

    def __init__(self) -> None:
        self._lock: anyio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.seen_connected = False
        #: The backend connected the broker itself (nobody started it).
        self.self_connected = False
        #: Monotonic time of the first wait for the owner to connect it.
        self.waiting_since: float | None = None

    def lock(self) -> anyio.Lock:
        # A lock belongs to one event loop (tests run one loop per test).
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock = anyio.Lock()
            self._loop = loop
        return self._lock


_states: weakref.WeakKeyDictionary[Any, _BrokerState] = weakref.WeakKeyDictionary()


def broker_state(broker: Any) -> _BrokerState:
    """The shared state of `broker` (created on first use)."""
    state = _states.get(broker)
    if state is None:
        state = _states[broker] = _BrokerState()
    return state


def is_connected(broker: Any) -> bool:
    """Whether `broker.connect()` returns its current client without I/O."""
    return (
        bool(getattr(broker, "running", False)) or broker_state(broker).self_connected
    )


def owner_of(broker: Any) -> Any:
    """The application that starts `broker`, or None.

    FastStream apps (`FastStream`, `AsgiFastStream`) and the FastAPI
    `StreamRouter` put themselves in their broker's context as `"app"`.
    """
    context = getattr(broker, "context", None)
    if context is None:
        return None
    try:
        return context.get("app")
    except Exception:  # a foreign context object: treat the broker as unowned
        return None


def reset(broker: Any) -> None:
    """Forget that `broker` was seen connected (a new run is starting)."""
    state = broker_state(broker)
    state.seen_connected = False
    state.self_connected = False
    state.waiting_since = None


class BrokerConnection:
    """An async client provider returning `broker`'s own connected client."""

    __slots__ = ("_broker", "_state")

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._state = broker_state(broker)

    @property
    def broker(self) -> Any:
        """The broker whose connection is borrowed."""
        return self._broker

    def __repr__(self) -> str:
        return f"BrokerConnection({type(self._broker).__name__})"

    async def __call__(self) -> Any:
        """The broker's client: `await broker.connect()` once it is safe to call."""
        broker = self._broker
        state = self._state
        # Awaited before every backend call: the connected case is inline.
        if getattr(broker, "running", False) or state.self_connected:
            state.seen_connected = True
            return await broker.connect()
        if state.seen_connected:
            raise BrokerNotConnectedError(broker, closed=True)
        async with state.lock():
            if not is_connected(broker):
                await self._wait_or_connect(broker, state)
            state.seen_connected = True
            return await broker.connect()

    async def _wait_or_connect(self, broker: Any, state: _BrokerState) -> None:
        owner = owner_of(broker)
        if owner is not None:
            # Wait a little for the application to connect it; then give up
            # this call quietly (start-up), or loudly once it is overdue.
            now = time.monotonic()
            if state.waiting_since is None:
                state.waiting_since = now
                logger.debug(
                    "Waiting for %s to connect %s",
                    type(owner).__name__,
                    type(broker).__name__,
                )
            with anyio.move_on_after(STARTUP_WAIT):
                while not is_connected(broker):  # noqa: ASYNC110
                    await anyio.sleep(POLL_INTERVAL)
            if is_connected(broker):
                return
            if time.monotonic() - state.waiting_since < STARTUP_GRACE:
                raise BrokerStartingError(broker, closed=False)
            raise BrokerNotConnectedError(broker, closed=False)
        with anyio.move_on_after(CONNECT_GRACE):
            while not is_connected(broker):  # noqa: ASYNC110
                await anyio.sleep(POLL_INTERVAL)
        if not is_connected(broker):
            logger.debug("Connecting %s for the sync backend", type(broker).__name__)
            await broker.connect()
            state.self_connected = True


async def wait_connected(broker: Any) -> None:
    """Wait until `broker` is connected by its application (bounded).

    A broker owned by an application is waited for up to `STARTUP_GRACE`
    seconds, one nobody owns up to `CONNECT_GRACE` (its user may never
    start it: the backend then connects it on first use). The
    `TaskManager(broker=...)` interval scheduler awaits this before its
    first attempts, so a first run that publishes finds the broker connected.
    """
    grace = STARTUP_GRACE if owner_of(broker) is not None else CONNECT_GRACE
    with anyio.move_on_after(grace):
        while not is_connected(broker):  # noqa: ASYNC110
            await anyio.sleep(POLL_INTERVAL)
