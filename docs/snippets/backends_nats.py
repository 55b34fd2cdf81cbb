"""Ways to build a NatsSyncBackend (connections open on first use)."""

import os

import anyio
import nats

from grelmicro.sync import Lock
from grelmicro.sync.nats import NatsSyncBackend

url = os.environ.get("NATS_URL", "nats://localhost:4222")


async def main() -> None:
    # --8<-- [start:build]
    backend = NatsSyncBackend("nats://localhost:4222")  # or tls://, ws://, wss://
    backend = NatsSyncBackend("nats://n1:4222,nats://n2:4222,nats://n3:4222")
    backend = NatsSyncBackend()  # URL from the NATS_URL variable
    backend = NatsSyncBackend(url, bucket="billing-locks", replicas=1)
    # --8<-- [end:build]
    async with backend, Lock("invoices", backend=backend):
        print("held lock:invoices in the bucket billing-locks")

    # --8<-- [start:client]
    nc = await nats.connect(url)  # a connected client is borrowed, never closed
    async with NatsSyncBackend(client=nc) as backend:
        print("locked:", await Lock("invoices", backend=backend).locked())
    await nc.close()
    # --8<-- [end:client]


if __name__ == "__main__":
    anyio.run(main)
