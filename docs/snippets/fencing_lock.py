"""A SQLite row fenced with `Lock.fencing_token` (one process, memory backend).

Two holders of one lock, one after the other; the first is paused past its
lease, the second takes the lock and writes, then the first wakes up and
writes with its old token: the row refuses it.
"""

import sqlite3

import anyio

from grelmicro.sync import Lock
from grelmicro.sync.memory import MemorySyncBackend

# --8<-- [start:table]
db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE report (id INTEGER PRIMARY KEY, body TEXT, fence INTEGER)")
db.execute("INSERT INTO report VALUES (1, '', 0)")


def write_report(body: str, fencing_token: int) -> bool:
    """Write unless a later holder already wrote: the check is in the UPDATE."""
    with db:
        cursor = db.execute(
            "UPDATE report SET body = ?, fence = ? WHERE id = 1 AND fence <= ?",
            (body, fencing_token, fencing_token),
        )
    return cursor.rowcount == 1


# --8<-- [end:table]


async def main() -> None:
    backend = MemorySyncBackend()
    # Two workers' locks on the same name (two processes in real life).
    first = Lock("report", backend=backend, lease_duration=0.2)
    second = Lock("report", backend=backend, lease_duration=0.2)
    # --8<-- [start:use]
    await first.acquire()
    old = first.fencing_token
    assert old is not None
    print(f"first holder, token {old}: written={write_report('v1', old)}")

    await anyio.sleep(0.3)  # the first holder stalls past its 0.2 s lease...

    async with second:  # ...so another worker takes the lock
        new = second.fencing_token
        assert new is not None
        print(f"second holder, token {new}: written={write_report('v2', new)}")

    # The first holder wakes up, still believing it holds the lock.
    print(f"first holder again, token {old}: written={write_report('v1+', old)}")
    # --8<-- [end:use]
    body, fence = db.execute("SELECT body, fence FROM report").fetchone()
    print(f"row: body={body!r} fence={fence}")


if __name__ == "__main__":
    anyio.run(main)
