"""The SSM block network around channel-wise cells (S4D, LRU)."""

from __future__ import annotations

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.networks import SSMNetwork


@pytest.mark.parametrize(("name", "shape"), [("ssm_classifier", (3, 4)), ("ssm_tagger", (3, 9, 4))])
@pytest.mark.parametrize("cell", ["s4d", "lru"])
def test_shapes_and_gradients(name: str, shape: tuple[int, ...], cell: str) -> None:
    torch.manual_seed(0)
    model = create_model(
        name, input_size=2, output_size=4, cell=cell, hidden_size=8, num_layers=2, state_size=4
    )
    x = torch.randn(3, 9, 2, requires_grad=True)
    out = model(x)
    assert out.shape == shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_blocks_are_residual() -> None:
    """With the mixing layers zeroed, every block is the identity and the encoder reaches
    the head unchanged (up to the final norm)."""
    torch.manual_seed(0)
    net = SSMNetwork(2, 3, hidden_size=8, num_layers=3, state_size=4, pooling="none")
    with torch.no_grad():
        for block in net.blocks:
            block.mix.weight.zero_()
            block.mix.bias.zero_()
    x = torch.randn(2, 5, 2)
    want = net.head(net.norm(net.encoder(x)))
    assert torch.allclose(net(x), want, atol=1e-6)


def test_refuses_a_cell_that_changes_the_width() -> None:
    with pytest.raises(ValueError, match="channel-wise cell"):
        SSMNetwork(2, 3, cell="lstm", hidden_size=8, state_size=16)


def test_token_inputs() -> None:
    net = SSMNetwork(0, 7, vocab_size=11, hidden_size=8, state_size=4, pooling="none")
    assert net(torch.randint(0, 11, (2, 6))).shape == (2, 6, 7)
