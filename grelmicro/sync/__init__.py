"""Distributed synchronization: locks, task locks and leader election.

```python
from grelmicro.sync import Lock, TaskLock, LeaderElection
```

Backends live in `grelmicro.sync.memory`, `grelmicro.sync.redis` and
`grelmicro.sync.nats`.
"""

from grelmicro.sync.abc import SyncBackend, Synchronization
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.sync.lock import Lock
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.sync.tasklock import TaskLock

__all__ = [
    "LeaderElection",
    "Lock",
    "MemorySyncBackend",
    "SyncBackend",
    "Synchronization",
    "TaskLock",
]
