"""Interval tasks, run by a `TaskManager` inside the application lifespan.

```python
from grelmicro.task import TaskManager, TaskRouter
```
"""

from grelmicro.task.manager import TaskManager
from grelmicro.task.router import TaskRouter

__all__ = ["TaskManager", "TaskRouter"]
