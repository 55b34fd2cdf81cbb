"""Calls made while another is in flight go out together, in one pipeline.

A lone call (nothing else in flight: the sequential lock cycle) is sent at
once, exactly as a plain ``EVALSHA``: no added latency and no extra task.
A call made while another call or batch is in flight, or during a burst
announced by the scheduler (`grelmicro.sync._burst`), is queued instead;
the queue is sent once nothing is in flight (at the end of the event-loop
turn the last answer came in), as one pipeline (one socket write, one
round trip), and every caller gets its own answer from it. At most one
call or batch of a backend is in flight at a time, so the server applies
its calls in the order they were made. A worker whose locked tasks fall
due together pays one round trip for all of them, and coroutines that
cycle locks concurrently share round trips instead of each paying
redis-py's per-command cost.

Bound: a queued call waits for the call or batch in flight (one round
trip) and for the end of the loop turn; no timer is involved.

Cancellation: a call cancelled while queued is dropped before it is sent
(nothing reaches the server). A call cancelled after its batch was sent
lets the batch finish for the others; its caller treats the answer as
lost, as for any call cancelled in flight (the primitives give a lease
back, see `grelmicro.sync._primitive`), and that give-back is sent after
the batch is answered, so the server applies them in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from grelmicro.sync import _burst as burst
from grelmicro.sync.redis._connection import RedisClient
from grelmicro.sync.redis._scripts import Script

#: The running flush tasks (the loop keeps only weak references to tasks).
_FLUSHES: set[asyncio.Task[None]] = set()


class Call:
    """One queued script call and the future its caller awaits."""

    __slots__ = ("args", "future", "keys", "script")

    def __init__(
        self,
        script: Script,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        future: asyncio.Future[Any],
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future


#: Sends a batch: the client and the bound on commands in flight.
ClientGetter = Callable[[], Awaitable[tuple[RedisClient, asyncio.Semaphore | None]]]


class Batcher:
    """One call or batch in flight per backend (per event loop), in order.

    Calls are sent in the order they are made: a call made while another
    call or batch is in flight waits for it to be answered, then goes out
    with every call queued meanwhile, in one pipeline. So the server applies
    a backend's calls in the order its callers made them (a give-back made
    after an acquisition is applied after it), and many concurrent calls
    cost a few round trips instead of one each.
    """

    __slots__ = ("_flushing", "_get_client", "_in_flight", "_loop", "_queue")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = False
        self._flushing = False
        self._queue: list[Call] = []
        self._get_client: ClientGetter | None = None

    def idle(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether to send a call at once: nothing in flight or queued on
        `loop`, and no burst of calls announced for this turn."""
        if self._loop is not loop:
            # Another event loop: the old one's calls are gone with it.
            self._loop = loop
            self._in_flight = self._flushing = False
            self._queue = []
        return not (
            self._in_flight or self._flushing or self._queue or burst.active(loop)
        )

    def enter(self) -> None:
        """A call is sent at once (the caller sends it)."""
        self._in_flight = True

    def leave(self) -> None:
        """A call sent at once got its answer (or failed): send the queue."""
        self._in_flight = False
        self._schedule_flush()

    async def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        get_client: ClientGetter,
        script: Script,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
    ) -> Any:
        """Queue the call for the next batch and wait for its own answer."""
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(Call(script, keys, args, future))
        self._get_client = get_client
        self._schedule_flush()
        return await future

    def _schedule_flush(self) -> None:
        """Send the queue once nothing is in flight, at the end of this turn.

        The flush task's first step runs after every callback already ready
        in this turn: the calls they make join the batch.
        """
        if self._in_flight or self._flushing or not self._queue:
            return
        loop, get_client = self._loop, self._get_client
        if loop is None or get_client is None:  # pragma: no cover - set by submit
            return
        self._flushing = True
        task = loop.create_task(self._flush(get_client))
        _FLUSHES.add(task)
        task.add_done_callback(_FLUSHES.discard)

    async def _flush(self, get_client: ClientGetter) -> None:
        calls = [call for call in self._queue if not call.future.done()]
        self._queue = []
        self._in_flight = True
        self._flushing = False
        try:
            if calls:
                await self._send(get_client, calls)
        finally:
            self._in_flight = False
            self._schedule_flush()

    @staticmethod
    async def _send(get_client: ClientGetter, calls: list[Call]) -> None:
        try:
            client, limit = await get_client()
            if limit is None:
                answers = await send(client, calls)
            else:
                async with limit:
                    answers = await send(client, calls)
        except asyncio.CancelledError:
            for call in calls:
                call.future.cancel()
            raise
        except Exception as exc:
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
        else:
            for call, answer in zip(calls, answers, strict=True):
                if call.future.done():
                    continue  # its caller gave up: the answer is not awaited
                if isinstance(answer, Exception):
                    call.future.set_exception(answer)
                else:
                    call.future.set_result(answer)


async def send(client: RedisClient, calls: Sequence[Call]) -> list[Any]:
    """Run `calls` in one pipeline; answers (or errors) in order.

    Scripts the server does not know (NOSCRIPT: after a restart or a SCRIPT
    FLUSH) are sent again with EVAL, which also caches them.
    """
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(call.script.sha, call.script.keys, *call.keys, *call.args)
    answers: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [
        i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)
    ]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            call = calls[i]
            pipe.eval(call.script.source, call.script.keys, *call.keys, *call.args)
        for i, answer in zip(
            missing, await pipe.execute(raise_on_error=False), strict=True
        ):
            answers[i] = answer
    return answers
