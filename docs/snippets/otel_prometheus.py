"""Export grelmicro's metrics to Prometheus through OpenTelemetry.

Configure the OpenTelemetry SDK once, at start-up: a meter provider whose
reader is the Prometheus exporter, served on /metrics by prometheus_client.
grelmicro finds the global provider by itself (meter name ``grelmicro``).

    pip install "grelmicro[otel]" opentelemetry-sdk opentelemetry-exporter-prometheus
"""

import itertools
import logging
import urllib.request

import anyio
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager

# 1. At start-up: the provider and the /metrics endpoint.
resource = Resource.create({"service.name": "billing"})
metrics.set_meter_provider(
    MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
)
server, _ = start_http_server(port=0, addr="127.0.0.1")  # an app: port=9464
port = server.server_port

# 2. The tasks, as usual.
task = TaskManager()
calls = itertools.count()


@task.interval(seconds=0.2, name="sync-invoices", max_lock_seconds=5)
async def sync_invoices() -> None:
    await anyio.sleep(0.01)


@task.interval(seconds=0.2, name="export-ledger")
async def export_ledger() -> None:
    if next(calls) % 2:  # every other run fails
        raise ConnectionError("upstream down")


async def main() -> None:
    async with MemorySyncBackend(), task:
        await anyio.sleep(1)


logging.getLogger("grelmicro.task").disabled = True  # (the failures' tracebacks)
anyio.run(main)

# 3. What Prometheus scrapes:
with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
    for line in response.read().decode().splitlines():
        if line.startswith("grelmicro_task_runs_total"):
            print(line)
server.shutdown()
