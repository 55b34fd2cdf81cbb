"""Takeover: stop the leader (SIGTERM or SIGKILL), time to the next
leader-gated run on another worker."""

from __future__ import annotations

import os
import queue
import signal
import time
from typing import Any

from runner.common import (
    Context,
    Event,
    Settings,
    Target,
    Worker,
    log,
    summarize,
    wait_for_event,
)
from runner.envs import Env
from runner.load import TARGETS

NAME = "takeover"
SERVERS = True  # needs Redis and NATS


def environments(baseline: str | None = None) -> set[str]:
    return {t.env for t in TARGETS}


class Pool:
    """N takeover workers of one target; finds the leader, stops it, replaces it."""

    def __init__(self, s: Settings, target: Target, env: Env, url: str) -> None:
        self.s = s
        self.env = env
        self.args = [
            "--target",
            target.id,
            "--url",
            url,
            "--namespace",
            f"takeover_{target.id.replace('-', '_')}",
            "--lease",
            str(s.takeover_lease),
            "--retry",
            str(s.takeover_retry),
            "--interval",
            str(s.takeover_interval),
        ]
        self.events: queue.Queue[Event] = queue.Queue()
        self.workers: dict[int, Worker] = {}
        self.last_run: dict[int, float] = {}
        #: When each worker last became leader (wall clock).
        self.leader_at: dict[int, float] = {}
        for _ in range(s.takeover_workers):
            self.spawn()

    def spawn(self) -> None:
        worker = Worker(self.env, "takeover.py", self.args, events=self.events)
        self.workers[worker.pid] = worker
        self.wait_for(lambda e: e[1] is worker and e[2].startswith("READY"), 60)

    def _note(self, event: Event) -> None:
        _, worker, line = event
        if line.startswith("RUN "):
            self.last_run[worker.pid] = float(line.split()[2])
        elif line.startswith("LEADER "):
            self.leader_at[worker.pid] = float(line.split()[2])
        elif line == "" and worker.pid in self.workers:
            raise RuntimeError(f"worker {worker.pid} exited: {worker.stderr_tail()}")

    def wait_for(self, match: Any, timeout: float) -> Event:
        return wait_for_event(self.events, match, timeout, note=self._note)

    def drain(self, seconds: float) -> None:
        """Consume events for `seconds`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self._note(self.events.get(timeout=remaining))
            except queue.Empty:
                return

    def leader(self) -> Worker:
        """The worker that ran the gated task last, once it runs steadily."""
        self.last_run.clear()
        self.wait_for(lambda e: e[2].startswith("RUN "), self.s.takeover_lease * 4 + 10)
        self.drain(3 * self.s.takeover_interval + 0.05)
        current = {p: t for p, t in self.last_run.items() if p in self.workers}
        return self.workers[max(current, key=lambda p: current[p])]

    def stop_leader(self, sig: int) -> tuple[float, float | None]:
        """Stop the leader: seconds to the next gated run elsewhere, and to
        the next leadership gained elsewhere (None if not seen)."""
        leader = self.leader()
        del self.workers[leader.pid]  # its exit is expected from now on
        stopped_at = time.time()
        os.kill(leader.pid, sig)
        _, _, line = self.wait_for(
            lambda e: (
                e[1] is not leader
                and e[2].startswith("RUN ")
                and float(e[2].split()[2]) > stopped_at
            ),
            self.s.takeover_lease * 4 + 10,
        )
        took = float(line.split()[2]) - stopped_at
        gained = [
            t - stopped_at
            for pid, t in self.leader_at.items()
            if pid != leader.pid and t > stopped_at
        ]
        leader.stop(signal.SIGKILL, timeout=10)
        self.spawn()
        return took, min(gained) if gained else None

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop(signal.SIGKILL)


def run(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    pools: dict[str, Pool] = {}
    status = {t.id: ctx.env_status(t) for t in TARGETS}
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        for target in TARGETS:
            env = ctx.env_of(target)
            if env is None:
                continue
            url = ctx.redis.url if target.id.endswith("-redis") else ctx.nats.url
            try:
                pools[target.id] = Pool(s, target, env, url)
            except Exception as exc:
                status[target.id] = f"failed to start: {exc}"
                log(f"takeover: {target.id}: {status[target.id]}")
        for round_index in range(s.takeover_rounds):
            log(f"takeover: round {round_index + 1}/{s.takeover_rounds}")
            for kind, sig in (
                ("graceful", signal.SIGTERM),
                ("sigkill", signal.SIGKILL),
            ):
                for target in TARGETS:
                    pool = pools.get(target.id)
                    if pool is None or status[target.id] != "ok":
                        continue
                    try:
                        took, gained = pool.stop_leader(sig)
                    except Exception as exc:
                        status[target.id] = f"failed: {type(exc).__name__}: {exc}"
                        log(f"takeover: {target.id}: {status[target.id]}")
                        continue
                    results = rounds.setdefault(target.id, [])
                    if not results or results[-1]["round"] != round_index:
                        results.append({"round": round_index})
                    results[-1][f"{kind}_s"] = took
                    if gained is not None:
                        results[-1][f"{kind}_leader_s"] = gained
    finally:
        for pool in pools.values():
            pool.close()
    rows = summarize(
        TARGETS,
        rounds,
        status,
        metrics=("graceful_s", "sigkill_s", "graceful_leader_s", "sigkill_leader_s"),
    )
    for row in rows:
        for kind in ("graceful", "sigkill"):
            row[f"{kind}_runs_s"] = [
                r[f"{kind}_s"] for r in row["rounds"] if f"{kind}_s" in r
            ]
    return [
        {
            "name": "takeover",
            "title": (
                f"Takeover: stop the leader, time to the next leader-gated run on another worker "
                f"({s.takeover_workers} workers, lease {s.takeover_lease:g} s, retry {s.takeover_retry:g} s, "
                f"gated task every {s.takeover_interval:g} s)"
            ),
            "lease": s.takeover_lease,
            "retry": s.takeover_retry,
            "rows": rows,
        }
    ]
