"""selfguide: a task description plus a few examples in, a task-expert model out."""

from .registry import register_builders
from .report import FilterReport, filter_report
from .task import Example, Task, TaskSpecError

__version__ = "0.1.0"
__all__ = ["Example", "FilterReport", "Task", "TaskSpecError", "filter_report"]

register_builders()
