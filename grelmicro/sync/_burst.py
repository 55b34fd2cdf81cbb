"""A hint from the scheduler to the backends: many calls are coming this turn.

When the interval scheduler starts several coordinated attempts at once,
their first backend calls are all made in the next event-loop turn. A
backend that sends a call at once when nothing else is in flight (the Redis
backend) would send the first of them alone, and the others together one
turn later: two round trips, and the first attempt answered apart from the
others. During a burst it queues every call, so they all go out together.
"""

from __future__ import annotations

import asyncio

_loop: asyncio.AbstractEventLoop | None = None


def begin(loop: asyncio.AbstractEventLoop) -> None:
    """Calls made until the end of the next turn of `loop` come in a burst.

    The attempts' first steps are already scheduled when this is called:
    the end marker, scheduled after them, runs once they all ran.
    """
    global _loop
    if _loop is not loop:
        _loop = loop
        loop.call_soon(_end, loop)


def _end(loop: asyncio.AbstractEventLoop) -> None:
    global _loop
    if _loop is loop:
        _loop = None


def active(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a burst of calls is being made on `loop` in this turn."""
    return _loop is loop
