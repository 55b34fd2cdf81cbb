"""A backend wrapper that records how long every call took (and how it ended)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio

from grelmicro.sync.abc import SyncBackend


@dataclass(frozen=True)
class Call:
    """One backend call: operation, key, start and end (monotonic), outcome."""

    operation: str
    name: str
    start: float
    end: float
    outcome: str

    @property
    def granted(self) -> bool:
        """Whether the call took or extended a lock (acquire or its fast path)."""
        return self.outcome in {"True", "0.0"}

    @property
    def duration(self) -> float:
        """Seconds the call took."""
        return self.end - self.start


class RecordingBackend:
    """Delegates to a real backend and records every call in `calls`.

    A call cut short by the caller's timeout (cancellation) is recorded with
    the outcome ``"cancelled"``. `acquire_or_remaining` exists only when the
    wrapped backend has it, so primitives take the same code path as without
    the wrapper.
    """

    def __init__(self, inner: SyncBackend) -> None:
        self.inner = inner
        self.calls: list[Call] = []
        #: Calls not finished yet: id -> (operation, name, start).
        self.in_flight: dict[int, tuple[str, str, float]] = {}
        self._ids = 0
        fast = getattr(inner, "acquire_or_remaining", None)
        if fast is not None:

            async def acquire_or_remaining(
                *, name: str, token: str, duration: float
            ) -> float:
                result: float = await self._record(
                    "acquire_or_remaining",
                    name,
                    fast(name=name, token=token, duration=duration),
                )
                return result

            self.acquire_or_remaining = acquire_or_remaining

    async def _record(self, operation: str, name: str, call: Any) -> Any:
        start = time.monotonic()
        outcome = "cancelled"
        self._ids += 1
        call_id = self._ids
        self.in_flight[call_id] = (operation, name, start)
        try:
            result = await call
            outcome = repr(result)
            return result
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            del self.in_flight[call_id]
            self.calls.append(Call(operation, name, start, time.monotonic(), outcome))

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc_value, traceback)

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        result: bool = await self._record(
            "acquire",
            name,
            self.inner.acquire(name=name, token=token, duration=duration),
        )
        return result

    async def release(self, *, name: str, token: str) -> bool:
        result: bool = await self._record(
            "release", name, self.inner.release(name=name, token=token)
        )
        return result

    async def locked(self, *, name: str) -> bool:
        result: bool = await self._record("locked", name, self.inner.locked(name=name))
        return result

    async def owned(self, *, name: str, token: str) -> bool:
        result: bool = await self._record(
            "owned", name, self.inner.owned(name=name, token=token)
        )
        return result


class SlowReplyBackend(RecordingBackend):
    """A `RecordingBackend` that can slow down one call, before or after the server.

    `delay(name, seconds, where="reply")` holds back the answer of the next
    call on `name` by `seconds` after the server acted (a busy event loop, a
    slow reply path); ``where="request"`` holds the request back before it
    reaches the server (a slow request path). `answered_at` records when the
    server's answer arrived (monotonic).
    """

    def __init__(self, inner: SyncBackend) -> None:
        super().__init__(inner)
        self._delays: dict[str, tuple[float, str]] = {}
        self.answered_at: dict[str, float] = {}

    def delay(self, name: str, seconds: float, where: str = "reply") -> None:
        """Slow down the next call on `name` by `seconds` (`reply` or `request`)."""
        self._delays[name] = (seconds, where)

    async def _record(self, operation: str, name: str, call: Any) -> Any:
        delay = self._delays.pop(name, None)
        if delay is not None and delay[1] == "request":
            await anyio.sleep(delay[0])
        result = await super()._record(operation, name, call)
        if delay is not None:
            self.answered_at[name] = time.monotonic()
            if delay[1] == "reply":
                await anyio.sleep(delay[0])
        return result
