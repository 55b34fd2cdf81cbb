"""Draw docs/img/fencing-timeline.svg from a real run of the stalled-holder case.

Two worker processes (tests/integration/_fencing_worker.py) share a `Lock`
on Redis and write through the fenced store of examples/fencing/:

1. worker A takes the lock and writes with its token every 0.25 s;
2. A is frozen with SIGSTOP (a GC pause, a suspended VM);
3. its lease expires on the server; worker B takes the lock (a higher
   token), writes, releases;
4. A is resumed with SIGCONT and writes again, with its old token: the
   store rejects it.

Every time drawn comes from the workers' own answers (wall clock, one
machine). The SVG is written directly (no plotting library).

    python scripts/fencing_timeline.py             # a local redis-server
    REDIS_URL=redis://localhost:6379 python scripts/fencing_timeline.py
    python scripts/fencing_timeline.py --out /tmp/timeline.svg
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration._fencing_worker import CommandWorker  # noqa: E402

LEASE = 1.5
EVERY = 0.25


@dataclass
class Timeline:
    """What happened, in seconds since A took the lock."""

    lease: float
    a_token: int = 0
    b_token: int = 0
    a_held: float = 0.0
    stopped: float = 0.0
    resumed: float = 0.0
    b_acquired: float = 0.0
    b_released: float = 0.0
    a_writes: list[tuple[float, str]] = field(default_factory=list)
    b_writes: list[tuple[float, str]] = field(default_factory=list)
    end: float = 0.0


def record(redis_url: str, directory: Path) -> Timeline:
    """Run the scenario once; the times relative to A's acquisition."""
    namespace = f"grelmicro-timeline-{uuid4().hex[:8]}:"
    argv = ["--backend", "redis", "--url", redis_url, "--namespace", namespace]
    argv += ["--store-url", redis_url]
    a = CommandWorker("A", argv, directory)
    b = CommandWorker("B", argv, directory)
    try:
        a.wait_ready()
        b.wait_ready()
        key = f"{namespace}report"
        a.send("hold", "report", key, LEASE, EVERY)
        _, a_token, held = a.expect("held", 10)
        time.sleep(0.6)
        stopped = a.signal(signal.SIGSTOP)
        time.sleep(0.05)
        b.send("take", "report", key, LEASE)
        _, b_token, b_acquired = b.expect("acquired", LEASE + 10)
        b_write = b.expect("write", 10)
        _, b_released = b.expect("released", 10)
        time.sleep(max(0.0, float(b_released) + 0.6 - time.time()))
        resumed = a.signal(signal.SIGCONT)
        a_writes = []
        while True:
            fields = a.read(10)
            if fields[0] == "write":
                a_writes.append(fields)
            if fields[0] == "done":
                break
        end = time.time()
    finally:
        a.close()
        b.close()
    t0 = float(held)
    timeline = Timeline(
        lease=LEASE,
        a_token=int(a_token),
        b_token=int(b_token),
        a_held=0.0,
        stopped=stopped - t0,
        resumed=resumed - t0,
        b_acquired=float(b_acquired) - t0,
        b_released=float(b_released) - t0,
        # When each write was answered (the store applied it just before).
        a_writes=[(float(w[2]) - t0, w[4]) for w in a_writes],
        b_writes=[(float(b_write[2]) - t0, b_write[4])],
        end=end - t0,
    )
    rejected = [w for w in timeline.a_writes if w[1] == "rejected"]
    if not rejected or rejected[0][0] < timeline.resumed:
        msg = f"the resumed holder's write was not rejected: {timeline}"
        raise SystemExit(msg)
    return timeline


# Drawing ------------------------------------------------------------------------

WIDTH, HEIGHT = 960, 355
LEFT, RIGHT = 150, 30
LANES = {"A": 80, "B": 150, "store": 230}
AXIS_Y = 285
GREEN, RED, GREY, BLUE, INK = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0", "#212121"


class Svg:
    """A minimal SVG writer."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        """Horizontal position of time `t`."""
        return LEFT + (WIDTH - LEFT - RIGHT) * t / self.span

    def add(self, element: str) -> None:
        """Append raw SVG."""
        self.parts.append(element)

    def rect(self, t0: float, t1: float, y: float, h: float, **style: str) -> None:
        """A bar from `t0` to `t1`."""
        attrs = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in style.items())
        self.add(
            f'<rect x="{self.x(t0):.1f}" y="{y:.1f}" '
            f'width="{max(self.x(t1) - self.x(t0), 1):.1f}" height="{h:.1f}" {attrs}/>'
        )

    def text(
        self, x: float, y: float, content: str, *, anchor: str = "start", **style: str
    ) -> None:
        """A label."""
        attrs = " ".join(f'{k.replace("_", "-")}="{v}"' for k, v in style.items())
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {attrs}>'
            f"{escape(content)}</text>"
        )

    def render(self) -> str:
        """The document."""
        body = "\n  ".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            'font-family="Helvetica, Arial, sans-serif" font-size="13">\n  '
            f"{body}\n</svg>\n"
        )


def draw(timeline: Timeline) -> str:
    """The timeline as an SVG document."""
    t = timeline
    svg = Svg(span=t.end + 0.7)
    svg.add(f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>')
    svg.add(
        '<defs><pattern id="frozen" width="8" height="8" '
        'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="4" height="8" fill="{GREY}" opacity="0.5"/></pattern></defs>'
    )
    svg.text(
        LEFT,
        24,
        "A paused holder wakes up after its lease: the store rejects its write",
        font_weight="bold",
        font_size="15",
    )
    svg.text(LEFT - 12, LANES["A"] + 18, f"worker A (token {t.a_token})", anchor="end")
    svg.text(LEFT - 12, LANES["B"] + 18, f"worker B (token {t.b_token})", anchor="end")
    svg.text(LEFT - 12, LANES["store"] + 6, "fenced store", anchor="end")
    # A's lease, as the server keeps it.
    lease_end = t.a_held + t.lease
    svg.rect(t.a_held, lease_end, LANES["A"] - 14, 6, fill=BLUE, opacity="0.35")
    svg.text(svg.x(t.a_held), LANES["A"] - 18, "A's lease", fill=BLUE, font_size="11")
    # A: running, frozen, running again.
    svg.rect(t.a_held, t.stopped, LANES["A"], 28, fill=GREEN, opacity="0.8")
    svg.rect(t.stopped, t.resumed, LANES["A"], 28, fill="url(#frozen)", stroke=GREY)
    svg.text(
        (svg.x(t.stopped) + svg.x(t.resumed)) / 2,
        LANES["A"] + 18,
        "frozen (SIGSTOP): still believes it holds the lock",
        anchor="middle",
        font_size="12",
    )
    last = max(w[0] for w in t.a_writes)
    svg.rect(t.resumed, last, LANES["A"], 28, fill=GREEN, opacity="0.8")
    # B: waits for the lock, holds it, writes, releases.
    svg.rect(t.b_acquired, t.b_released, LANES["B"], 28, fill=GREEN, opacity="0.8")
    svg.text(
        svg.x(t.b_acquired) - 6,
        LANES["B"] + 18,
        "takes the lock",
        anchor="end",
        font_size="12",
    )
    # The store: every write, by when it was answered.
    y = LANES["store"]
    svg.add(
        f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" '
        f'stroke="{INK}" stroke-width="1"/>'
    )
    writes = [(when, outcome, "A") for when, outcome in t.a_writes]
    writes += [(when, outcome, "B") for when, outcome in t.b_writes]
    for when, outcome, writer in writes:
        x = svg.x(when)
        source = LANES[writer] + 28
        color = GREEN if outcome == "ok" else RED
        svg.add(
            f'<line x1="{x:.1f}" y1="{source}" x2="{x:.1f}" y2="{y - 6}" '
            f'stroke="{color}" stroke-width="1" stroke-dasharray="3,2"/>'
        )
        if outcome == "ok":
            svg.add(f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="{GREEN}"/>')
        else:
            svg.add(
                f'<path d="M{x - 6:.1f},{y - 6} L{x + 6:.1f},{y + 6} '
                f'M{x - 6:.1f},{y + 6} L{x + 6:.1f},{y - 6}" '
                f'stroke="{RED}" stroke-width="3"/>'
            )
            svg.text(
                x - 6,
                y + 24,
                f"rejected: token {t.a_token} < {t.b_token}",
                fill=RED,
                font_weight="bold",
            )
    b_when = t.b_writes[0][0]
    svg.text(
        svg.x(b_when),
        y + 24,
        f"accepted: token {t.b_token}",
        anchor="middle",
        fill=GREEN,
    )
    svg.text(
        svg.x(lease_end),
        LANES["B"] + 48,
        "lease expired on the server",
        anchor="middle",
        fill=BLUE,
        font_size="11",
    )
    svg.text(
        svg.x(t.a_held),
        y + 24,
        f"accepted: token {t.a_token}",
        fill=GREEN,
    )
    rejected = next(w[0] for w in t.a_writes if w[1] == "rejected")
    # Time axis.
    svg.add(
        f'<line x1="{LEFT}" y1="{AXIS_Y}" x2="{WIDTH - RIGHT}" y2="{AXIS_Y}" '
        f'stroke="{INK}"/>'
    )
    step = 0.5
    tick = 0.0
    while tick <= svg.span:
        x = svg.x(tick)
        svg.add(
            f'<line x1="{x:.1f}" y1="{AXIS_Y}" x2="{x:.1f}" y2="{AXIS_Y + 5}" '
            f'stroke="{INK}"/>'
        )
        svg.text(x, AXIS_Y + 19, f"{tick:g} s", anchor="middle", font_size="11")
        tick += step
    for when, label in ((t.stopped, "SIGSTOP"), (t.resumed, "SIGCONT")):
        x = svg.x(when)
        svg.add(
            f'<line x1="{x:.1f}" y1="{LANES["A"] - 4}" x2="{x:.1f}" '
            f'y2="{AXIS_Y}" stroke="{INK}" stroke-dasharray="2,3" opacity="0.6"/>'
        )
        svg.text(x, AXIS_Y + 38, label, anchor="middle", font_size="11")
    svg.text(
        LEFT,
        HEIGHT - 8,
        f"measured: lease {t.lease:g} s; A frozen {t.resumed - t.stopped:.2f} s; "
        f"B took the lock {t.b_acquired - lease_end:.3f} s after A's lease ended; "
        f"A's write rejected {rejected - t.resumed:.3f} s after SIGCONT",
        font_size="11",
        fill=GREY,
    )
    return svg.render()


def main() -> None:
    """Record a run, write the SVG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "img" / "fencing-timeline.svg"
    )
    args = parser.parse_args()
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        from tests.servers import RedisServer

        server = RedisServer(source="local").open()
        url = server.url
    try:
        with tempfile.TemporaryDirectory(prefix="fencing-timeline-") as directory:
            timeline = record(url, Path(directory))
    finally:
        if server is not None:
            server.close()
    args.out.write_text(draw(timeline))
    rejected = next(w for w in timeline.a_writes if w[1] == "rejected")
    print(f"wrote {args.out}")
    print(
        f"A token {timeline.a_token}, frozen {timeline.resumed - timeline.stopped:.2f}s "
        f"(lease {timeline.lease}s); B token {timeline.b_token} took the lock "
        f"{timeline.b_acquired - timeline.lease:.3f}s after A's acquisition + lease; "
        f"A's write {rejected[0] - timeline.resumed:.3f}s after SIGCONT: rejected"
    )


if __name__ == "__main__":
    main()
