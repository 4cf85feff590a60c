"""COUNTS' pieces (rnnkit.models.counts): the scale token rule, residual VQ and GRPO against
hand-written float64 oracles, the tokeniser's round trip, the frozen backbone and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.counts import (
    RVQVAE,
    CountsLM,
    ResidualVQ,
    grpo_advantages,
    grpo_objective,
    matched_hidden_size,
    patchify,
    scale_exponents,
)


def _scale_oracle(patch: list[float], lo: int, hi: int) -> int:
    peak = max(abs(v) for v in patch)
    if peak == 0.0:
        return lo
    return min(max(round(math.log2(peak)), lo), hi)  # round(): halves to even, as torch.round


def test_scale_exponents_match_the_rule() -> None:
    rows = [
        [0.0, 0.0, 0.0],  # all zero -> the lowest exponent
        [1.0, -0.5, 0.25],  # exactly 2^0
        [0.1, -3.0, 2.0],  # log2 3 = 1.58 -> 2
        [0.7, 0.2, -0.1],  # log2 0.7 = -0.51 -> -1
        [-1.4, 0.0, 0.0],  # log2 1.4 = 0.49 -> 0 (a negative peak counts by magnitude)
        [1e-6, 0.0, -1e-7],  # 2^-19.9 -> clipped to 2^-10
        [1e12, 3.0, 0.0],  # 2^39.9 -> clipped to 2^36
        [5.0, 6.0, -6.5],  # log2 6.5 = 2.70 -> 3
    ]
    x = torch.tensor(rows, dtype=torch.float64)
    e = scale_exponents(x)
    assert e.dtype == torch.long and e.shape == (len(rows),)
    assert e.tolist() == [_scale_oracle(r, -10, 36) for r in rows]
    assert e.tolist() == [-10, 0, 2, -1, 0, -10, 36, 3]
    narrow = scale_exponents(x, (-2, 2)).tolist()
    assert narrow == [_scale_oracle(r, -2, 2) for r in rows]
    # batch dimensions are kept: (2, 4, P) -> (2, 4)
    assert scale_exponents(torch.randn(2, 4, 5)).shape == (2, 4)


def test_scale_exponents_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="scale_range"):
        scale_exponents(torch.ones(2, 3), (3, 1))
    with pytest.raises(ValueError, match="patches"):
        scale_exponents(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="patch_len"):
        patchify(torch.ones(2, 10), 0)
    with pytest.raises(ValueError, match="series"):
        patchify(torch.ones(2, 10), 3)
    assert patchify(torch.arange(12.0)[None], 4)[0, 1].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_residual_vq_matches_a_hand_written_loop() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(3, 5, 4).double()
    z = torch.randn(7, 4, dtype=torch.float64)
    quant, codes, inputs = rvq.quantize(z)
    books = rvq.codebooks.detach().tolist()
    for n in range(7):
        r = z[n].tolist()
        total = [0.0] * 4
        for k in range(3):
            dists = [sum((r[i] - c[i]) ** 2 for i in range(4)) for c in books[k]]
            best = min(range(5), key=lambda j: (dists[j], j))
            assert int(codes[n, k]) == best
            assert inputs[k, n].tolist() == pytest.approx(r, abs=1e-12)
            r = [r[i] - books[k][best][i] for i in range(4)]
            total = [total[i] + books[k][best][i] for i in range(4)]
        assert quant[n].tolist() == pytest.approx(total, abs=1e-12)
    assert torch.allclose(rvq.lookup(codes), quant, atol=1e-12)
    # every stage leaves a smaller residual on average than the vector it was given
    res = (z - quant).detach()
    assert float((res**2).sum()) < float((z**2).sum())


def test_reset_unused_moves_dead_codes_onto_residuals() -> None:
    torch.manual_seed(0)
    rvq = ResidualVQ(2, 8, 3)
    with torch.no_grad():
        rvq.codebooks[0, 1:] = 100.0  # far away: only code 0 of stage 0 is picked
    z = torch.randn(64, 3)
    moved = rvq.reset_unused(z, torch.Generator().manual_seed(0))
    assert moved >= 7
    _, codes, _ = rvq.quantize(z)
    assert len(set(codes[:, 0].tolist())) > 1


def test_tokenizer_round_trip_and_power_of_two_equivariance() -> None:
    torch.manual_seed(0)
    tok = RVQVAE(8, dim=8, hidden=16, blocks=1, stages=3, codebook_size=6).eval()
    p = torch.randn(5, 8)
    tokens = tok.tokens(p)
    assert tokens.shape == (5, 4) and tokens.dtype == torch.long
    assert int(tokens[:, 0].min()) >= 0 and int(tokens[:, 0].max()) < tok.scales
    assert int(tokens[:, 1:].max()) < 6
    e, codes = tok.encode(p)
    assert torch.equal(tokens[:, 0], e + 10) and torch.equal(tokens[:, 1:], codes)
    # detokenize = 2^e * decoder(sum of the picked code vectors)
    expect = tok.decoder(tok.rvq.lookup(codes)) * torch.exp2(e.float())[:, None]
    assert torch.allclose(tok.detokenize(tokens), expect)
    # multiplying a patch by 2^k is exact in floating point: same codes, scale token + k
    t4 = tok.tokens(p * 4.0)
    assert torch.equal(t4[:, 1:], tokens[:, 1:]) and torch.equal(t4[:, 0], tokens[:, 0] + 2)
    assert torch.allclose(tok.detokenize(t4), 4.0 * tok.detokenize(tokens))
    # the training pass reconstructs with the straight-through estimator
    recon, vq = tok(p)
    assert recon.shape == p.shape and vq.dim() == 0
    recon.sum().backward()
    assert tok.encoder[0].weight.grad is not None


def test_tokenizer_bad_inputs_name_the_argument() -> None:
    tok = RVQVAE(8, dim=8, hidden=16, blocks=1, codebook_size=6)
    with pytest.raises(ValueError, match="patch_len"):
        RVQVAE(0)
    with pytest.raises(ValueError, match="codebook_size"):
        RVQVAE(8, codebook_size=0)
    with pytest.raises(ValueError, match="patches"):
        tok.tokens(torch.randn(3, 7))
    with pytest.raises(ValueError, match="tokens"):
        tok.detokenize(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="codes"):
        tok.rvq.lookup(torch.full((1, 3), 6))
    with pytest.raises(ValueError, match="exponents"):
        tok.decode(torch.tensor([40]), torch.zeros(1, 3, dtype=torch.long))


def test_grpo_advantages_by_hand() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    adv = grpo_advantages(r, eps=0.0)
    for b in range(2):
        row = r[b].tolist()
        mean = sum(row) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / 3)  # unbiased
        assert adv[b].tolist() == pytest.approx([(v - mean) / std for v in row], abs=1e-12)
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(torch.ones(3, 1))


def test_grpo_objective_by_hand() -> None:
    logp = torch.tensor([[[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7]]], dtype=torch.float64)
    old = torch.tensor([[[-0.7, -1.0, -1.0], [-0.4, -0.3, -0.2]]], dtype=torch.float64)
    ref = torch.tensor([[[-0.6, -1.5, -2.0], [-0.1, -0.2, -1.0]]], dtype=torch.float64)
    adv = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[[1, 1, 0], [1, 1, 1]]])
    clip, beta = 0.2, 0.1
    loss = grpo_objective(logp, old, ref, adv, mask, clip=clip, beta=beta)
    per_seq = []
    for g in range(2):
        terms = []
        for t in range(3):
            if not mask[0, g, t]:
                continue
            rho = math.exp(float(logp[0, g, t] - old[0, g, t]))
            a = float(adv[0, g])
            surr = min(rho * a, min(max(rho, 1 - clip), 1 + clip) * a)
            d = float(ref[0, g, t] - logp[0, g, t])
            terms.append(surr - beta * (math.exp(d) - d - 1))
        per_seq.append(sum(terms) / len(terms))
    assert float(loss) == pytest.approx(-sum(per_seq) / 2, abs=1e-12)
    # the gradient reaches logp only (old and ref are constants)
    lp = logp.clone().requires_grad_(True)
    grpo_objective(lp, old, ref, adv, mask).backward()
    assert lp.grad is not None and float(lp.grad[0, 0, 2]) == 0.0
    with pytest.raises(ValueError, match="advantages"):
        grpo_objective(logp, old, ref, adv[:, :1], mask)
    with pytest.raises(ValueError, match="clip"):
        grpo_objective(logp, old, ref, adv, mask, clip=1.5)
    with pytest.raises(ValueError, match="logp"):
        grpo_objective(logp, old[..., :2], ref, adv, mask)


def test_counts_lm_freezes_the_backbone() -> None:
    torch.manual_seed(0)
    bb = create_model("char_lm", vocab_size=20, cell="gru", hidden_size=12)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    lm = CountsLM(20, 9, bb, adapter=4)
    ids = torch.randint(0, 29, (3, 6))
    logits, _ = lm(ids)
    assert logits.shape == (3, 6, 9)
    # stepping with the state gives the same outputs as the whole sequence
    a, s = lm(ids[:, :4])
    b, _ = lm(ids[:, 4:], s)
    assert torch.allclose(torch.cat([a, b], 1), logits, atol=1e-6)
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=0.5)
    lm.train()
    logits.sum().backward()
    opt.step()
    assert not bb.training
    assert all(p.grad is None for p in bb.parameters())
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    # trainable: the 9 new rows (12 wide), the adapter (12 -> 4 -> 12 + LayerNorm), the head
    expect = 9 * 12 + (2 * 12 + 12 * 4 + 4 + 4 * 12 + 12) + (12 * 9 + 9)
    assert lm.trainable_parameters() == expect


def test_counts_lm_without_backbone_and_matched_size() -> None:
    target = 5000
    h = matched_hidden_size(target, 20, 9, cell="gru", adapter=4)
    counts = {
        w: CountsLM(20, 9, None, hidden_size=w, cell="gru", adapter=4).trainable_parameters()
        for w in (h - 1, h, h + 1)
    }
    assert abs(counts[h] - target) <= abs(counts[h - 1] - target)
    assert abs(counts[h] - target) <= abs(counts[h + 1] - target)
    lm = CountsLM(20, 9, None, hidden_size=h, cell="gru", adapter=4)
    assert lm(torch.randint(0, 29, (2, 5)))[0].shape == (2, 5, 9)


def test_counts_lm_bad_inputs_name_the_argument() -> None:
    bb = create_model("char_lm", vocab_size=20, cell="gru", hidden_size=12)
    with pytest.raises(ValueError, match="base"):
        CountsLM(21, 9, bb)
    with pytest.raises(ValueError, match="backbone"):
        CountsLM(20, 9, torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="adapter"):
        CountsLM(20, 9, None, adapter=-1)
    lm = CountsLM(20, 9, None, hidden_size=8)
    with pytest.raises(ValueError, match="ids"):
        lm(torch.tensor([[29]]))
    with pytest.raises(ValueError, match="ids"):
        lm(torch.zeros(2, 3))
