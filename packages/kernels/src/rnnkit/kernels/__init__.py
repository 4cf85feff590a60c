"""rnnkit-kernels: fast backends under the rnnkit cell ABI.

Installing this package is enough: its kernels register through the ``rnnkit`` entry point
and ``backend="auto"`` starts using them with no change to user code.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rnnkit-kernels")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["__version__"]
