"""Hybrid stacks (issue 15, item 6): layers of cells and causal attention in Jamba's layout,
pre-norm residual blocks, dense or top-k mixture-of-experts MLPs with a balance loss, and the
registered ``jamba`` models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models import create_model, list_models
from rnnkit.models.hybrid import (
    CausalSelfAttention,
    HybridNetwork,
    MixtureOfExperts,
    SwiGLU,
    hybrid_pattern,
    load_balancing_loss,
)


def test_jamba_layout() -> None:
    # the paper's period: attention at i % 8 == 4, one in eight layers
    assert hybrid_pattern(8, attn_every=8, attn_offset=4) == [
        *["mamba"] * 4,
        "attention",
        *["mamba"] * 3,
    ]
    assert hybrid_pattern(3, cell="lstm", attn_every=0) == ["lstm"] * 3
    with pytest.raises(ValueError, match="attn_offset"):
        hybrid_pattern(4, attn_every=2, attn_offset=2)


def test_layers_and_mlps_follow_the_configuration() -> None:
    net = HybridNetwork(2, 3, hidden_size=8, heads=2, num_layers=6, d_state=4)
    kinds = [b.kind for b in net.blocks]  # type: ignore[union-attr]
    assert kinds == ["mamba", "mamba", "attention", "mamba", "mamba", "mamba"]
    moe = [isinstance(b.mlp, MixtureOfExperts) for b in net.blocks]  # type: ignore[union-attr]
    assert moe == [False, True, False, True, False, True]  # every other layer, offset 1
    explicit = HybridNetwork(2, 3, hidden_size=8, heads=2, layers="s4d, attention,lru")
    assert [b.kind for b in explicit.blocks] == ["s4d", "attention", "lru"]  # type: ignore[union-attr]
    dense = HybridNetwork(2, 3, hidden_size=8, heads=2, layers=["attention"] * 2, num_experts=0)
    assert all(isinstance(b.mlp, SwiGLU) for b in dense.blocks)  # type: ignore[union-attr]
    bare = HybridNetwork(2, 3, hidden_size=8, heads=2, layers=["lstm"], mlp_ratio=0)
    assert bare.blocks[0].mlp is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="num_layers=3 but layers names 2"):
        HybridNetwork(2, 3, layers=["mamba", "attention"], num_layers=3)
    with pytest.raises(ValueError, match="output width"):
        HybridNetwork(2, 3, hidden_size=8, layers=["lstm"], state_size=5)
    with pytest.raises(ValueError, match="top_k"):
        HybridNetwork(2, 3, hidden_size=8, layers=["lru", "lru"], num_experts=2, top_k=3)


def test_blocks_are_pre_norm_residual() -> None:
    """With every mixer's and MLP's output projection zeroed, each block is the identity."""
    torch.manual_seed(0)
    net = HybridNetwork(2, 3, hidden_size=8, heads=2, layers=["mamba", "attention"], num_experts=0)
    with torch.no_grad():
        for block in net.blocks:
            mixer = block.mixer  # type: ignore[union-attr]
            (
                mixer.o_proj if isinstance(mixer, CausalSelfAttention) else mixer.out_proj
            ).weight.zero_()
            block.mlp.down.weight.zero_()  # type: ignore[union-attr]
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(net(x), net.head(net.norm(net.encoder(x))))


def _naive_attention(a: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, t, w = x.shape
    q = a.q_proj(x).view(b, t, a.heads, a.head_dim)
    k = a.k_proj(x).view(b, t, a.kv_heads, a.head_dim)
    v = a.v_proj(x).view(b, t, a.kv_heads, a.head_dim)
    group = a.heads // a.kv_heads
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(a.head_dim)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    y = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, t, w)
    out: torch.Tensor = a.o_proj(y)
    return out


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_is_causal_softmax_attention(kv_heads: int) -> None:
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, heads=4, kv_heads=kv_heads).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    y, cache = attn(x)
    torch.testing.assert_close(y, _naive_attention(attn, x), rtol=1e-12, atol=1e-12)
    assert cache.keys.shape == (2, kv_heads, 6, 2)
    # later positions do not reach earlier outputs
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 8, dtype=torch.float64)
    torch.testing.assert_close(attn(x2)[0][:, :4], y[:, :4], rtol=0, atol=0)


def test_mixture_of_experts_routes_each_token_to_its_top_k() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 5, num_experts=4, top_k=2).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    y, aux = moe(x)
    assert y.shape == x.shape
    for token in x.reshape(-1, 6):
        probs = torch.softmax(moe.router(token), -1)
        top = probs.topk(2)
        want = sum(
            (p / top.values.sum()) * moe.experts[int(e)](token)
            for p, e in zip(top.values, top.indices, strict=True)
        )
        got = y.reshape(-1, 6)[int((x.reshape(-1, 6) == token).all(-1).nonzero()[0])]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert aux.dim() == 0 and aux >= 1 - 1e-12  # at least the uniform value


def test_balance_loss_is_one_when_balanced_and_grows_when_not() -> None:
    uniform = torch.full((4, 4), 0.25)
    assert float(load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]))) == 1
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    loss = load_balancing_loss(skewed, torch.tensor([[0, 1]] * 4))
    assert float(loss) == pytest.approx(4 * (0.5 * 0.7 + 0.5 * 0.1))
    # the gradient pushes the over-used expert's probability down
    logits = torch.zeros(4, 4, requires_grad=True)
    load_balancing_loss(logits.softmax(-1), torch.tensor([[0, 1]] * 4)).backward()
    assert logits.grad is not None and (logits.grad[:, 0] > 0).all()


def test_aux_loss_is_set_by_every_forward_and_trains_the_routers() -> None:
    torch.manual_seed(0)
    model = create_model("jamba", vocab_size=7, hidden_size=8, heads=2, d_state=4)
    assert isinstance(model, HybridNetwork)
    model(torch.randint(0, 7, (2, 5)))
    aux = model.aux_loss
    assert model.regularization(0.5) is aux  # what the trainer adds
    assert (
        aux.dim() == 0 and aux.requires_grad and float(aux.detach()) >= 2 * 0.01 - 1e-6
    )  # 2 MoE layers
    aux.backward()
    routers = [b.mlp.router for b in model.blocks if isinstance(b.mlp, MixtureOfExperts)]  # type: ignore[union-attr]
    assert len(routers) == 2 and all(r.weight.grad is not None for r in routers)
    dense = create_model("jamba", vocab_size=7, hidden_size=8, heads=2, num_experts=0)
    dense(torch.randint(0, 7, (2, 5)))
    assert float(dense.aux_loss) == 0.0  # type: ignore[arg-type]


def test_jamba_models_are_registered_and_follow_the_task_contract() -> None:
    assert {"jamba", "jamba_classifier", "mamba_lm"} <= set(list_models())
    # the keywords a task passes: io first (input_size=0 for ids), then the width
    lm = create_model("jamba", input_size=0, vocab_size=9, output_size=9, hidden_size=8, heads=2)
    out = lm(torch.randint(0, 9, (2, 7)), backend="reference")
    assert out.shape == (2, 7, 9)
    mamba = create_model("mamba_lm", input_size=0, vocab_size=9, output_size=9, hidden_size=8)
    assert mamba(torch.randint(0, 9, (2, 7))).shape == (2, 7, 9)
    clf = create_model("jamba_classifier", input_size=3, output_size=4, hidden_size=8, heads=2)
    x = torch.randn(2, 7, 3, requires_grad=True)
    logits = clf(x)
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert x.grad is not None
    # every parameter but the experts no token was routed to gets a gradient
    assert all(p.grad is not None for n, p in clf.named_parameters() if ".experts." not in n)
