"""rnnkit-models' plugin module: registers its networks (recurrent stacks, SSM blocks, hybrid
stacks), its cells and the kernels of cells' own parallel algorithms (Aaren's prefix scan,
S4D's and LSSL's convolution modes, pLSTM's chunked form)."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterCell, RegisterKernel, RegisterModel, hookimpl
from rnnkit.models import (
    dsr,
    forecasting,
    hybrid,
    hypernet,
    jrt,
    networks,
    plstm2d,
    pointer,
    pvrnn,
    recommend,
    time_llm,
    transformer,
    universal,
    video,
)
from rnnkit.models.cells import (
    ALRNN,
    LRU,
    RHN,
    Aaren,
    DeltaNet,
    GatedDeltaNet,
    HybridRNN,
    IndRNN,
    LeakyRNN,
    LinearAttention,
    Mamba,
    Mamba2,
    Memora,
    Moneta,
    ParaGRU,
    ParaLSTM,
    StateRegularized,
    Titans,
    Yaad,
)
from rnnkit.models.cells.aaren import PARALLEL_KERNEL
from rnnkit.models.cells.jrt import BasedAttention
from rnnkit.models.cells.lssl import CONV_KERNEL as LSSL_CONV_KERNEL
from rnnkit.models.cells.lssl import LSSL
from rnnkit.models.cells.m2rnn import M2RNN
from rnnkit.models.cells.miras import CHUNKED_KERNELS, EXACT_KERNELS
from rnnkit.models.cells.plstm import CHUNKED_KERNEL as PLSTM_CHUNKED_KERNEL
from rnnkit.models.cells.plstm import PLSTM
from rnnkit.models.cells.s4d import CONV_KERNEL, S4D
from rnnkit.models.cells.s5 import S5


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    register("sequence_tagger", networks.sequence_tagger)
    register("sequence_classifier", networks.sequence_classifier)
    register("char_lm", networks.char_lm)
    register("ssm_classifier", networks.ssm_classifier)
    register("ssm_tagger", networks.ssm_tagger)
    register("mamba_classifier", networks.mamba_classifier)
    register("mamba_lm", networks.mamba_lm)
    register("mamba2_lm", networks.mamba2_lm)
    register("jamba", hybrid.jamba)
    register("jamba_classifier", hybrid.jamba_classifier)
    register("transformer_lm", transformer.transformer_lm)
    register("arnet", forecasting.arnet)
    register("pgn", forecasting.pgn)
    register("tpgn", forecasting.tpgn)
    register("esrnn", forecasting.esrnn)
    register("mes_lstm", forecasting.mes_lstm)
    register("conv_ffn_rnn", forecasting.conv_ffn_rnn)
    register("patch_forecaster", time_llm.patch_forecaster)
    register("universal_transformer", universal.universal_transformer)
    register("pointer_net", pointer.pointer_net)
    register("plstm_vision", plstm2d.plstm_vision)
    register("alrnn_dsr", dsr.alrnn_dsr)
    register("pvrnn", pvrnn.pvrnn)
    register("jrt_classifier", jrt.jrt_classifier)
    register("based_classifier", jrt.based_classifier)
    register("sasrec", recommend.sasrec)
    register("gru4rec", recommend.gru4rec)
    register("lrcn", video.lrcn)
    register("frame_average", video.frame_average)
    register("rnn_hypernet", hypernet.rnn_hypernet)


@hookimpl
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    register(PARALLEL_KERNEL)
    register(CONV_KERNEL)
    register(LSSL_CONV_KERNEL)
    for kernel in (*CHUNKED_KERNELS, *EXACT_KERNELS):
        register(kernel)
    register(PLSTM_CHUNKED_KERNEL)


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
        "s5",
        S5,
        description="S5: MIMO complex diagonal SSM, HiPPO-N blocks (scan backends, resets)",
        test_configs=[{"blocks": 1}, {"blocks": 3}, {"blocks": 1, "discretization": "bilinear"}],
    )
    register(
        "lssl",
        LSSL,
        description="LSSL: dense HiPPO-LegS SSM per channel (lssl_conv: Krylov + FFT mode)",
        test_configs=[{}, {"share_a": False}],
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
        "mamba",
        Mamba,
        description="Mamba-1 block: selective SSM with causal conv and SiLU gate (selective scans)",
        test_configs=[{}, {"d_state": 3, "d_conv": 2}, {"d_conv": 1, "bias": True}],
    )
    register(
        "mamba2",
        Mamba2,
        description="Mamba-2 block: SSD, scalar decay per head, gated RMSNorm (chunked backend)",
        # headdim=1 (six heads) rather than one head of 6: with one head D is a single number
        # whose float32 gradient sums terms that cancel, and misses the kit's float32 bound on
        # the reference loop as much as on chunked (rounding, not the kernel)
        test_configs=[
            {"d_state": 4, "headdim": 3},
            {"d_state": 3, "headdim": 2, "ngroups": 3, "d_conv": 2},
            {"d_state": 2, "headdim": 1, "d_conv": 1, "bias": True},
        ],
    )
    register(
        "indrnn",
        IndRNN,
        description="IndRNN: h = act(W x + u * h + b), elementwise u (diagonal Jacobian; newton)",
        test_configs=[{}, {"activation": "tanh", "u_max": 0.9}, {"bias": False}],
    )
    register(
        "rhn",
        RHN,
        description="Recurrent Highway Network: depth highway micro-steps, coupled carry gate",
        test_configs=[{}, {"depth": 1}],
    )
    register(
        "hybrid_rnn",
        HybridRNN,
        description="tanh RNN + additive/learned-rate/gated update, attention over last K states",
        # two configurations keep the default sweep short; the oracle tests in
        # packages/models/tests/test_hybrid_rnn.py cover every update with and without attention
        test_configs=[{}, {"update": "additive", "attention": 2}],
    )
    register(
        "leakyrnn",
        LeakyRNN,
        description="leaky RNN with trainable timescales tau >= 1 per unit",
        test_configs=[{}, {"activation": "relu", "train_tau": False}],
    )
    register(
        "srrnn",
        StateRegularized,
        description="state-regularised GRU/LSTM: hidden state pulled onto learned centroids",
        test_configs=[{}, {"base": "lstm", "centroids": 5, "temperature": 0.5}],
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
    register(
        "moneta",
        Moneta,
        description="Moneta (Miras): l_p bias, l_q retention, matrix memory (chunked_approx)",
        # one configuration per Miras cell: the kit's compile check alone takes ~20 s per
        # configuration on the 2-core CI machine; p = q = 2 and other exponents are checked
        # against the equations in packages/models/tests/test_miras.py
        test_configs=[{"heads": 2}],
    )
    register(
        "yaad",
        Yaad,
        description="Yaad (Miras): Huber-style bias, l_2 retention, matrix memory (chunked_approx)",
        # heads=2 rather than the default one head: with one head the float32 gradient of the
        # 1-number delta bias (a sum over the few steps past the threshold) missed the kit's
        # 1e-5 bound on the reference loop itself (1.2e-5: rounding, there is no other backend)
        test_configs=[{"heads": 2}],
    )
    register(
        "memora",
        Memora,
        description="Memora (Miras): l_2 bias, KL retention, softmax memory (chunked_approx)",
        # heads=3: with one head the float32 gradient of the 1-number A_log missed the kit's
        # 1e-5 bound on the reference loop itself (1.1e-5: rounding, no other backend)
        test_configs=[{"heads": 3, "scale": 1.5}],
    )
    register(
        "titans",
        Titans,
        description="Titans memory: GD with momentum and weight decay, matrix memory",
        test_configs=[{"heads": 2}],
    )
    register(
        "plstm",
        PLSTM,
        description="pLSTM 1D: matrix memory with source/transition/mark gates (chunked backend)",
        # chunk_size=3 makes the kit's short sequences span several chunks
        test_configs=[{"heads": 2, "chunk_size": 3, "gate_bias": -1.0}],
    )
    register(
        "alrnn",
        ALRNN,
        description="AL-RNN: z = A z + W phi*(z) + C s + h, ReLU on the last P units only",
        test_configs=[{}],
    )
    register(
        "m2rnn",
        M2RNN,
        description="M2RNN: K x V matrix state per head with a tanh update (reference loop)",
        # one configuration (three heads, K != V): the kit's compile check alone costs seconds
        # per configuration; single heads and K = 1 are in packages/models/tests/test_m2rnn.py
        test_configs=[{"value_dim": 2, "key_dim": 3}],
    )
    register(
        "based",
        BasedAttention,
        description="Based Taylor linear attention; JRT-RNN's causal part (chunked backend)",
        # one configuration: the kit's compile check alone costs seconds per configuration;
        # one head and other feature sizes are in packages/models/tests/test_jrt.py
        test_configs=[{"heads": 3, "feature_dim": 2}],
    )
