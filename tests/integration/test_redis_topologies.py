"""Redis beyond one server: Cluster and Sentinel, on real servers on loopback.

- The capability and lock conformance suites run again here, on a Redis
  Cluster (3 primaries, 3 replicas; through the backend's URL form and through
  a `RedisCluster` client) and on a Sentinel-discovered primary (1 primary,
  2 replicas, 3 sentinels).
- Failover: a lock is written while the replicas lag (the window
  asynchronous replication always has, widened here so that every trial hits
  it: the replicas are frozen and their link backed up), then the primary is
  killed as soon as the first worker has its answer. Without `wait_replicas` the promoted
  replica never saw the lock: a second worker takes it while the first still
  holds it, and gets the *same* fencing token (the counter's increment was
  lost with the lock). With `wait_replicas=1` the acquisition returns only
  once a replica has it: no second holder, and the stale holder's fenced
  write is rejected.
- Sentinel: the backend follows the promoted primary without a restart, and
  leadership resumes within a stated bound.

Figures are printed (run with ``-s``) and asserted; docs/redis-topologies.md
quotes them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import anyio
import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import Sentinel

from grelmicro.sync import LeaderElection
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.redis import RedisSyncBackend, RedisSyncBackendReplicationError
from tests.integration import test_capabilities, test_conformance
from tests.integration.conftest import BackendCase
from tests.servers import (
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    launch,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

SERVICE = "grelmicro"

# The conformance suites, collected again in this module, where `backend_case`
# (below) gives them cluster and sentinel backends. Tests that start worker
# processes or managers by backend kind stay in their own module.
_SKIPPED = {"test_processes_contend_for_one_task_lock"}
for _module in (test_capabilities, test_conformance):
    for _name in dir(_module):
        if _name.startswith("test_") and _name not in _SKIPPED:
            globals()[_name] = getattr(_module, _name)


# Topologies (one of each per module) -----------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """3 primaries, 3 replicas; a dead primary is replaced after about 1 s."""
    cluster = launch(RedisClusterServers(3, replicas=1, node_timeout_ms=1000))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """1 primary, 2 replicas, 3 sentinels (quorum 2, down after 1 s)."""
    setup = launch(RedisSentinelServers(service=SERVICE, down_after_ms=1000))
    try:
        yield setup
    finally:
        setup.close()


_SENTINEL_OF: dict[int, Sentinel] = {}


def sentinel_client(setup: RedisSentinelServers) -> Redis:
    """A client of the Sentinel-discovered primary, as an application makes one."""
    sentinel = Sentinel(setup.sentinels, socket_timeout=1.0)
    client: Redis = sentinel.master_for(
        SERVICE, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    _SENTINEL_OF[id(client)] = sentinel
    return client


async def close(client: Any) -> None:
    """Close a test's client (and, for a Sentinel client, its sentinel clients)."""
    await client.aclose()
    sentinel = _SENTINEL_OF.pop(id(client), None)
    if sentinel is not None:
        for each in sentinel.sentinels:
            await each.aclose()


TOPOLOGIES = ["cluster-url", "cluster-client", "sentinel"]


@pytest.fixture(params=TOPOLOGIES)
async def backend_case(request: pytest.FixtureRequest) -> AsyncIterator[BackendCase]:
    """Overrides conftest's: an entered backend on a cluster or a sentinel setup."""
    kind: str = request.param
    namespace = f"grelmicro-test-{uuid4().hex[:12]}:"
    clients: list[Any] = []

    def build() -> SyncBackend:
        if kind == "cluster-url":
            cluster = request.getfixturevalue("redis_cluster")
            # The URL form finds out the server is a cluster node by itself.
            return RedisSyncBackend(cluster.url, prefix=namespace, auto_register=False)
        if kind == "cluster-client":
            cluster = request.getfixturevalue("redis_cluster")
            client: Any = RedisCluster.from_url(cluster.url)
        else:
            client = sentinel_client(request.getfixturevalue("redis_sentinel"))
        clients.append(client)
        return RedisSyncBackend(client=client, prefix=namespace, auto_register=False)

    backend = build()
    others: list[SyncBackend] = []

    def make() -> SyncBackend:
        other = build()
        others.append(other)
        return other

    if kind.startswith("cluster"):
        # Tests start right after another test may have failed a node over:
        # begin on a cluster whose slots are all served again.
        request.getfixturevalue("redis_cluster").wait_healthy()
    try:
        async with backend:
            for client in clients:
                if isinstance(client, RedisCluster):
                    # Learn the topology once before the tests' concurrent
                    # first commands (redis-py initializes lazily).
                    await client.initialize()
            yield BackendCase(
                kind="redis", backend=backend, ttl=0.3, slack=0.2, make=make
            )
    finally:
        with anyio.CancelScope(shield=True):
            for other in others:
                await other.__aexit__(None, None, None)
            for client in clients:
                await close(client)


# The broker-shared backend on FastStream's cluster and sentinel brokers --------------


# FastStream 0.7.8's RedisSentinelBroker.stop() leaves one sentinel connection
# unclosed (its ResourceWarning is FastStream's, not the backend's).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_faststream_cluster_and_sentinel_brokers(
    redis_cluster: RedisClusterServers, redis_sentinel: RedisSentinelServers
) -> None:
    from faststream.redis import RedisClusterBroker, RedisSentinelBroker

    from grelmicro.brokers import backend_for

    redis_cluster.wait_healthy()
    redis_sentinel.wait_healthy()
    brokers = [
        RedisClusterBroker(redis_cluster.url),
        RedisSentinelBroker(
            sentinels=redis_sentinel.sentinels, sentinel_master_name=SERVICE
        ),
    ]
    for broker in brokers:
        await broker.connect()
        try:
            backend = backend_for(broker, prefix=f"fs-{uuid4().hex[:6]}:")
            async with backend:
                name = "lock:broker"
                first = await backend.acquire_fenced(name=name, token="a", duration=5)  # type: ignore[attr-defined]
                assert first.fence is not None
                assert not await backend.acquire(name=name, token="b", duration=5)
                assert await backend.release(name=name, token="a")
                assert await backend.claim_fire(  # type: ignore[attr-defined]
                    name="cron:job", fire=1000, token="a", lease=None
                )
        finally:
            await broker.stop()


# Failover -----------------------------------------------------------------------------

#: The first holder's lease: longer than a failover (about 2.5 s here).
LEASE = 4.0
TRIALS = 3

# The fenced store (on the session's standalone server): a write carries its
# fencing token and is rejected when a higher one was seen.
FENCED_WRITE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'token'))
if seen and tonumber(ARGV[1]) < seen then
    return 0
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return 1
"""


@dataclass
class Trial:
    """What one primary kill did to a held lock."""

    second_holder: bool  # another worker took it while the first's lease lasted
    same_token: bool  # ... and got a token not above the first holder's
    stale_write_accepted: bool  # the first holder's later write went through
    takeover_s: float  # kill -> second worker's acquisition


def lag_replicas(primary: RedisServer, replicas: list[RedisServer], name: str) -> None:
    """Freeze `replicas` and fill their replication link until it backs up.

    Asynchronous replication always has a window where a write exists only on
    the primary; this widens it: with the replicas frozen, ~1 MiB writes (in
    the lock's hash slot, expiring soon) fill the sockets until the primary
    keeps more than one of them in its own output buffer (the sockets are
    full: about 5 MiB on loopback), where a write made now dies with the
    primary.
    """
    from grelmicro.sync.redis._keys import companion

    for replica in replicas:
        replica.pause()
    client = redis.Redis(host=primary.host, port=primary.port, socket_timeout=5)
    try:
        blob = b"x" * (1 << 20)
        for index in range(64):
            client.set(companion(name, "", f":flood:{index}"), blob, px=15_000)
            time.sleep(0.02)  # let the primary write what the sockets take
            pending = [
                int(entry.get("omem", 0))
                for entry in client.client_list(_type="replica")
            ]
            # More than a whole write still queued in the primary itself.
            if pending and min(pending) > len(blob):
                return
        pytest.fail("the replication link never backed up")
    finally:
        client.close()


async def run_trial(
    first: RedisSyncBackend,
    second: RedisSyncBackend,
    store: Redis,
    name: str,
    primary: RedisServer,
    replicas: list[RedisServer],
    after_kill: Any = None,
) -> Trial:
    lag_replicas(primary, replicas, name)
    started = time.monotonic()
    held: list[Any] = []

    async def take() -> None:
        held.append(
            await first.acquire_fenced(name=name, token="first", duration=LEASE)
        )

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(take)
            # The replicas catch up 0.2 s after the write was sent, or at
            # the kill, whichever comes first; the primary dies as soon as
            # the first worker has its answer.
            with anyio.move_on_after(0.2):
                while not held:
                    await anyio.sleep(0.001)
            if held:
                primary.kill()
            for replica in replicas:
                replica.resume()
        if primary.is_running:
            primary.kill()
    except RedisSyncBackendReplicationError:
        pytest.fail("the replicas did not acknowledge within wait_timeout")
    finally:
        for replica in replicas:
            replica.resume()
    fence = held[0].fence
    assert fence is not None
    lease_end = started + LEASE
    killed_at = time.monotonic()
    if after_kill is not None:
        after_kill()
    # The second worker asks until the promoted primary answers it.
    deadline = killed_at + 30
    taken = None
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            answer = await second.acquire_fenced(name=name, token="second", duration=30)
        except Exception as exc:
            seen.append(f"{exc!r}"[:300])
            await anyio.sleep(0.05)
            continue
        if answer.fence is not None:
            taken = answer
            break
        await anyio.sleep(0.05)
    assert taken is not None, f"the second worker never got the lock: {seen[-3:]}"
    taken_at = time.monotonic()
    assert taken.fence is not None
    # Both write through the fenced store: the new holder, then the stale one.
    fenced = store.register_script(FENCED_WRITE)
    key = f"store:{name}"
    assert await fenced(keys=[key], args=[taken.fence, "second"]) == 1
    stale = await fenced(keys=[key], args=[fence, "first"])
    return Trial(
        second_holder=taken_at < lease_end,
        same_token=taken.fence <= fence,
        stale_write_accepted=stale == 1,
        takeover_s=taken_at - killed_at,
    )


def summary(label: str, trials: list[Trial]) -> str:
    return (
        f"{label}: {sum(t.second_holder for t in trials)}/{len(trials)} second "
        f"holders, {sum(t.same_token for t in trials)} repeated tokens, "
        f"{sum(t.stale_write_accepted for t in trials)} stale writes accepted; "
        f"takeover {min(t.takeover_s for t in trials):.2f}-"
        f"{max(t.takeover_s for t in trials):.2f} s after the kill"
    )


def check(wait_replicas: int, trials: list[Trial]) -> None:
    if wait_replicas:
        assert not any(t.second_holder for t in trials)
        assert not any(t.same_token for t in trials)
        assert not any(t.stale_write_accepted for t in trials)
    else:
        # The lock (and the token's increment) was on no replica: lost.
        assert all(t.second_holder for t in trials)
        assert all(t.same_token for t in trials)
        assert all(t.stale_write_accepted for t in trials)


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_cluster_failover_with_a_lock_held(
    redis_cluster: RedisClusterServers, redis_url: str, wait_replicas: int
) -> None:
    cluster = redis_cluster
    store = Redis.from_url(redis_url)
    clients = [RedisCluster.from_url(cluster.url) for _ in range(2)]
    first, second = (
        RedisSyncBackend(
            client=client,
            auto_register=False,
            wait_replicas=wait_replicas,
            wait_timeout=3,
        )
        for client in clients
    )
    trials: list[Trial] = []
    killed: list[RedisServer] = []
    try:
        cluster.wait_healthy()
        for client in clients:
            await client.initialize()  # learn every node while all are up
        used: set[int] = set()
        while len(trials) < TRIALS:  # one shard per trial
            cluster.wait_healthy()  # the last trial's node has rejoined
            name = f"lock:failover-{uuid4().hex[:8]}"
            primary = cluster.primary_for(name)
            if primary.port in used:
                continue
            replicas = cluster.replicas_of(primary)
            assert replicas, "the primary has no linked replica"
            used.update(server.port for server in [primary, *replicas])
            killed.append(primary)

            def rejoin(name: str = name, primary: RedisServer = primary) -> None:
                # As an orchestrator would: once a replica took over, the dead
                # node comes back (as a replica; without persistence it must
                # not come back before, as an empty primary). With one replica
                # per shard, wait_replicas=1 needs it back to acknowledge.
                deadline = time.monotonic() + 30
                while cluster.primary_for(name) is primary:
                    assert time.monotonic() < deadline, "no replica took over"
                    time.sleep(0.05)
                primary.start()

            trials.append(
                await run_trial(
                    first, second, store, name, primary, replicas, after_kill=rejoin
                )
            )
    finally:
        for client in clients:
            await close(client)
        await store.aclose()
        for server in cluster.servers:
            server.resume()
        for server in killed:
            server.start()  # no-op unless a trial failed before restarting it
    print("\n" + summary(f"cluster, wait_replicas={wait_replicas}", trials))
    check(wait_replicas, trials)
    cluster.wait_healthy()


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_sentinel_failover_with_a_lock_held(
    redis_sentinel: RedisSentinelServers, redis_url: str, wait_replicas: int
) -> None:
    setup = redis_sentinel
    store = Redis.from_url(redis_url)
    clients = [sentinel_client(setup) for _ in range(2)]
    first, second = (
        RedisSyncBackend(
            client=client,
            auto_register=False,
            wait_replicas=wait_replicas,
            wait_timeout=3,
        )
        for client in clients
    )
    trials: list[Trial] = []
    try:
        for _ in range(TRIALS):
            setup.wait_healthy()
            primary = setup.primary()
            replicas = setup.replicas_of(primary)
            name = f"lock:failover-{uuid4().hex[:8]}"
            try:
                trials.append(
                    await run_trial(first, second, store, name, primary, replicas)
                )
            finally:
                setup.rejoin(primary)
    finally:
        for client in clients:
            await close(client)
        await store.aclose()
    print("\n" + summary(f"sentinel, wait_replicas={wait_replicas}", trials))
    check(wait_replicas, trials)


async def test_sentinel_leadership_resumes_after_a_failover(
    redis_sentinel: RedisSentinelServers,
) -> None:
    setup = redis_sentinel
    setup.wait_healthy()
    client = sentinel_client(setup)
    watcher = sentinel_client(setup)
    backend = RedisSyncBackend(client=client, auto_register=False)
    name = f"failover-{uuid4().hex[:8]}"
    lease, retry, backend_timeout = 6.0, 0.25, 1.0
    election = LeaderElection(
        name,
        backend=backend,
        lease_duration=lease,
        renew_deadline=4,
        retry_interval=retry,
        backend_timeout=backend_timeout,
    )
    primary = setup.primary()
    try:
        async with anyio.create_task_group() as group:
            await group.start(election)
            with anyio.fail_after(10):
                await election.wait_for_leader()
            killed_at = time.monotonic()
            primary.kill()
            lost = False
            with anyio.fail_after(20):
                while setup.primary() is primary:
                    lost = lost or not election.is_leader()
                    await anyio.sleep(0.02)
            promoted_at = time.monotonic()
            # Renewed on the new primary: the lease's TTL is back near `lease`.
            with anyio.fail_after(20):
                while True:
                    lost = lost or not election.is_leader()
                    try:
                        left = await watcher.pttl(f"leader:{name}")
                    except Exception:
                        left = -2
                    if left > (lease - 1) * 1000:
                        break
                    await anyio.sleep(0.02)
            resumed_at = time.monotonic()
            assert election.is_leader()
            group.cancel_scope.cancel()
    finally:
        setup.rejoin(primary)
        await close(client)
        await close(watcher)
    promotion = promoted_at - killed_at
    after = resumed_at - promoted_at
    print(
        f"\nsentinel: promotion {promotion:.2f} s after the kill; lease renewed "
        f"on the new primary {after:.2f} s after the promotion; leadership "
        f"{'lost' if lost else 'kept'} meanwhile"
    )
    # Bound: one retry interval, one timed-out call to the dead primary, and
    # the sentinels' answer (the sentinels' own view lags the promotion a bit).
    assert after <= retry + backend_timeout + 2.0


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test: an unclosed client's ResourceWarning fails that test."""
    import gc

    yield
    gc.collect()
