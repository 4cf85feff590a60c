"""Based / JRT-RNN: the Taylor feature map, prefix linear attention against its published
equations in float64, what the prefix makes non-causal, NaN propagation and bad sizes (the
conformance kit runs in tests/test_conformance_registered.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import backend_params

from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import BasedAttention, PrefixEncoder
from rnnkit.models.cells.jrt import EPS, prefix_mask, taylor_feature_count, taylor_features
from rnnkit.models.jrt import JRTNetwork, based_classifier, jrt_classifier


def test_taylor_features_expand_exp() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(50, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64)
    fq, fk = taylor_features(q), taylor_features(k)
    assert fq.shape == (50, taylor_feature_count(16)) == (50, 273)
    s = (q * k).sum(-1) / 4.0  # q . k / sqrt(d)
    assert_close("phi(q).phi(k)", (fq * fk).sum(-1), 1 + s + s * s / 2, 1e-13)
    assert bool(((fq * fk).sum(-1) >= 0.5 - 1e-12).all())


def _pla(cell: BasedAttention, enc: PrefixEncoder, x: torch.Tensor, m: list[int]) -> torch.Tensor:
    """The PLA equations in float64, with the kernel ``1 + s + s^2 / 2`` (no feature map)::

    y_i = (sum_{j<=i} w(q_i,k_j) v_j + sum_{j<M} w(q_i,ke_j) ve_j)
          / (sum_{j<=i} w(q_i,k_j) + sum_{j<M} w(q_i,ke_j) + eps)
    """
    B, T, _ = x.shape
    nh, d, V = cell.heads, cell.feature_dim, cell.value_dim
    p, pe = x @ cell.weight.detach().double().T, x @ enc.weight.detach().double().T
    y = torch.zeros(B, T, nh * V, dtype=torch.float64)

    def w(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s = (a * b).sum(-1) / math.sqrt(d)
        return 1 + s + s * s / 2

    for b in range(B):
        for h in range(nh):
            q = p[b, :, h * d : (h + 1) * d]
            k = p[b, :, nh * d + h * d : nh * d + (h + 1) * d]
            v = p[b, :, 2 * nh * d + h * V : 2 * nh * d + (h + 1) * V]
            ke = pe[b, : m[b], h * d : (h + 1) * d]
            ve = pe[b, : m[b], nh * d + h * V : nh * d + (h + 1) * V]
            for i in range(T):
                wd, we = w(q[i], k[: i + 1]), w(q[i], ke)
                num = wd @ v[: i + 1] + we @ ve
                y[b, i, h * V : (h + 1) * V] = num / (wd.sum() + we.sum() + EPS)
    return y


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
@pytest.mark.parametrize(("heads", "feature_dim"), [(1, 3), (2, 2)])
def test_prefix_attention_equals_the_equations(backend: str, heads: int, feature_dim: int) -> None:
    torch.manual_seed(0)
    cell = BasedAttention(5, 6, heads=heads, feature_dim=feature_dim).double()
    enc = PrefixEncoder(cell)
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    m = [0, 4, 9]  # none (causal Based), part, all of the sequence
    y, _ = cell(x, enc(x, torch.tensor(m)), backend=backend)
    assert_close("jrt vs PLA equations", y, _pla(cell, enc, x, m), 1e-9)
    y_fixed, _ = cell(x, enc(x, 4), backend=backend)
    assert_close("fixed prefix 4", y_fixed, _pla(cell, enc, x, [4, 4, 4]), 1e-9)


def test_the_prefix_is_read_non_causally_and_nothing_after_it() -> None:
    torch.manual_seed(0)
    cell = BasedAttention(4, 4, feature_dim=2).double()
    enc = PrefixEncoder(cell)
    x = torch.randn(1, 8, 4, dtype=torch.float64)

    def run(x: torch.Tensor) -> torch.Tensor:
        return cell(x, enc(x, 5), backend="reference")[0]

    y = run(x)
    inside, after = x.clone(), x.clone()
    inside[0, 4] += 1.0  # last prefix position: every output sees it, position 0 included
    after[0, 6] += 1.0  # after the prefix: causal, positions 0..5 do not see it
    assert (run(inside)[0, 0] - y[0, 0]).abs().max() > 1e-4
    assert torch.equal(run(after)[0, :6], y[0, :6])
    assert (run(after)[0, 6] - y[0, 6]).abs().max() > 1e-4
    # without a prefix the cell is causal
    y0 = cell(x, backend="reference")[0]
    assert torch.equal(cell(inside, backend="reference")[0][0, :4], y0[0, :4])


def test_padding_mask_leaves_positions_out_of_the_prefix() -> None:
    torch.manual_seed(0)
    cell = BasedAttention(4, 4, feature_dim=2).double()
    enc = PrefixEncoder(cell)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, :2] = False
    x[:, :2] = float("nan")  # masked out: must not reach the state
    S = enc(x, 5, mask=keep).S
    assert bool(torch.isfinite(S).all())
    assert_close("masked prefix", S, enc(x[:, 2:], 3).S, 1e-12)


def test_nan_in_gives_nan_out_from_that_step() -> None:
    torch.manual_seed(0)
    cell = BasedAttention(3, 4, heads=2, feature_dim=2)
    x = torch.randn(2, 6, 3)
    x[1, 2, 0] = float("nan")
    y, (S,) = cell(x, backend="reference")
    assert bool(torch.isfinite(y[0]).all()) and bool(torch.isfinite(y[1, :2]).all())
    assert bool(torch.isnan(y[1, 2:]).all())
    assert bool(torch.isnan(S[1]).any()) and bool(torch.isfinite(S[0]).all())
    # a NaN inside the prefix reaches every output of that row, and only that row
    enc = PrefixEncoder(cell)
    y, _ = cell(x, enc(x, 4), backend="reference")
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[0]).all())


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"feature_dim": 0}, "feature_dim"),
        ({"feature_dim": 65}, "feature_dim"),
        ({"feature_dim": 2.0}, "feature_dim"),
        ({"heads": 4}, "heads"),  # 4 does not divide 6
    ],
)
def test_bad_sizes_name_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        BasedAttention(5, 6, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [7, -8, torch.tensor([1, 9]), torch.tensor([1.0, 2.0]), "3"])
def test_bad_prefix_len_names_it(bad: object) -> None:
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_mask(bad, 2, 6, torch.device("cpu"))  # type: ignore[arg-type]


def test_prefix_mask_counts_from_the_end_when_negative() -> None:
    m = prefix_mask(torch.tensor([-1, 2]), 2, 4, torch.device("cpu"))
    assert m.tolist() == [[True, True, True, False], [True, True, False, False]]


def test_networks() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 10, (3, 7))
    x[:, :2] = 0  # left padding
    jrt = jrt_classifier(input_size=0, output_size=5, vocab_size=10, hidden_size=8)
    assert jrt.prefix_len == -1 and jrt.pad_id == 0
    assert jrt(x).shape == (3, 5)
    assert jrt(x, prefix_len=torch.tensor([0, 3, 6])).shape == (3, 5)
    based = based_classifier(input_size=0, output_size=5, vocab_size=10, hidden_size=8)
    assert based.prefix_len == 0 and based(x).shape == (3, 5)
    # no encoder weights in the causal network; a prefix asked of it is refused
    n_jrt, n_based = (sum(p.numel() for p in m.parameters()) for m in (jrt, based))
    assert n_jrt - n_based == 2 * (16 * 8 + 8 * 8)  # per block: W_ke (heads d, I), W_ve (I, I)
    with pytest.raises(ValueError, match="prefix_len"):
        based(x, prefix_len=3)
    with pytest.raises(ValueError, match="prefix_len"):
        based_classifier(input_size=0, output_size=5, vocab_size=10, prefix_len=-1)
    with pytest.raises(ValueError, match="feature_dim"):
        JRTNetwork(3, 2, feature_dim=0)
    tagger = JRTNetwork(3, 2, hidden_size=6, heads=3, feature_dim=2, pooling="none")
    assert tagger(torch.randn(2, 5, 3)).shape == (2, 5, 2)
