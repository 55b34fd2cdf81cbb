"""A FastStream service whose tasks are observed through OpenTelemetry.

The OpenTelemetry SDK is configured once, before the app starts: a meter
provider read by the Prometheus exporter, served on /metrics (port
``METRICS_PORT``, 9464 by default). grelmicro records through the global
provider: runs by outcome, their lag and duration, leadership, lock calls.

    pip install "grelmicro[faststream,otel]" opentelemetry-sdk \\
        opentelemetry-exporter-prometheus
    NATS_URL=nats://localhost:4222 python examples/faststream/otel_app.py
    REDIS_URL=redis://localhost:6379 python examples/faststream/otel_app.py
    curl -s localhost:9464/metrics | grep grelmicro_

Run several copies (each with its own ``METRICS_PORT``) and point Prometheus
at them: the alert rules of docs/observability.md then watch the fleet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from faststream import ContextRepo, FastStream
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from grelmicro.sync import LeaderElection
from grelmicro.task import TaskManager

logger = logging.getLogger("examples.otel_app")
WORKER = os.environ.get("WORKER_NAME") or f"worker-{os.getpid()}"
METRICS_PORT = int(os.environ.get("METRICS_PORT", "9464"))


def make_broker() -> Any:
    """A Redis broker when REDIS_URL is set, else a NATS broker."""
    if redis_url := os.environ.get("REDIS_URL"):
        from faststream.redis import RedisBroker

        return RedisBroker(redis_url)
    from faststream.nats import NatsBroker

    return NatsBroker(os.environ.get("NATS_URL", "nats://localhost:4222"))


# OpenTelemetry: one meter provider for the process, exported to Prometheus.
# `service.instance.id` tells the workers apart in the exported `target_info`.
resource = Resource.create(
    {"service.name": "otel-example", "service.instance.id": WORKER}
)
metrics.set_meter_provider(
    MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
)

broker = make_broker()
task = TaskManager(broker=broker)
leader = LeaderElection("otel-example-leader")
task.add_task(leader)


# At most once per interval across the fleet: one success per period in
# grelmicro_task_runs_total, the other workers count "skipped".
@task.interval(seconds=2, name="sync-invoices", max_lock_seconds=10)
async def sync_invoices() -> None:
    await asyncio.sleep(random.uniform(0.05, 0.2))


# Only on the leader: grelmicro_leader_status is 1 on one worker.
@task.interval(seconds=2, name="leader-report", leader=leader)
async def leader_report() -> None:
    logger.info("leader report from %s", WORKER)


# Fails one run in three: outcome "error" with error_type="TimeoutError".
@task.interval(seconds=1, name="flaky-export")
async def flaky_export() -> None:
    if random.random() < 1 / 3:
        msg = "upstream did not answer"
        raise TimeoutError(msg)


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    server, thread = start_http_server(METRICS_PORT)
    logger.info("metrics on http://localhost:%s/metrics (%s)", METRICS_PORT, WORKER)
    try:
        async with task:
            yield
    finally:
        server.shutdown()
        thread.join()


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(app.run())
