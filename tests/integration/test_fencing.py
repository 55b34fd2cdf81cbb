"""Fencing tokens and supervised runs, proven on real servers and real processes.

- Three worker processes contend for one `Lock`: every token is unique and
  tokens grow in the order the holdings happened (which never overlap).
- A holder writing through a fenced store is frozen (SIGSTOP) past its
  lease; another worker takes the lock and writes; the first is resumed
  (SIGCONT) and writes again: the store rejects it, every time.
- A leader cut off from the server (a partition) has its long run cancelled
  by `renew_deadline`: it never runs while another worker leads.
- A run lasting beyond `max_lock_seconds` is cancelled before another worker
  can start the task.
- A backend with the four required methods only still works (tokens None).

The workers are `tests/integration/_fencing_worker.py`; the fenced store is
`examples/fencing/fenced_store.py` (on Redis, whatever the lock's backend).
Figures are printed (``pytest -s``) and appended to $FAULT_FIGURES.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from uuid import uuid4

import anyio
import pytest

from grelmicro.sync import LeaderElection, Lock, TaskLock
from grelmicro.sync.abc import FencingBackend, SyncBackend
from grelmicro.task import Run, TaskManager, current_run
from tests.integration._fencing_worker import CommandWorker
from tests.integration.faults.harness import figure
from tests.integration.faults.targets import KINDS, Target, require_kind, target_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Scheduling slack for a 2-core machine running the servers and the workers.
MARGIN = 0.5


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The session server of each kind, with a fresh namespace."""
    kind: str = request.param
    require_kind(kind)
    url: str = request.getfixturevalue(f"{kind}_url")
    yield from target_for(kind, url)


@dataclass
class CommandFleet:
    """Three ``commands`` workers on one backend, shared by the tests of a kind."""

    target: Target
    workers: list[CommandWorker]
    directory: Path


@pytest.fixture(scope="module", params=KINDS)
def command_fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CommandFleet]:
    """3 worker processes per backend kind (their start costs ~1 s each)."""
    kind: str = request.param
    require_kind(kind)
    url: str = request.getfixturevalue(f"{kind}_url")
    store_url: str = request.getfixturevalue("redis_url")
    directory = tmp_path_factory.mktemp(f"fencing-{kind}")
    for target in target_for(kind, url):
        with workers(3, command_argv(target, store_url), directory) as started:
            yield CommandFleet(target, started, directory)


@contextlib.contextmanager
def workers(
    count: int, argv: list[str], directory: Path, prefix: str = "w"
) -> Iterator[list[CommandWorker]]:
    """`count` worker processes, started together and stopped at the end."""
    started = [CommandWorker(f"{prefix}{i}", argv, directory) for i in range(count)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.close()


def command_argv(target: Target, store_url: str | None = None) -> list[str]:
    """Arguments of a ``commands`` worker on `target`."""
    argv = ["--backend", target.kind, "--url", target.url]
    argv += ["--namespace", target.namespace]
    if store_url is not None:
        argv += ["--store-url", store_url]
    return argv


def wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Wait until the process is really stopped (SIGSTOP is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.001)
    msg = f"process {pid} did not stop"
    raise AssertionError(msg)


# 1. Contention: unique tokens, increasing in acquisition order -----------------

PER_WORKER = 70  # 3 workers: 210 acquisitions


def test_contending_processes_get_unique_increasing_tokens(
    command_fleet: CommandFleet, tmp_path: Path
) -> None:
    """3 processes take one lock 210 times: tokens unique, increasing with time,
    and no two holdings overlap."""
    target = command_fleet.target
    out = tmp_path / "holdings.txt"
    started = time.monotonic()
    for worker in command_fleet.workers:
        worker.send("contend", "contended", PER_WORKER, 5, out)
    for worker in command_fleet.workers:
        worker.expect("done", 45)
    took = time.monotonic() - started
    holdings = []
    for line in out.read_text().splitlines():
        acquired, releasing, token, name = line.split()
        holdings.append((float(acquired), float(releasing), token, name))
    holdings.sort()
    tokens = [h[2] for h in holdings]
    assert len(holdings) == 3 * PER_WORKER
    assert "None" not in tokens, f"the {target.kind} backend issued no tokens"
    numbers = [int(t) for t in tokens]
    assert len(set(numbers)) == len(numbers), "a token was issued twice"
    out_of_order = [
        (a, b) for a, b in itertools.pairwise(holdings) if int(b[2]) <= int(a[2])
    ]
    assert out_of_order == [], out_of_order[:5]
    overlap = max((a[1] - b[0] for a, b in itertools.pairwise(holdings)), default=-1.0)
    handovers = sum(a[3] != b[3] for a, b in itertools.pairwise(holdings))
    figure(f"{target.kind} contention: acquisitions", len(holdings), unit="")
    figure(f"{target.kind} contention: handovers between processes", handovers, unit="")
    figure(f"{target.kind} contention: tokens out of order", len(out_of_order), unit="")
    figure(
        f"{target.kind} contention: longest overlap of two holdings", max(overlap, 0)
    )
    figure(f"{target.kind} contention: 210 acquisitions took", took)
    assert overlap <= 0, f"two holdings overlapped by {overlap:.6f}s"
    assert handovers >= 20, "the processes did not really contend"


# 2. The stalled holder: its write is rejected by the store ---------------------

TRIALS = 4
STALL_LEASE = 1.0


def test_stalled_holder_write_is_rejected(command_fleet: CommandFleet) -> None:
    """SIGSTOP a holder past its lease, let another worker take the lock and
    write, SIGCONT the first: its next write is rejected, in every trial."""
    target = command_fleet.target
    fleet = command_fleet.workers[:2]
    tag = uuid4().hex[:8]
    rejected = 0
    stalls: list[float] = []
    answers: list[float] = []
    accepted_late: list[list[str]] = []
    for trial in range(TRIALS):
        holder, taker = fleet if trial % 2 == 0 else fleet[::-1]
        lock, key = f"stall-{trial}", f"grelmicro-fence-{tag}:{trial}"
        holder.send("hold", lock, key, STALL_LEASE)
        old_token = int(holder.expect("held", 10)[1])
        first = holder.expect("write", 10)
        assert first[4] == "ok", first
        stopped_at = holder.signal(signal.SIGSTOP)
        wait_stopped(holder.pid)
        taker.send("take", lock, key, STALL_LEASE)
        new_token = int(taker.expect("acquired", STALL_LEASE + 10)[1])
        taken = taker.expect("write", 10)
        assert taken[4] == "ok", taken
        taker.expect("done", 10)
        assert new_token > old_token
        # Frozen longer than the lease, whatever the taker's speed.
        time.sleep(max(0.0, stopped_at + STALL_LEASE + 0.2 - time.time()))
        resumed_at = holder.signal(signal.SIGCONT)
        writes = []
        while True:
            fields = holder.read(10)
            if fields[0] == "write":
                writes.append(fields)
            if fields[0] == "done":
                break
        stalls.append(resumed_at - stopped_at)
        # The holder's writes started after the taker's write was accepted.
        after = [w for w in writes if float(w[1]) > float(taken[2])]
        assert after, f"trial {trial}: the resumed holder did not write"
        accepted_late += [w for w in after if w[4] == "ok"]
        if after[0][4] == "rejected" and int(after[0][5]) == new_token:
            rejected += 1
            answers.append(float(after[0][2]) - resumed_at)
    figure(f"{target.kind} stalled holder: trials", TRIALS, unit="")
    figure(f"{target.kind} stalled holder: stale writes rejected", rejected, unit="")
    figure(
        f"{target.kind} stalled holder: shortest stall (lease {STALL_LEASE}s)",
        min(stalls),
    )
    if answers:
        figure(f"{target.kind} stalled holder: SIGCONT -> rejection", max(answers))
    assert accepted_late == [], accepted_late
    assert rejected == TRIALS
    assert min(stalls) > STALL_LEASE


# 3. A cut-off leader's run is cancelled by renew_deadline -------------------------


class Partition:
    """A TCP relay between one worker and the server; `cut()` partitions it.

    While cut, bytes in both directions are held back (the connections stay
    open, requests go unanswered: a network partition, not a refused
    connection). `close()` ends every connection.
    """

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.scheme = parsed.scheme
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 0)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """The URL that reaches the server through this relay."""
        suffix = "/0" if self.scheme == "redis" else ""
        return f"{self.scheme}://127.0.0.1:{self.port}{suffix}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._guard:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._open.wait()
                if self._closed:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> float:
        """Hold back every byte from now on; the wall-clock time of the cut."""
        self._open.clear()
        return time.time()

    def close(self) -> None:
        """End every connection and stop listening."""
        with self._guard:
            self._closed = True
            sockets = list(self._sockets)
        self._open.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._listener.close()


def read_events(path: Path) -> list[tuple[float, str, str]]:
    """A ``tasks`` worker's events: (time, event, detail)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        parts = line.split(" ", 2)
        events.append((float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
    return events


def runs_of(
    events: list[tuple[float, str, str]], end: float
) -> list[tuple[float, float, str]]:
    """The runs as (start, end, how it ended); a run still going ends at `end`."""
    runs = []
    start: float | None = None
    for when, event, detail in events:
        if event == "run-start":
            start = when
        elif event == "run-end" and start is not None:
            runs.append((start, when, detail))
            start = None
    if start is not None:
        runs.append((start, end, "running"))
    return runs


def longest_overlap(runs: dict[str, list[tuple[float, float, str]]]) -> float:
    """The longest time runs of two different workers overlapped (<= 0: never)."""
    longest = -float("inf")
    for first, second in itertools.combinations(runs, 2):
        for a_start, a_end, _ in runs[first]:
            for b_start, b_end, _ in runs[second]:
                longest = max(longest, min(a_end, b_end) - max(a_start, b_start))
    return longest


def wait_event(
    path: Path, event: str, after: float, timeout: float, detail: str = ""
) -> float:
    """The time of the first `event` after `after` in a worker's events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for when, found, text in read_events(path):
            if found == event and when > after and text.startswith(detail):
                return when
        time.sleep(0.02)
    msg = f"no {event!r} event in {path.name} within {timeout}s:\n{path.read_text()}"
    raise AssertionError(msg)


def first_event(paths: list[Path], event: str, timeout: float) -> tuple[float, int]:
    """The first `event` in any of the workers' events: (time, worker index)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            (when, index)
            for index, path in enumerate(paths)
            for when, kind, _ in read_events(path)
            if kind == event
        ]
        if found:
            return min(found)
        time.sleep(0.02)
    msg = f"no {event!r} event within {timeout}s"
    raise AssertionError(msg)


def tasks_argv(kind: str, url: str, namespace: str, directory: Path) -> list[str]:
    """Arguments of a ``tasks`` worker."""
    return [
        "--mode",
        "tasks",
        "--backend",
        kind,
        "--url",
        url,
        "--namespace",
        namespace,
        "--dir",
        str(directory),
    ]


LEASE, RENEW, RETRY = 2.0, 1.2, 0.2


def test_cut_off_leader_run_is_cancelled_by_renew_deadline(
    target: Target, tmp_path: Path
) -> None:
    """A leader-gated run designed to last longer than the lease; the leader is
    partitioned from the server early in a run: the run is cancelled within
    renew_deadline, before the other worker becomes leader, and the two
    workers' runs never overlap."""
    work, max_lock = 3.5, 4.0
    relays = [Partition(target.url), Partition(target.url)]
    fleet: list[CommandWorker] = []
    try:
        for index, relay in enumerate(relays):
            argv = tasks_argv(target.kind, relay.url, target.namespace, tmp_path)
            argv += ["--leader", "--work", str(work), "--max-lock", str(max_lock)]
            argv += ["--lease", str(LEASE), "--renew", str(RENEW)]
            argv += ["--retry", str(RETRY), "--backend-timeout", "0.5"]
            fleet.append(CommandWorker(f"g{index}", argv, tmp_path))
        for worker in fleet:
            worker.wait_ready()
        paths = [tmp_path / f"{w.name}.events" for w in fleet]
        first_start, leader_index = first_event(paths, "run-start", 10)
        follower_index = 1 - leader_index
        # Cut early in the run (its task lock was already extended to max_lock).
        time.sleep(max(0.0, first_start + 0.4 - time.time()))
        cut_at = relays[leader_index].cut()
        follower_run = wait_event(paths[follower_index], "run-start", cut_at, 15)
        time.sleep(0.3)
        ended = time.time()
    finally:
        for relay in relays:
            relay.close()
        codes = [worker.close() for worker in fleet]
    leader_events = read_events(paths[leader_index])
    follower_events = read_events(paths[follower_index])
    runs = {
        "leader": runs_of(leader_events, ended),
        "follower": runs_of(follower_events, ended),
    }
    diagnostics = f"\nleader: {leader_events}\nfollower: {follower_events}"
    cut_run = next(r for r in runs["leader"] if r[0] <= cut_at < r[1])
    cancelled = cut_run[1] - cut_at
    elected = min(
        e[0]
        for e in follower_events
        if e[1] == "leader" and e[2] == "1" and e[0] > cut_at
    )
    warnings = [
        e
        for e in leader_events
        if e[1] == "log" and "Leadership lost while running: fenced-job" in e[2]
    ]
    overlap = longest_overlap(runs)
    figure(f"{target.kind} cut-off leader: cut -> run cancelled", cancelled, RENEW)
    figure(
        f"{target.kind} cut-off leader: run cancelled -> other worker elected",
        elected - cut_run[1],
    )
    figure(
        f"{target.kind} cut-off leader: run cancelled -> other worker's run",
        follower_run - cut_run[1],
    )
    figure(
        f"{target.kind} cut-off leader: overlap of the two workers' runs",
        max(overlap, 0),
    )
    assert cut_run[2] == "lost", diagnostics
    assert warnings, diagnostics
    assert cancelled <= RENEW + MARGIN, diagnostics
    assert elected > cut_run[1], diagnostics
    assert overlap <= 0, diagnostics
    assert all(code is not None for code in codes)


# 4. A run beyond max_lock_seconds is cancelled before another can start ---------


def test_run_beyond_max_lock_seconds_is_cancelled_before_another_starts(
    target: Target, tmp_path: Path
) -> None:
    """Two workers run a task-locked task whose runs never end by themselves:
    each run is cancelled at max_lock_seconds (minus the margin), and the next
    run (on either worker) starts only after: zero overlap."""
    max_lock = 1.0
    argv = tasks_argv(target.kind, target.url, target.namespace, tmp_path)
    argv += ["--work", "30", "--max-lock", str(max_lock), "--interval", "0.2"]
    fleet: list[CommandWorker] = []
    try:
        fleet = [CommandWorker(f"m{i}", argv, tmp_path) for i in range(2)]
        for worker in fleet:
            worker.wait_ready()
        begun = time.time()
        time.sleep(4 * max_lock + 0.5)
        ended = time.time()
    finally:
        for worker in fleet:
            worker.close()
    events = {w.name: read_events(tmp_path / f"{w.name}.events") for w in fleet}
    runs = {name: runs_of(found, ended) for name, found in events.items()}
    diagnostics = f"\n{events}"
    every = sorted(r for found in runs.values() for r in found if r[0] >= begun)
    # Runs that ended before the workers were stopped.
    finished = [r for r in every if r[1] < ended]
    durations = [r[1] - r[0] for r in finished]
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(every)]
    warnings = [
        e
        for found in events.values()
        for e in found
        if e[1] == "log" and "exceeded max_lock_seconds" in e[2]
    ]
    overlap = longest_overlap(runs)
    figure(f"{target.kind} max_lock: runs", len(every), unit="")
    figure(f"{target.kind} max_lock: longest run", max(durations), max_lock)
    figure(f"{target.kind} max_lock: shortest gap to the next run", min(gaps))
    figure(f"{target.kind} max_lock: overlap of runs", max(overlap, 0))
    assert len(finished) >= 3, diagnostics
    assert all(r[2] == "lost" for r in finished), diagnostics
    assert len(warnings) >= len(finished), diagnostics
    assert max(durations) < max_lock, diagnostics
    assert min(gaps) > 0, diagnostics
    assert overlap <= 0, diagnostics


# 5. A backend without the token capability -----------------------------------------


class FourMethods:
    """A third-party backend: the four required methods only, over real Redis."""

    def __init__(self, inner: SyncBackend) -> None:
        self._inner = inner

    async def __aenter__(self) -> FourMethods:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._inner.__aexit__(None, None, None)

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        return await self._inner.acquire(name=name, token=token, duration=duration)

    async def release(self, *, name: str, token: str) -> bool:
        return await self._inner.release(name=name, token=token)

    async def locked(self, *, name: str) -> bool:
        return await self._inner.locked(name=name)

    async def owned(self, *, name: str, token: str) -> bool:
        return await self._inner.owned(name=name, token=token)


@pytest.mark.anyio
async def test_backend_without_tokens_still_works(redis_url: str) -> None:
    """Lock, TaskLock, LeaderElection and a supervised run work on a backend
    that cannot issue tokens; every token is None."""
    from grelmicro.sync.redis import RedisSyncBackend

    inner = RedisSyncBackend(
        redis_url, prefix=f"grelmicro-fence-{uuid4().hex[:8]}:", auto_register=False
    )
    backend = FourMethods(inner)
    assert not isinstance(backend, FencingBackend)
    async with backend:
        lock = Lock("plain", backend=backend)  # type: ignore[arg-type]
        async with lock:
            assert await lock.owned()
            assert lock.fencing_token is None
        task_lock = TaskLock("plain", backend=backend, max_lock_seconds=5)  # type: ignore[arg-type]
        async with task_lock:
            assert task_lock.fencing_token is None
        leader = LeaderElection(
            "plain",
            backend=backend,  # type: ignore[arg-type]
            lease_duration=2,
            renew_deadline=1,
            retry_interval=0.1,
            backend_timeout=0.5,
        )
        manager = TaskManager()
        manager.add_task(leader)
        runs: list[Run] = []

        @manager.interval(
            seconds=0.1, leader=leader, max_lock_seconds=5, backend=backend
        )  # type: ignore[arg-type]
        async def job() -> None:
            runs.append(current_run())

        async with manager:
            with anyio.fail_after(10):
                await leader.wait_for_leader()
                assert leader.fencing_token is None
                while len(runs) < 2:
                    await anyio.sleep(0.02)
    assert [run.fencing_token for run in runs[:2]] == [None, None]
    assert not any(run.lost for run in runs)
