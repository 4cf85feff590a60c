"""rnnkit-mingru: the minimal GRU as an rnnkit plugin (an example for plugin authors)."""

from rnnkit_mingru.cell import MinGRU

__all__ = ["MinGRU"]
