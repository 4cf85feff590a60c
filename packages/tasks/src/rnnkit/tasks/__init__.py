"""rnnkit-tasks: tasks (data, metrics, default model and budget), a trainer and ``rnnkit train``.

Quick start::

    from rnnkit.tasks import list_tasks, get_task, train

    print(list_tasks("tomita*"))
    result = train(task="parity", steps=200)      # writes runs/parity-.../
    print(result.test)

    run = load_run(result.out)                    # the best model, in eval mode
    print(run.config["model_kwargs"])
"""

from importlib.metadata import PackageNotFoundError, version

from rnnkit.tasks.base import Budget, Split, Task, TaskData
from rnnkit.tasks.callbacks import Callback, TensorBoardCallback, TrainerCallback
from rnnkit.tasks.checkpoint import CheckpointError
from rnnkit.tasks.registry import get_task, list_tasks
from rnnkit.tasks.reuse import LoadedRun, RunLoadError, load_run
from rnnkit.tasks.trainer import RunResult, TrainConfig, Trainer, evaluate, train

try:
    __version__ = version("rnnkit-tasks")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = [
    "Budget",
    "Callback",
    "CheckpointError",
    "LoadedRun",
    "RunLoadError",
    "RunResult",
    "Split",
    "Task",
    "TaskData",
    "TensorBoardCallback",
    "TrainConfig",
    "Trainer",
    "TrainerCallback",
    "__version__",
    "evaluate",
    "get_task",
    "list_tasks",
    "load_run",
    "train",
]
