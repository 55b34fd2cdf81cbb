"""A distributed mutex: async code, and sync code in a worker thread."""

import anyio
import anyio.to_thread

from grelmicro.sync import Lock
from grelmicro.sync.memory import MemorySyncBackend


async def main() -> None:
    async with MemorySyncBackend():  # or a Redis / NATS backend
        # --8<-- [start:lock]
        lock = Lock("invoices")

        async with lock:  # waits, retrying every retry_interval
            print("invoices locked:", await lock.locked())

        await lock.acquire_nowait()  # or raises anyio.WouldBlock
        print("owned by this task:", await lock.owned())
        await lock.release()  # LockNotOwnedError if not held by this task

        def in_a_thread() -> None:  # code run with anyio.to_thread.run_sync
            with lock.from_thread:
                print("locked from a worker thread")

        await anyio.to_thread.run_sync(in_a_thread)
        # --8<-- [end:lock]


if __name__ == "__main__":
    anyio.run(main)
