"""NATS cluster node loss: three JetStream servers, a bucket with 3 replicas.

Each worker process connects to a different node first (it is given every
node's URL, so it can reconnect to the others). The tests SIGKILL one node:

- the JetStream meta leader, while it does not lead the KV stream: the
  bucket stays available, so leadership must continue (or move) within the
  lease;
- the node leading the KV stream's own Raft group: the bucket is
  unavailable until the two survivors elect a new stream leader (NATS's Raft
  election timeout, seconds). The leader steps down by renew_deadline and
  nobody leads meanwhile; leadership resumes once the stream is back.

In both, no two workers act as leader at once, no TaskLock task runs twice
in one interval, and the workers that lost their node reconnect to another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.integration.faults.harness import (
    Fleet,
    Worker,
    check_handovers,
    check_spacing,
    figure,
    max_gap,
)
from tests.integration.faults.targets import (
    TIMINGS,
    cleanup,
    require_kind,
    unique_namespace,
)
from tests.integration.faults.worker import LOCKED_TASK
from tests.servers import NatsCluster, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARGIN = 0.5
#: Seconds NATS may take to elect a new leader for a stream's Raft group after
#: its leader is killed (measured 3.3-6.2 s on nats-server 2.15, 2 cores).
STREAM_ELECTION = 10.0


async def _stream_leader(urls: list[str], bucket: str, stepdown: bool) -> str:
    import nats

    client = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = client.jetstream()
        if stepdown:
            await client.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.KV_{bucket}", b"", timeout=2
            )
            await anyio.sleep(0.2)
        info = await js.stream_info(f"KV_{bucket}")
        return str(info.cluster.leader) if info.cluster else ""
    finally:
        await client.close()


def stream_leader(cluster: NatsCluster, bucket: str, *, stepdown: bool = False) -> str:
    """The server leading the bucket's stream (after a step-down if asked)."""
    return anyio.run(_stream_leader, cluster.urls, bucket, stepdown)


def live_url(cluster: NatsCluster, dead: int | None) -> str:
    """Every member's URL but the killed one's (for the cleanup's client)."""
    return ",".join(
        server.url for index, server in enumerate(cluster.servers) if index != dead
    )


def rotated(urls: list[str], first: int) -> str:
    """Every URL, starting with `urls[first]` (the worker's own node)."""
    return ",".join(urls[first:] + urls[:first])


def start_cluster_fleet(
    start_server: Callable[[Any], Any], tmp_path: Path
) -> tuple[NatsCluster, Fleet]:
    """A 3-node cluster and three workers, worker i on node i first."""
    require_kind("nats")
    cluster: NatsCluster = start_server(NatsCluster(3))
    fleet = Fleet(
        backend="nats",
        url=cluster.url,
        namespace=unique_namespace("nats"),
        directory=tmp_path,
        timings=TIMINGS["nats"],
        extra_args=[
            "--own-client",
            "--replicas",
            "3",
            "--locked",
            "--probe",
            "--trace",
        ],
    )
    try:
        fleet.spawn(3, urls=[rotated(cluster.urls, i) for i in range(3)])
    except BaseException:
        fleet.close()
        raise
    return cluster, fleet


def node_index(cluster: NatsCluster, server_name: str) -> int:
    """The index of the member called `server_name`."""
    names = [server.server_name for server in cluster.servers]
    return names.index(server_name)


def check_reconnected(worker: Worker, killed_at: float) -> float:
    """Assert `worker` reconnected to another node and used it; the delay."""
    reconnects = [e for e in worker.events("reconnected") if e.time > killed_at]
    assert reconnects, f"{worker.name} did not reconnect"
    probes = [
        e.time for e in worker.events("probe", "ok") if e.time > reconnects[0].time
    ]
    assert probes, f"{worker.name} reconnected but its backend calls never succeeded"
    return reconnects[0].time - killed_at


def finish(fleet: Fleet, killed_at: float) -> tuple[dict[str, int], str]:
    """Stop the workers; check no double run; return (exit codes, diagnostics)."""
    codes = fleet.terminate_all()
    diagnostics = fleet.diagnostics()
    try:
        check_handovers(fleet)
        check_spacing(fleet, LOCKED_TASK, fleet.timings.interval - 0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics}") from None
    return codes, diagnostics


def test_meta_leader_node_loss(
    start_server: Callable[[Any], Any], tmp_path: Path
) -> None:
    """SIGKILL the JetStream meta leader (not the KV stream leader): leadership
    continues or moves within the lease; its workers reconnect elsewhere."""
    cluster, fleet = start_cluster_fleet(start_server, tmp_path)
    t = fleet.timings
    victim: int | None = None
    with fleet:
        try:
            fleet.wait_leader()
            meta = cluster.wait_meta_leader()
            leader_of_stream = stream_leader(cluster, fleet.namespace)
            for _ in range(5):
                if leader_of_stream != meta:
                    break
                leader_of_stream = stream_leader(
                    cluster, fleet.namespace, stepdown=True
                )
                meta = cluster.wait_meta_leader()
            assert leader_of_stream != meta, "could not move the stream leader"
            victim = node_index(cluster, meta)
            time.sleep(0.5)
            killed_at = time.time()
            cluster.servers[victim].kill()
            lost = fleet.workers[victim]
            assert wait_until(
                lambda: bool(
                    [e for e in lost.events("probe", "ok") if e.time > killed_at + 0.5]
                ),
                10,
                0.05,
            ), fleet.diagnostics()
            time.sleep(max(0.0, killed_at + t.takeover_bound + 0.3 - time.time()))
            ended_at = time.time()
            alive = [w.alive() for w in fleet.workers]
            codes, diagnostics = finish(fleet, killed_at)
        finally:
            cleanup("nats", live_url(cluster, victim), fleet.namespace)

    assert all(alive), diagnostics
    assert all(code == 0 for code in codes.values()), (codes, diagnostics)
    runs = [r for r, _ in fleet.all_runs()]
    gap = max_gap(runs, killed_at, ended_at)
    figure(
        "nats cluster, meta leader killed: longest leader-task gap",
        gap,
        t.takeover_bound,
    )
    assert gap <= t.takeover_bound + MARGIN, diagnostics
    reconnect = check_reconnected(lost, killed_at)
    figure("nats cluster, meta leader killed: worker reconnected after", reconnect)


def test_stream_leader_node_loss(
    start_server: Callable[[Any], Any], tmp_path: Path
) -> None:
    """SIGKILL the node leading the KV stream: nobody leads while the bucket is
    unavailable (the leader steps down by renew_deadline), leadership resumes
    once NATS has elected a new stream leader; no double run; reconnects."""
    cluster, fleet = start_cluster_fleet(start_server, tmp_path)
    t = fleet.timings
    victim: int | None = None
    with fleet:
        try:
            leader = fleet.wait_leader()
            victim = node_index(cluster, stream_leader(cluster, fleet.namespace))
            time.sleep(0.5)
            killed_at = time.time()
            cluster.servers[victim].kill()
            lost = fleet.workers[victim]
            _, resumed_at = fleet.wait_run(
                killed_at + t.renew + 0.5, timeout=STREAM_ELECTION + t.takeover_bound
            )
            time.sleep(1.0)
            assert wait_until(
                lambda: bool(
                    [e for e in lost.events("probe", "ok") if e.time > killed_at + 0.5]
                ),
                5,
                0.05,
            ), fleet.diagnostics()
            alive = [w.alive() for w in fleet.workers]
            codes, diagnostics = finish(fleet, killed_at)
        finally:
            cleanup("nats", live_url(cluster, victim), fleet.namespace)

    assert all(alive), diagnostics
    assert all(code == 0 for code in codes.values()), (codes, diagnostics)
    # The leader could not renew: it stepped down by renew_deadline.
    steps = [e.time for e in leader.leader_changes(killed_at) if e.detail == "0"]
    runs = [r for r, _ in fleet.all_runs()]
    gap = max_gap(runs, killed_at, resumed_at)
    figure("nats cluster, stream leader killed: leader-task gap", gap)
    if steps and steps[0] < resumed_at:
        step_down = steps[0] - killed_at
        figure(
            "nats cluster, stream leader killed: leader steps down", step_down, t.renew
        )
        assert step_down <= t.renew + MARGIN, diagnostics
        assert [r for r in runs if steps[0] < r < resumed_at] == [], diagnostics
    assert gap <= STREAM_ELECTION + t.takeover_bound + MARGIN, diagnostics
    reconnect = check_reconnected(lost, killed_at)
    figure("nats cluster, stream leader killed: worker reconnected after", reconnect)
