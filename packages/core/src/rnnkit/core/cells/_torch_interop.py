"""Loading and exporting ``torch.nn.RNN/LSTM/GRU`` weights (one layer, one direction)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def torch_layer_weights(
    module: nn.RNNBase, layer: int, direction: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of one layer and direction of ``module``."""
    if not isinstance(module, nn.RNNBase):
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    directions = 2 if module.bidirectional else 1
    if not 0 <= layer < module.num_layers:
        raise ValueError(f"layer must be in [0, {module.num_layers}), got {layer}")
    if not 0 <= direction < directions:
        raise ValueError(f"direction must be in [0, {directions}), got {direction}")
    if getattr(module, "proj_size", 0):
        raise ValueError("torch.nn.LSTM with proj_size > 0 is not supported")
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    w_ih = getattr(module, f"weight_ih{suffix}")
    w_hh = getattr(module, f"weight_hh{suffix}")
    b_ih = getattr(module, f"bias_ih{suffix}") if module.bias else None
    b_hh = getattr(module, f"bias_hh{suffix}") if module.bias else None
    return w_ih, w_hh, b_ih, b_hh


def cell_kwargs(module: nn.RNNBase, layer: int) -> dict[str, Any]:
    """Constructor keywords of a dense cell equivalent to ``module``'s layer ``layer``."""
    directions = 2 if module.bidirectional else 1
    input_size = module.input_size if layer == 0 else module.hidden_size * directions
    return {
        "input_size": input_size,
        "hidden_size": module.hidden_size,
        "bias": module.bias,
        "device": module.weight_ih_l0.device,
        "dtype": module.weight_ih_l0.dtype,
    }


@torch.no_grad()
def copy_into(cell: Any, w_ih: Tensor, w_hh: Tensor, bias: Tensor | None) -> None:
    """Copy dense weights into a ``heads=1`` gated cell (``bias`` already merged)."""
    if cell.heads != 1:
        raise ValueError("torch weights load into a dense cell (heads=1) only")
    cell.weight_ih.copy_(w_ih)
    cell.recurrent.copy_(w_hh.reshape(cell.recurrent.shape))
    if bias is not None:
        cell.bias.copy_(bias)


def new_torch_module(cls: type[nn.RNNBase], cell: Any, **kwargs: Any) -> nn.RNNBase:
    """An empty single-layer, batch-first torch module shaped like ``cell``."""
    p = cell.weight_ih
    return cls(
        cell.input_size,
        cell.hidden_size,
        batch_first=True,
        bias=cell.bias is not None,
        device=p.device,
        dtype=p.dtype,
        **kwargs,
    )


@torch.no_grad()
def export_into(
    module: nn.RNNBase, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> nn.RNNBase:
    """Copy dense layer-0 weights into a single-layer torch module and return it."""
    names = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    if module.bias:
        if b_ih is None or b_hh is None:
            raise ValueError("a torch module with bias needs both bias_ih and bias_hh")
        names.update(bias_ih_l0=b_ih, bias_hh_l0=b_hh)
    for name, value in names.items():
        target = getattr(module, name)
        assert isinstance(target, Tensor)
        target.copy_(value)
    return module
