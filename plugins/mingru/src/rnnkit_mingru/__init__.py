"""rnnkit-mingru: the minimal GRU and minimal LSTM as an rnnkit plugin (an example for plugin
authors)."""

from rnnkit_mingru.cell import MinGRU, MinLSTM, g

__all__ = ["MinGRU", "MinLSTM", "g"]
