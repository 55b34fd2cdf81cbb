"""Lock cycle worker: acquire + release, as fast as one target can.

One process per target, started by ``run.py`` in the target's own virtual
environment, kept alive across rounds. Protocol on stdin/stdout, one JSON
object per line:

- at start it prints ``{"ready": true, ...}`` or ``{"error": "..."}``;
- for each command ``{"mode": "seq"|"conc", "seconds": S, "concurrency": C}``
  it warms up, runs cycles for S seconds and prints the result.

``seq`` is one coroutine cycling one key; ``conc`` is C coroutines, each
cycling its own key. Each target lives in a function below; it returns a
factory ``make(key) -> cycle`` where ``await cycle()`` acquires and releases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

Cycle = Callable[[], Awaitable[None]]
Factory = Callable[[str], Awaitable[Cycle]]

LEASE_SECONDS = 60
PID = os.getpid()


class CycleFailed(RuntimeError):
    """A cycle did not do what it should (the lock was not acquired/released)."""


# Redis -----------------------------------------------------------------------

# Minimal compare-and-set: take (or extend) if free or ours; delete if ours.
FLOOR_ACQUIRE = """
local v = redis.call('get', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 1
end
return 0
"""
FLOOR_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


async def redis_floor(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from redis.asyncio import Redis

    client = Redis.from_url(args.redis_url)
    state["closers"].append(client.aclose)
    acquire_sha = await client.script_load(FLOOR_ACQUIRE)
    release_sha = await client.script_load(FLOOR_RELEASE)
    lease_ms = LEASE_SECONDS * 1000

    async def make(key: str) -> Cycle:
        token = uuid.uuid4().hex
        evalsha = client.evalsha

        async def cycle() -> None:
            if not await evalsha(acquire_sha, 1, key, token, lease_ms):
                raise CycleFailed("not acquired")
            if not await evalsha(release_sha, 1, key, token):
                raise CycleFailed("not released")

        return cycle

    return make


async def project_redis_backend(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync.redis import RedisSyncBackend

    backend = RedisSyncBackend(args.redis_url, prefix=f"{args.namespace or 'bench'}:")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    return _backend_factory(backend)


async def project_redis_lock(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync import Lock
    from grelmicro.sync.redis import RedisSyncBackend

    backend = RedisSyncBackend(args.redis_url, prefix=f"{args.namespace or 'bench'}:")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    return _lock_factory(Lock, backend)


async def _redis_broker_backend(args: argparse.Namespace, state: dict[str, Any]) -> Any:
    """The backend over a connected FastStream RedisBroker's own client."""
    from faststream.redis import RedisBroker

    from grelmicro.brokers.redis import redis_backend

    broker = RedisBroker(args.redis_url)
    await broker.connect()
    state["closers"].append(broker.stop)
    backend = redis_backend(broker, prefix=f"{args.namespace or 'bench'}:broker:")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    return backend


async def project_redis_broker_backend(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    return _backend_factory(await _redis_broker_backend(args, state))


async def project_redis_broker_lock(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync import Lock

    return _lock_factory(Lock, await _redis_broker_backend(args, state))


async def grelmicro060_redis_backend(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync.redis import RedisSyncBackend

    backend = RedisSyncBackend(args.redis_url, prefix="bench060:")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    return _backend_factory(backend)


async def grelmicro060_redis_lock(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync import Lock
    from grelmicro.sync.redis import RedisSyncBackend

    backend = RedisSyncBackend(args.redis_url, prefix="bench060:")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    return _lock_factory(Lock, backend)


async def redispy_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from redis.asyncio import Redis

    client = Redis.from_url(args.redis_url)
    state["closers"].append(client.aclose)

    async def make(key: str) -> Cycle:
        lock = client.lock(f"redispy:{key}", timeout=LEASE_SECONDS)

        async def cycle() -> None:
            if not await lock.acquire(blocking=False):
                raise CycleFailed("not acquired")
            await lock.release()

        return cycle

    return make


async def aioredlock_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from urllib.parse import urlparse

    from aioredlock import Aioredlock

    url = urlparse(args.redis_url)
    manager = Aioredlock([{"host": url.hostname, "port": url.port}])
    state["closers"].append(manager.destroy)

    async def make(key: str) -> Cycle:
        resource = f"aioredlock:{key}"

        async def cycle() -> None:
            lock = await manager.lock(resource, lock_timeout=LEASE_SECONDS)
            await manager.unlock(lock)

        return cycle

    return make


async def pottery_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from pottery import AIORedlock
    from redis.asyncio import Redis

    client = Redis.from_url(args.redis_url)
    state["closers"].append(client.aclose)

    async def make(key: str) -> Cycle:
        lock = AIORedlock(
            key=f"pottery:{key}", masters={client}, auto_release_time=LEASE_SECONDS
        )

        async def cycle() -> None:
            if not await lock.acquire(blocking=False):
                raise CycleFailed("not acquired")
            await lock.release()

        return cycle

    return make


def _backend_factory(backend: Any) -> Factory:
    async def make(key: str) -> Cycle:
        name = f"lock:{key}"
        token = uuid.uuid4().hex
        acquire, release = backend.acquire, backend.release

        async def cycle() -> None:
            if not await acquire(name=name, token=token, duration=LEASE_SECONDS):
                raise CycleFailed("not acquired")
            if not await release(name=name, token=token):
                raise CycleFailed("not released")

        return cycle

    return make


def _lock_factory(lock_class: Any, backend: Any) -> Factory:
    async def make(key: str) -> Cycle:
        lock = lock_class(key, backend=backend, lease_duration=LEASE_SECONDS)

        async def cycle() -> None:
            async with lock:
                pass

        return cycle

    return make


# NATS ------------------------------------------------------------------------


async def _nats_connect(args: argparse.Namespace, state: dict[str, Any]) -> Any:
    import nats

    client = await nats.connect(args.nats_url)
    state["closers"].append(client.close)
    return client


async def nats_floor(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    """One create publish (expected last subject sequence + TTL), one rollup purge."""
    client = await _nats_connect(args, state)
    js = client.jetstream()
    bucket = "bench_floor"
    await js.create_key_value(bucket=bucket, history=1)
    request = client.request
    ttl = f"{LEASE_SECONDS}s"

    # Each key's last sequence: 0, then our own purge marker (kept across
    # rounds: every round makes its cycles anew on the same keys).
    last_by_key: dict[str, list[int]] = {}

    async def make(key: str) -> Cycle:
        subject = f"$KV.{bucket}.{key}.{PID}"
        token = uuid.uuid4().hex.encode()
        last = last_by_key.setdefault(key, [0])

        async def cycle() -> None:
            reply = await request(
                subject,
                token,
                timeout=5,
                headers={
                    "Nats-Expected-Last-Subject-Sequence": str(last[0]),
                    "Nats-TTL": ttl,
                },
            )
            ack = json.loads(reply.data)
            if "error" in ack:
                raise CycleFailed(f"not acquired: {ack['error']}")
            reply = await request(
                subject,
                b"",
                timeout=5,
                headers={
                    "KV-Operation": "PURGE",
                    "Nats-Rollup": "sub",
                    "Nats-Expected-Last-Subject-Sequence": str(ack["seq"]),
                },
            )
            ack = json.loads(reply.data)
            if "error" in ack:
                raise CycleFailed(f"not released: {ack['error']}")
            last[0] = ack["seq"]

        return cycle

    return make


async def project_nats_backend(
    args: argparse.Namespace, state: dict[str, Any]
) -> Factory:
    from grelmicro.sync.nats import NatsSyncBackend

    backend = NatsSyncBackend(args.nats_url, bucket=args.namespace or "bench_grelmicro")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    factory = _backend_factory(backend)

    async def make(key: str) -> Cycle:
        return await factory(f"{key}.{PID}")

    return make


async def project_nats_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from grelmicro.sync import Lock
    from grelmicro.sync.nats import NatsSyncBackend

    backend = NatsSyncBackend(args.nats_url, bucket=args.namespace or "bench_grelmicro")
    await backend.__aenter__()
    state["closers"].append(lambda: backend.__aexit__(None, None, None))
    factory = _lock_factory(Lock, backend)

    async def make(key: str) -> Cycle:
        return await factory(f"{key}.{PID}")

    return make


async def natskvlock_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from nats_kv_lock import NatsKvLock

    client = await _nats_connect(args, state)
    kv = await client.jetstream().create_key_value(bucket="bench_natskvlock")

    async def make(key: str) -> Cycle:
        lock = NatsKvLock(kv, f"{key}.{PID}")

        async def cycle() -> None:
            if not await lock.acquire(timeout=5):
                raise CycleFailed("not acquired")
            await lock.release()

        return cycle

    return make


async def natspylock_lock(args: argparse.Namespace, state: dict[str, Any]) -> Factory:
    from natspy_lock import NatsLock

    client = await _nats_connect(args, state)
    await NatsLock.init(client, "bench_natspylock", max_ttl=LEASE_SECONDS)

    async def make(key: str) -> Cycle:
        lock = NatsLock.get_lock(f"{key}.{PID}")

        async def cycle() -> None:
            async with lock:
                if not lock.locked():
                    raise CycleFailed("not acquired")

        return cycle

    return make


TARGETS: dict[
    str, Callable[[argparse.Namespace, dict[str, Any]], Awaitable[Factory]]
] = {
    "redis-floor": redis_floor,
    "redis-grelmicro-backend": project_redis_backend,
    "redis-grelmicro-lock": project_redis_lock,
    "redis-grelmicro-broker-backend": project_redis_broker_backend,
    "redis-grelmicro-broker-lock": project_redis_broker_lock,
    "redis-grelmicro060-backend": grelmicro060_redis_backend,
    "redis-grelmicro060-lock": grelmicro060_redis_lock,
    "redis-redispy-lock": redispy_lock,
    "redis-aioredlock": aioredlock_lock,
    "redis-pottery": pottery_lock,
    "nats-floor": nats_floor,
    "nats-grelmicro-backend": project_nats_backend,
    "nats-grelmicro-lock": project_nats_lock,
    "nats-natskvlock": natskvlock_lock,
    "nats-natspylock": natspylock_lock,
}


# Measurement -----------------------------------------------------------------


async def _run_for(cycle: Cycle, seconds: float, latencies: list[float] | None) -> int:
    clock = time.perf_counter
    end = clock() + seconds
    count = 0
    if latencies is None:
        while clock() < end:
            await cycle()
            count += 1
        return count
    append = latencies.append
    now = clock()
    while now < end:
        await cycle()
        after = clock()
        append(after - now)
        now = after
        count += 1
    return count


async def measure(make: Factory, command: dict[str, Any]) -> dict[str, Any]:
    seconds = float(command["seconds"])
    warmup = min(0.3, seconds / 4)
    if command["mode"] == "seq":
        cycle = await make("seq")
        await _run_for(cycle, warmup, None)
        latencies: list[float] = []
        started = time.perf_counter()
        cycles = await _run_for(cycle, seconds, latencies)
        elapsed = time.perf_counter() - started
        latencies.sort()
        return {
            "cycles": cycles,
            "elapsed": elapsed,
            "ops": cycles / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000
            * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
        }
    concurrency = int(command["concurrency"])
    cycles_ = [await make(f"c{i}") for i in range(concurrency)]
    await asyncio.gather(*(_run_for(c, warmup, None) for c in cycles_))
    started = time.perf_counter()
    counts = await asyncio.gather(*(_run_for(c, seconds, None) for c in cycles_))
    elapsed = time.perf_counter() - started
    return {"cycles": sum(counts), "elapsed": elapsed, "ops": sum(counts) / elapsed}


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--redis-url")
    parser.add_argument("--nats-url")
    parser.add_argument(
        "--namespace",
        help="Redis key prefix / NATS bucket of this project's targets "
        "(one per target, so that two versions of the code never share keys)",
    )
    args = parser.parse_args()
    state: dict[str, Any] = {"closers": []}
    loop = asyncio.get_running_loop()
    try:
        make = await TARGETS[args.target](args, state)
        # One cycle to prove the target works before it is measured.
        await (await make(f"probe-{args.target}-{os.getpid()}"))()
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        return
    emit({"ready": True, "python": sys.executable})
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
            try:
                emit(await measure(make, json.loads(line)))
            except Exception as exc:
                emit(
                    {
                        "error": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc(),
                    }
                )
    finally:
        for close in reversed(state["closers"]):
            with contextlib.suppress(Exception):
                await close()


if __name__ == "__main__":
    asyncio.run(main())
