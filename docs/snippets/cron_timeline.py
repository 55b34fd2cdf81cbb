"""The life of cron fires across three workers, recorded from a real run.

Three workers run the same `at_least_once` cron task (every 2 s, lease 2 s).
The worker that runs the second fire crashes half a second into it; another
worker takes the fire over once the lease lapses. Every claim, run and
takeover is recorded from the backend calls the workers make, printed, and,
with `--svg PATH`, drawn as an SVG picture (the one in docs/cron.md).

    python docs/snippets/cron_timeline.py [--svg docs/img/cron_fire_life.svg]

Uses Redis when REDIS_URL is set, else the in-process memory backend.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskRouter, current_run

LEASE = 2.0
WORK = 1.0
FIRES = 3
WORKERS = ("worker-1", "worker-2", "worker-3")


@dataclass
class Event:
    """One thing a worker did, `at` seconds after the start."""

    at: float
    worker: str
    what: str  # claimed, busy, run, end, crash, retake-held, retake-done, taken-over
    fire: float


class Recorder:
    """The events of the run."""

    def __init__(self) -> None:
        self.start = time.time()
        self.events: list[Event] = []

    def add(self, worker: str, what: str, fire_ms: float) -> None:
        self.events.append(Event(time.time() - self.start, worker, what, fire_ms))


class RecordingBackend:
    """Passes every call to `inner` and records the fire claims of `worker`."""

    def __init__(self, inner: Any, worker: str, recorder: Recorder) -> None:
        self.inner = inner
        self.worker = worker
        self.recorder = recorder

    async def __aenter__(self) -> RecordingBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        return bool(await self.inner.acquire(name=name, token=token, duration=duration))

    async def release(self, *, name: str, token: str) -> bool:
        return bool(await self.inner.release(name=name, token=token))

    async def locked(self, *, name: str) -> bool:
        return bool(await self.inner.locked(name=name))

    async def owned(self, *, name: str, token: str) -> bool:
        return bool(await self.inner.owned(name=name, token=token))

    async def last_fire(self, *, name: str) -> int | None:
        result: int | None = await self.inner.last_fire(name=name)
        return result

    async def claim_fire(
        self, *, name: str, fire: int, token: str, lease: Any, after: Any = None
    ) -> Any:
        fence = await self.inner.claim_fire(
            name=name, fire=fire, token=token, lease=lease, after=after
        )
        if fence != 0:  # 0: an earlier fire is to be claimed first
            self.recorder.add(self.worker, "busy" if fence is None else "claimed", fire)
        return fence

    async def keep_fire(self, *, name: str, fire: int, token: str, lease: float) -> Any:
        return await self.inner.keep_fire(
            name=name, fire=fire, token=token, lease=lease
        )

    async def finish_fire(self, *, name: str, fire: int, token: str) -> Any:
        return await self.inner.finish_fire(name=name, fire=fire, token=token)

    async def retake_fire(
        self, *, name: str, fire: int, token: str, lease: float
    ) -> Any:
        result = await self.inner.retake_fire(
            name=name, fire=fire, token=token, lease=lease
        )
        what = (
            "taken-over"
            if result.fence is not None
            else "retake-done"
            if result.done
            else "retake-held"
        )
        self.recorder.add(self.worker, what, fire)
        return result


def make_backend() -> Any:
    url = os.environ.get("REDIS_URL")
    if url:
        from grelmicro.sync.redis import RedisSyncBackend

        prefix = f"cron-timeline-{os.getpid()}-{time.time_ns()}:"
        return RedisSyncBackend(url, prefix=prefix, auto_register=False)
    return MemorySyncBackend(auto_register=False)


async def record_run() -> Recorder:
    """Run the three workers through FIRES fires; crash the second fire's runner."""
    recorder = Recorder()
    inner = make_backend()
    crashed: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}
    async with inner:
        # Start just after an even second: the first fire is ~2 s away.
        await anyio.sleep((2 - time.time() % 2) + 0.05)
        first_fire = round(time.time() / 2) * 2 + 2
        second_fire = first_fire + 2
        recorder.start = first_fire - 1.0  # times count from 1 s before fire A
        # The fleet has been running: the fire before A was claimed already
        # (a first start would also run a fire due in the last 0.5 s).
        await inner.claim_fire(
            name="cron:report",
            fire=round((first_fire - 2) * 1000),
            token="earlier",
            lease=None,
        )
        routers = []
        for worker in WORKERS:
            router = TaskRouter()

            async def job(worker: str = worker) -> None:
                fire = current_run().scheduled_at.timestamp()
                recorder.add(worker, "run", fire * 1000)
                if fire == second_fire and not crashed:
                    crashed.append(worker)
                    await anyio.sleep(0.5)
                    recorder.add(worker, "crash", fire * 1000)
                    scopes[worker].cancel()  # the worker dies: nothing more
                    await anyio.sleep_forever()
                await anyio.sleep(WORK)
                recorder.add(worker, "end", fire * 1000)

            router.cron(
                "*/2 * * * * *",
                name="report",
                at_least_once=True,
                lease_seconds=LEASE,
                backend=RecordingBackend(inner, worker, recorder),
                worker=worker,
            )(job)
            routers.append((worker, router.tasks[0]))

        async def run_worker(worker: str, task: Any) -> None:
            with anyio.CancelScope() as scope:
                scopes[worker] = scope
                await task()

        # Until the taken-over fire B has run, before a fourth fire.
        with anyio.move_on_after(first_fire + 2 * FIRES - 0.1 - time.time()):
            async with anyio.create_task_group() as group:
                for worker, task in routers:
                    group.start_soon(run_worker, worker, task)
    return recorder


def print_timeline(recorder: Recorder) -> None:
    for event in recorder.events:
        label = chr(ord("A") + fire_index(recorder, event.fire))
        print(f"{event.at:6.2f}s  {event.worker}  {event.what:<12} fire {label}")


def fire_index(recorder: Recorder, fire_ms: float) -> int:
    fires = sorted({e.fire for e in recorder.events})
    return fires.index(fire_ms)


COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1")


def svg(recorder: Recorder) -> str:
    """The events as an SVG picture: one lane per worker, time to the right."""
    events = recorder.events
    end = max(e.at for e in events) + 0.6
    left, scale, lane_height, top = 110, 680 / end, 60, 40
    width = left + int(end * scale) + 30
    height = top + lane_height * len(WORKERS) + 90

    def x(at: float) -> float:
        return round(left + at * scale, 1)

    def y(worker: str) -> int:
        return top + lane_height * WORKERS.index(worker) + lane_height // 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    fires = sorted({e.fire for e in events})
    started = recorder.start
    for index, fire in enumerate(fires):
        at = fire / 1000 - started
        color = COLORS[index % len(COLORS)]
        parts.append(
            f'<line x1="{x(at)}" y1="{top - 10}" x2="{x(at)}" '
            f'y2="{top + lane_height * len(WORKERS)}" stroke="{color}" '
            'stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x(at)}" y="{top - 16}" text-anchor="middle" '
            f'fill="{color}">fire {chr(65 + index)}</text>'
        )
    for worker in WORKERS:
        parts.append(
            f'<text x="10" y="{y(worker) + 4}">{worker}</text>'
            f'<line x1="{left}" y1="{y(worker)}" x2="{width - 20}" y2="{y(worker)}" '
            'stroke="#ddd"/>'
        )
    # Run bars: full height, or half height when a worker runs two at once.
    stops: dict[tuple[str, float], float] = {}
    for event in events:
        if event.what == "run":
            stops[event.worker, event.fire] = next(
                (
                    e.at
                    for e in events
                    if e.worker == event.worker
                    and e.fire == event.fire
                    and e.what in ("end", "crash")
                    and e.at >= event.at
                ),
                end,
            )
    bars: dict[tuple[str, float], tuple[float, int]] = {}
    runs = [e for e in events if e.what == "run"]
    for event in runs:
        key = (event.worker, event.fire)
        overlapping = [
            other
            for other in runs
            if other is not event
            and other.worker == event.worker
            and other.at < stops[key]
            and event.at < stops[other.worker, other.fire]
        ]
        level = sum(
            1
            for other in overlapping
            if (other.at, other.fire) < (event.at, event.fire)
        )
        height = 9 if overlapping else 18
        bars[key] = (y(event.worker) - 9 + level * 9.5, height)
    for event in sorted(events, key=lambda e: e.what != "run"):  # bars first
        color = COLORS[fires.index(event.fire) % len(COLORS)]
        cx, cy = x(event.at), y(event.worker)
        if event.what == "run":
            top_y, height = bars[event.worker, event.fire]
            stop = stops[event.worker, event.fire]
            parts.append(
                f'<rect x="{cx}" y="{top_y}" width="{round(x(stop) - cx, 1)}" '
                f'height="{height}" rx="3" fill="{color}" opacity="0.85"/>'
            )
        elif event.what == "claimed":
            parts.append(f'<circle cx="{cx}" cy="{cy - 16}" r="5" fill="{color}"/>')
        elif event.what == "busy":
            parts.append(
                f'<circle cx="{cx}" cy="{cy - 16}" r="5" fill="white" '
                f'stroke="{color}" stroke-width="1.5"/>'
            )
        elif event.what == "retake-held":
            parts.append(
                f'<line x1="{cx}" y1="{cy + 12}" x2="{cx}" y2="{cy + 20}" '
                f'stroke="{color}" stroke-width="1.5"/>'
            )
        elif event.what == "retake-done":
            parts.append(
                f'<text x="{cx}" y="{cy + 24}" text-anchor="middle" '
                f'fill="{color}">✓</text>'
            )
        elif event.what == "taken-over":  # drawn on the run it starts
            top_y, height = bars[event.worker, event.fire]
            parts.append(
                f'<text x="{cx + 9}" y="{top_y + height / 2 + 5}" '
                'text-anchor="middle" font-size="14" fill="white">★</text>'
            )
        elif event.what == "crash":
            parts.append(
                f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-size="18" '
                'fill="#e15759" font-weight="bold">✕</text>'
                f'<text x="{cx + 10}" y="{cy + 26}" fill="#e15759">crash</text>'
            )
    axis = top + lane_height * len(WORKERS) + 10
    for second in range(int(end) + 1):
        parts.append(
            f'<text x="{x(second)}" y="{axis + 12}" text-anchor="middle" '
            f'fill="#777">{second}s</text>'
        )
    legend = [
        "● claim won",
        "○ claim lost (watches the fire)",
        "▮ run",
        "| takeover attempt, lease still held",
        "✓ fire completed: stop watching",
        "★ lease lapsed: fire taken over",
    ]
    for index, text in enumerate(legend):
        parts.append(
            f'<text x="{left + (index % 3) * 230}" '
            f'y="{axis + 38 + (index // 3) * 18}" fill="#333">{text}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--svg", type=Path, help="write the picture there")
    args = parser.parse_args()
    recorder = anyio.run(record_run)
    print_timeline(recorder)
    if args.svg is not None:
        args.svg.write_text(svg(recorder))
        print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
