"""The attention-only baseline ``transformer_lm`` (issue 18, item 12): registered, a causal LM,
its learned positions bound the context (:class:`ContextTooLongError` from the forward, the
prefill and the step). Cached decoding equal to the full forward and refused caches of another
batch are checked with the other cached models in test_cache.py."""

from __future__ import annotations

import pytest
import torch

from rnnkit.core.errors import RnnkitError
from rnnkit.models import create_model
from rnnkit.models.transformer import ContextTooLongError, TransformerLM


def _model(max_len: int = 6) -> TransformerLM:
    torch.manual_seed(0)
    model = create_model(
        "transformer_lm", vocab_size=7, hidden_size=8, num_layers=2, heads=2, max_len=max_len
    )
    assert isinstance(model, TransformerLM)
    return model.double().eval()


@torch.no_grad()
def test_it_is_causal() -> None:
    model = _model()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    changed = ids.clone()
    changed[0, 3] = 6
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert not torch.allclose(a[:, 3:], b[:, 3:])


@torch.no_grad()
def test_positions_matter() -> None:
    # learned positions: the same token at another position gives another output
    model = _model()
    out = model(torch.tensor([[2, 2]]))
    assert not torch.allclose(out[0, 0], out[0, 1])


@torch.no_grad()
def test_a_context_past_max_len_is_refused() -> None:
    model = _model(max_len=6)
    assert issubclass(ContextTooLongError, RnnkitError)
    with pytest.raises(ContextTooLongError, match="max_len=6"):
        model(torch.zeros(1, 7, dtype=torch.long))
    _, cache = model.prefill(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ContextTooLongError, match="7 positions"):
        model.prefill(torch.zeros(2, 3, dtype=torch.long), cache)
    _, cache = model.step(torch.zeros(2, dtype=torch.long), cache)
    _, cache = model.step(torch.zeros(2, dtype=torch.long), cache)  # the sixth: allowed
    assert cache.length == 6
    with pytest.raises(ContextTooLongError, match="max_len=6"):
        model.step(torch.zeros(2, dtype=torch.long), cache)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_len"):
        TransformerLM(5, max_len=0)
    with pytest.raises(ValueError, match="heads"):
        TransformerLM(5, hidden_size=6, heads=4)
    with pytest.raises(ValueError, match=r"token ids \(B, T\)"):
        _model()(torch.zeros(1, 3, 2))
