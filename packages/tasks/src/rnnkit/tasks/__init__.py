"""rnnkit-tasks: tasks, data, metrics, a trainer and ``rnnkit train``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rnnkit-tasks")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["__version__"]
