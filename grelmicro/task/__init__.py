"""Interval and cron tasks, run by a `TaskManager` inside the application lifespan.

```python
from grelmicro.task import TaskManager, TaskRouter, Run, current_run
```
"""

from grelmicro.task._run import Run, current_run
from grelmicro.task.manager import TaskManager
from grelmicro.task.router import TaskRouter

__all__ = ["Run", "TaskManager", "TaskRouter", "current_run"]
