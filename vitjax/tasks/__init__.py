"""Tasks plug into the one trainer: each brings its loss, metrics and evaluation.

The contract is `vitjax.tasks.base.Task` (its docstring lists every hook the
trainer calls and their defaults). A task registers itself with
`@register_task('name')`; every module of this package is imported here, so
adding a task is adding one file.
"""

import importlib
import pkgutil

from vitjax.tasks.base import TASKS, Task, get_task, register_task

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "get_task", "register_task"]
