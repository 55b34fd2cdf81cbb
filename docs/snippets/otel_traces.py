"""One span per run: the task function's own spans are its children.

A real service exports spans with an OTLP exporter (opentelemetry-exporter-
otlp) in a BatchSpanProcessor; this snippet keeps them in memory and prints
them.
"""

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

tracer = trace.get_tracer("billing")
task = TaskManager()


@task.interval(seconds=60, name="sync-invoices", max_lock_seconds=300)
async def sync_invoices() -> None:
    with tracer.start_as_current_span("fetch-invoices"):
        await anyio.sleep(0.01)


async def main() -> None:
    async with MemorySyncBackend(), task:
        await anyio.sleep(0.5)


anyio.run(main)

for span in exporter.get_finished_spans():
    parent = span.parent.span_id if span.parent else None
    print(
        f"{span.name} span={span.context.span_id:x} parent={parent and f'{parent:x}'}"
    )
    for key, value in (span.attributes or {}).items():
        print(f"    {key} = {value}")
