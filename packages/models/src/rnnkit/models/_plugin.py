"""rnnkit-models' plugin module: registers its networks, its cells and the kernels of cells'
own parallel algorithms (Aaren's prefix scan, S4D's convolution mode)."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterCell, RegisterKernel, RegisterModel, hookimpl
from rnnkit.models import networks
from rnnkit.models.cells import (
    LRU,
    Aaren,
    DeltaNet,
    GatedDeltaNet,
    LinearAttention,
    ParaGRU,
    ParaLSTM,
)
from rnnkit.models.cells.aaren import PARALLEL_KERNEL
from rnnkit.models.cells.s4d import CONV_KERNEL, S4D


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    register("sequence_tagger", networks.sequence_tagger)
    register("sequence_classifier", networks.sequence_classifier)
    register("char_lm", networks.char_lm)
    register("ssm_classifier", networks.ssm_classifier)
    register("ssm_tagger", networks.ssm_tagger)


@hookimpl
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    register(PARALLEL_KERNEL)
    register(CONV_KERNEL)


@hookimpl
def rnnkit_register_cells(register: RegisterCell) -> None:
    register(
        "paragru",
        ParaGRU,
        description="ParaRNN GRU with diagonal recurrence (diagonal Jacobian; newton backend)",
        test_configs=[{}, {"bias": False}],
    )
    register(
        "paralstm",
        ParaLSTM,
        description="ParaRNN CIFG LSTM with peepholes (2x2 block Jacobian; newton backend)",
        test_configs=[{}, {"peepholes": False}],
    )
    register(
        "lru",
        LRU,
        description="Linear Recurrent Unit: complex diagonal linear RNN (scan backends)",
        test_configs=[{}, {"r_min": 0.9, "max_phase": 0.314}],
    )
    register(
        "s4d",
        S4D,
        description="S4D: diagonal complex SSM per channel (scan backends; s4d_conv: FFT mode)",
        test_configs=[{}, {"init": "inv"}, {"discretization": "bilinear"}],
    )
    register(
        "aaren",
        Aaren,
        description="Aaren: attention with a learned query as an RNN (parallel prefix forward)",
        test_configs=[{}, {"heads": 2}, {"heads": 3}],
    )
    register(
        "deltanet",
        DeltaNet,
        description="DeltaNet: matrix key-value memory written by the delta rule (chunked backend)",
        test_configs=[{}, {"heads": 3}, {"rule": "linear", "heads": 2}],
    )
    register(
        "gated_deltanet",
        GatedDeltaNet,
        description="Gated DeltaNet: delta-rule memory with a learned decay (chunked backend)",
        test_configs=[{}, {"heads": 3}, {"rule": "linear", "heads": 2}],
    )
    register(
        "linear_attention",
        LinearAttention,
        description="linear attention, optionally with a fixed or gated decay (chunked backend)",
        test_configs=[{}, {"decay": "fixed", "heads": 2}, {"decay": "gated", "heads": 3}],
    )
