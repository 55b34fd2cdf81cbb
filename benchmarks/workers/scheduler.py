"""Scheduler overhead worker: N local jobs every second, in one process.

Interval targets run N jobs every 1 s; cron targets run N jobs on the
six-field schedule ``* * * * * *`` (every whole second).

Started by ``run.py`` once per target and round, in a fresh process (in the
target's own virtual environment). It prints one JSON object:

- ``import_s``: importing the scheduler library;
- ``startup_s``: registering the N jobs and starting the scheduler, until
  the event loop first goes idle (a 1 ms sleep returns within 4 ms): the
  start-up work is done, including the first runs that are due at once;
- ``cpu_per_s``: CPU seconds (user + system) per wall second over the
  measurement window that follows start-up;
- ``peak_rss_mib``: the process's peak resident set size (``VmHWM``);
- ``late_p50_ms`` / ``late_p99_ms`` / ``late_max_ms``: how late each run
  started compared with what the scheduler promises (for interval-after-end
  schedulers: the previous run + 1 s; for APScheduler's fixed-rate interval
  trigger: its own schedule; for cron targets: the fire time, from
  ``current_run().scheduled_at`` for grelmicro, else the whole second just
  passed), over the runs inside the window (each interval job's first run
  excluded);
- ``runs_per_job_s``: runs per job per second inside the window.

Every job is an ``async def`` that only records its start time.

A scheduler that saturates the process may never get back to the event loop
to report: a watchdog thread then opens the window at the start-up cap and
reports what it measured, with ``stalled: true``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import resource
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

INTERVAL = 1.0
#: Give up waiting for the first idle moment after this many seconds (a
#: scheduler that is never idle reports ``startup_idle: false``).
STARTUP_CAP = 30.0


class Recorder:
    """Per-job last start times and the lateness samples inside the window."""

    def __init__(self, jobs: int) -> None:
        self.last = [0.0] * jobs
        self.late = array("d")
        self.runs = 0
        self.window_start = float("inf")
        self.window_end = float("inf")

    def interval_job(self, index: int) -> Callable[[], Awaitable[None]]:
        """A job whose next run is due INTERVAL after its previous start."""
        last = self.last
        late = self.late
        clock = time.monotonic

        async def job() -> None:
            now = clock()
            previous = last[index]
            last[index] = now
            if previous and self.window_start <= now < self.window_end:
                late.append(now - previous - INTERVAL)
                self.runs += 1

        # grelmicro 0.6.0 refuses nested functions: give each a plain name.
        job.__qualname__ = job.__name__ = f"job_{index}"
        return job

    def cron_job(
        self, index: int, due: Callable[[], float] | None = None
    ) -> Callable[[], Awaitable[None]]:
        """A job due at every whole second of the wall clock.

        `due` gives the fire time of the current run when the scheduler tells
        it; else it is the whole second just passed (a run more than 0.99 s
        late is then mistaken for one a hair early).
        """
        late = self.late
        wall = time.time
        mono = time.monotonic

        async def job() -> None:
            now = wall()
            if due is not None:
                delay = now - due()
            else:
                delay = now - math.floor(now)
                if delay > 0.99:  # a hair early for the next second
                    delay -= 1.0
            if self.window_start <= mono() < self.window_end:
                late.append(delay)
                self.runs += 1

        job.__qualname__ = job.__name__ = f"cron_{index}"
        return job


async def run_sleep_loop(rec: Recorder, jobs: int) -> None:
    async def loop(job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await job()
            await asyncio.sleep(INTERVAL)

    tasks = [asyncio.create_task(loop(rec.interval_job(i))) for i in range(jobs)]
    rec.keep = tasks  # type: ignore[attr-defined]


async def run_heap_loop(rec: Recorder, jobs: int) -> None:
    loop = asyncio.get_running_loop()
    job_funcs = [rec.interval_job(i) for i in range(jobs)]
    now = loop.time()
    heap = [(now, i) for i in range(jobs)]
    heapq.heapify(heap)

    async def timer() -> None:
        clock = loop.time
        while True:
            now = clock()
            while heap and heap[0][0] <= now:
                _, index = heapq.heappop(heap)
                await job_funcs[index]()
                heapq.heappush(heap, (clock() + INTERVAL, index))
            await asyncio.sleep(heap[0][0] - clock())

    rec.keep = asyncio.create_task(timer())  # type: ignore[attr-defined]


async def run_cron_sleep_loop(rec: Recorder, jobs: int) -> None:
    async def loop(job: Callable[[], Awaitable[None]]) -> None:
        last = 0.0
        while True:
            due = max(math.floor(time.time()) + 1.0, last + 1.0)
            await asyncio.sleep(due - time.time())
            last = due
            await job()

    tasks = [asyncio.create_task(loop(rec.cron_job(i))) for i in range(jobs)]
    rec.keep = tasks  # type: ignore[attr-defined]


async def run_apscheduler_cron(rec: Recorder, jobs: int) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler()
    for i in range(jobs):
        scheduler.add_job(rec.cron_job(i), "cron", second="*", id=str(i))
    scheduler.start()
    rec.keep = scheduler  # type: ignore[attr-defined]


async def run_grelmicro_cron(rec: Recorder, jobs: int) -> None:
    from grelmicro.task import TaskManager, current_run

    def due() -> float:
        return current_run().scheduled_at.timestamp()

    manager = TaskManager()
    for i in range(jobs):
        manager.cron("* * * * * *", name=f"cron-{i}", local=True)(rec.cron_job(i, due))
    await manager.__aenter__()
    rec.keep = manager  # type: ignore[attr-defined]


async def run_apscheduler(rec: Recorder, jobs: int) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler()
    first_due = [0.0] * jobs
    wall = time.time

    async def job(index: int) -> None:
        now = wall()
        # APScheduler's interval trigger is fixed-rate: due = first + k * 1 s.
        late = (now - first_due[index]) % INTERVAL
        if late > 0.9 * INTERVAL:  # a hair early
            late -= INTERVAL
        mono = time.monotonic()
        if rec.window_start <= mono < rec.window_end:
            rec.late.append(late)
            rec.runs += 1

    added = [
        scheduler.add_job(job, "interval", seconds=INTERVAL, args=(i,), id=str(i))
        for i in range(jobs)
    ]
    scheduler.start()
    for i, entry in enumerate(added):
        first_due[i] = entry.next_run_time.timestamp()
    rec.keep = scheduler  # type: ignore[attr-defined]


async def run_grelmicro(rec: Recorder, jobs: int) -> None:
    from grelmicro.task import TaskManager

    manager = TaskManager()
    for i in range(jobs):
        manager.interval(seconds=INTERVAL, name=f"job-{i}")(rec.interval_job(i))
    await manager.__aenter__()
    rec.keep = manager  # type: ignore[attr-defined]


TARGETS: dict[str, tuple[str, Callable[[Recorder, int], Awaitable[None]]]] = {
    "sleep-loop": ("asyncio", run_sleep_loop),
    "heap-loop": ("asyncio", run_heap_loop),
    "apscheduler": ("apscheduler.schedulers.asyncio", run_apscheduler),
    "grelmicro060": ("grelmicro.task", run_grelmicro),
    "grelmicro": ("grelmicro.task", run_grelmicro),
    "cron-sleep-loop": ("asyncio", run_cron_sleep_loop),
    "apscheduler-cron": ("apscheduler.schedulers.asyncio", run_apscheduler_cron),
    "grelmicro-cron": ("grelmicro.task", run_grelmicro_cron),
}


def _where(path: str | None) -> str | None:
    """Where a module was imported from, without this machine's directories."""
    if path is None:
        return None
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        return "site-packages/" + "/".join(parts[parts.index("site-packages") + 1 :])
    if "grelmicro" in parts:
        return "repository/" + "/".join(
            parts[len(parts) - parts[::-1].index("grelmicro") - 1 :]
        )
    return "stdlib/" + parts[-2] + "/" + parts[-1]


def _version(target: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    package = {
        "apscheduler": "apscheduler",
        "apscheduler-cron": "apscheduler",
        "grelmicro060": "grelmicro",
        "grelmicro": "grelmicro",
        "grelmicro-cron": "grelmicro",
    }.get(target)
    if package is None:
        return sys.version.split()[0]
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM).

    Not ``ru_maxrss``: Linux keeps that across ``execve``, so a child started
    by a big parent reports the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Report:
    """Prints the one JSON result, from the event loop or, if the loop is too
    saturated to get there, from the watchdog thread; then exits."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args = args
        self.rec = rec
        self.base: dict[str, Any] = {"target": args.target, "jobs": args.jobs}
        self._lock = threading.Lock()

    def figures(self, cpu: float, wall: float) -> dict[str, Any]:
        late = sorted(self.rec.late)

        def pick(q: float) -> float:
            if not late:
                return float("nan")
            return 1000 * late[min(len(late) - 1, int(len(late) * q))]

        return {
            "cpu_per_s": cpu / wall,
            "peak_rss_mib": peak_rss_mib(),
            "late_p50_ms": pick(0.50),
            "late_p99_ms": pick(0.99),
            "late_max_ms": 1000 * late[-1] if late else float("nan"),
            "runs_per_job_s": self.rec.runs / self.args.jobs / wall,
        }

    def emit(self, result: dict[str, Any]) -> None:
        with self._lock:  # never released: the first report ends the process
            sys.stdout.write(json.dumps(self.base | result) + "\n")
            sys.stdout.flush()
            # Tearing down thousands of jobs is not part of the measurement.
            os._exit(0)

    def watchdog(self, started: float) -> None:
        """If the loop has not opened the window by the start-up cap, open it
        here; if it has not reported by the window's end plus a grace, report
        what is known (``stalled``: the loop could not keep up)."""
        time.sleep(max(0.0, started + STARTUP_CAP + 1.0 - time.perf_counter()))
        rec, seconds = self.rec, self.args.seconds
        if rec.window_start == float("inf"):
            rec.window_start = time.monotonic()
            rec.window_end = rec.window_start + seconds
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        remaining = rec.window_end - time.monotonic()
        time.sleep(remaining if remaining > 1.0 else seconds)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        time.sleep(10.0)  # the loop's own report, if it is only late
        self.emit(
            {
                "startup_s": STARTUP_CAP,
                "startup_idle": False,
                "stalled": True,
                **self.figures(cpu, wall),
            }
        )


async def main(args: argparse.Namespace) -> None:
    module, start = TARGETS[args.target]
    started = time.perf_counter()
    imported = __import__(module, fromlist=["_"])
    import_s = time.perf_counter() - started
    rec = Recorder(args.jobs)
    report = Report(args, rec)
    report.base |= {
        "version": _version(args.target),
        "library": _where(getattr(imported, "__file__", None)),
        "import_s": import_s,
    }

    started = time.perf_counter()
    threading.Thread(target=report.watchdog, args=(started,), daemon=True).start()
    await start(rec, args.jobs)
    # Start-up ends when the event loop first goes idle: everything the start
    # set off (including the first runs that are due at once) is done.
    idle = False
    while not idle:
        probe = time.perf_counter()
        await asyncio.sleep(0.001)
        idle = time.perf_counter() - probe < 0.004
        if probe - started > STARTUP_CAP:  # never idle: report the cap
            break
    startup_s = probe - started

    if rec.window_start == float("inf"):
        rec.window_start = time.monotonic()
        rec.window_end = rec.window_start + args.seconds
    cpu0 = cpu_seconds()
    wall0 = time.perf_counter()
    await asyncio.sleep(max(0.0, rec.window_end - time.monotonic()))
    cpu = cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    report.emit(
        {"startup_s": startup_s, "startup_idle": idle, **report.figures(cpu, wall)}
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    asyncio.new_event_loop().run_until_complete(main(parser.parse_args()))
