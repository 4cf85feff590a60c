"""The QRNN plugin: its entry point, the quantum neuron against an explicit circuit, the cell
against dense matrices, the conformance kit, and that it learns."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.core import create_cell
from rnnkit.core.plugins import PluginHost
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit_qrnn import QRNNCell, QRNNClassifier, qrnn_classifier, rus_activation


class TestQRNNConformance(CellConformance):
    """rnnkit's conformance kit, one test per check, at the defaults (the registered test
    configuration, every option away from its default, runs in the integration session's
    sweep over registered cells: tests/test_conformance_registered.py)."""

    def make_cell(self) -> QRNNCell:
        return QRNNCell(input_size=5, hidden_size=3)


def test_registered_through_the_entry_point_of_the_installed_distribution() -> None:
    host = PluginHost()
    entry = host.cells.get("qrnn")
    assert entry.obj.cls is QRNNCell
    assert (entry.origin.plugin, entry.origin.distribution) == ("qrnn", "rnnkit-qrnn")
    model = host.models.get("qrnn_classifier")
    assert model.obj is qrnn_classifier
    assert model.origin.distribution == "rnnkit-qrnn"


def ry(angle: float) -> Tensor:
    """``R_y(angle) = exp(-i angle Y / 2)``, real."""
    c, s = math.cos(angle / 2), math.sin(angle / 2)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


@pytest.mark.parametrize("theta", [-2.0, -0.3, 0.0, 0.4, math.pi / 4, 1.2, math.pi / 2, 2.9])
def test_one_rus_stage_equals_the_postselected_ancilla_circuit(theta: float) -> None:
    # ancilla (first factor) x target, ancilla starting in |0>; a random target state
    psi_t = F.normalize(torch.tensor([0.3, -0.8], dtype=torch.float64), dim=0)
    eye = torch.eye(2, dtype=torch.float64)
    minus_iy = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    p0, p1 = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))
    controlled = torch.kron(p0.double(), eye) + torch.kron(p1.double(), minus_iy)
    circuit = torch.kron(ry(-2 * theta), eye) @ controlled @ torch.kron(ry(2 * theta), eye)
    out = circuit @ torch.kron(torch.tensor([1.0, 0.0], dtype=torch.float64), psi_t)
    success = out[:2]  # the ancilla measured in |0>
    phi, p = rus_activation(torch.tensor(theta, dtype=torch.float64), 1)
    assert_close("p", p, success.square().sum(), 1e-12)
    assert_close("state", success / p.sqrt(), ry(2 * float(phi)) @ psi_t, 1e-12)
    want = math.atan(math.tan(theta) ** 2) if abs(math.cos(theta)) > 1e-9 else math.pi / 2
    assert abs(float(phi) - want) < 1e-9


def test_higher_order_sharpens_the_step_around_a_quarter_turn() -> None:
    theta = torch.tensor([math.pi / 4 - 0.2, math.pi / 4, math.pi / 4 + 0.2], dtype=torch.float64)
    lo1, mid1, hi1 = rus_activation(theta, 1)[0].tolist()
    lo3, mid3, hi3 = rus_activation(theta, 3)[0].tolist()
    assert abs(mid1 - math.pi / 4) < 1e-12 and abs(mid3 - math.pi / 4) < 1e-12  # fixed point
    assert lo3 < lo1 < mid1 < hi1 < hi3  # order 3 pushes both sides further out
    assert hi3 - lo3 > 2 * (hi1 - lo1)


def dense_step(cell: QRNNCell, x: Tensor, psi: Tensor) -> tuple[Tensor, Tensor]:
    """One step of a real 2-qubit, degree-1 cell built from 4x4 matrices, for one example."""
    w, u = cell.weight.detach(), cell.input_weight.detach()
    p = [torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)), None]
    p[1] = torch.eye(2, dtype=torch.float64) - p[0]
    for j in range(2):
        other = 1 - j
        blocks = torch.zeros(4, 4, dtype=torch.float64)
        for s in range(2):  # the other qubit's basis state
            theta = w[j, 0] + w[j, 1] * s + float(u[j, 0] @ x)
            phi, prob = rus_activation(torch.tensor(float(theta), dtype=torch.float64), cell.order)
            rot = ry(2 * float(phi))
            if cell.amplification == "none":
                rot = rot * prob.sqrt()
            proj = p[s]
            assert proj is not None
            # qubit 0 is the left (most significant) factor
            blocks += torch.kron(rot, proj) if j == 0 else torch.kron(proj, rot)
        del other
        psi = blocks @ psi
        psi = psi / psi.norm()
    probs = psi.square()
    y = torch.stack([probs[2:].sum(), probs[1] + probs[3]])
    return y, psi


@pytest.mark.parametrize("initial", ["zero", "uniform"])
@pytest.mark.parametrize("amplification", ["ideal", "none"])
def test_matches_dense_matrices(amplification: str, initial: str) -> None:
    torch.manual_seed(0)
    cell = create_cell(
        "qrnn",
        input_size=3,
        hidden_size=2,
        degree=1,
        order=2,
        amplification=amplification,
        initial=initial,
    ).double()
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    y, state = cell(x)
    if initial == "zero":  # the paper's |00>
        psi = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    else:  # H^2 |00>
        psi = torch.full((4,), 0.5, dtype=torch.float64)
    for t in range(4):
        want_y, psi = dense_step(cell, x[0, t], psi)
        assert_close(f"y_{t}", y[0, t], want_y, 1e-12)
    assert_close("final", cell.register(state)[0], psi, 1e-12)


def test_register_starts_in_all_zeros_as_in_the_paper() -> None:
    # Bausch's cell starts from |0...0>. Neurons whose angle is pi/2 times the input bit
    # (q(pi/2) = pi/2, a full flip) turn it into |1...1> on a 1 and leave it on a 0, so every
    # qubit reads exactly the input bit; from the uniform superposition a flip leaves each
    # qubit's probability at 1/2 and the readout would be blind to it.
    cell = QRNNCell(1, 3, degree=1).double()
    with torch.no_grad():
        cell.weight.zero_()
        cell.input_weight.zero_()
        cell.input_weight[:, 0, 0] = math.pi / 2  # the empty monomial's input coupling
    for bit in (0.0, 1.0):
        y, _ = cell(torch.full((1, 1, 1), bit, dtype=torch.float64))
        assert_close(f"y after {bit}", y[0, 0], torch.full((3,), bit, dtype=torch.float64), 1e-12)
    ket0 = torch.zeros(8, dtype=torch.float64)
    ket0[0] = 1.0
    assert_close("fresh register", cell.register(cell.init_state(1))[0], ket0, 0.0)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"amplification": "none", "order": 3},
        {"amplitudes": "complex", "degree": 3},
        {"amplitudes": "complex", "initial": "uniform"},
    ],
)
def test_the_register_stays_normalised_and_outputs_are_probabilities(
    config: dict[str, object],
) -> None:
    torch.manual_seed(0)
    cell = QRNNCell(2, 4, **config).double()  # type: ignore[arg-type]
    y, state = cell(torch.randn(3, 30, 2, dtype=torch.float64) * 3)
    norm = cell.register(state).square().flatten(1).sum(1)
    assert_close("norm", norm, torch.ones(3, dtype=torch.float64), 1e-12)
    assert bool(((y >= 0) & (y <= 1)).all())


def test_complex_phases_change_the_outputs() -> None:
    # with phases the amplitudes interfere differently: a real cell with the same R_y
    # parameters gives other probabilities
    torch.manual_seed(0)
    cplx = QRNNCell(2, 3, amplitudes="complex").double()
    real = QRNNCell(2, 3).double()
    real.load_state_dict({k: v for k, v in cplx.state_dict().items() if "phase" not in k})
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    assert (cplx(x)[0] - real(x)[0]).abs().max() > 1e-3


def test_bad_hyperparameters_raise_naming_the_argument() -> None:
    for kwargs, name in [
        ({"hidden_size": 13}, "hidden_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"degree": 0}, "degree"),
        ({"degree": 4}, "degree"),
        ({"order": 0}, "order"),
        ({"amplification": "grover"}, "amplification"),
        ({"amplitudes": "quaternion"}, "amplitudes"),
        ({"initial": "plus"}, "initial"),
    ]:
        config: dict[str, object] = {"input_size": 2, "hidden_size": 4, **kwargs}
        with pytest.raises(ValueError, match=rf"^{name} "):
            QRNNCell(**config)  # type: ignore[arg-type]
    # the classifier's own option is named, not the input_size it stands in for
    for vocab in (0, -1, "abc"):
        with pytest.raises(ValueError, match=r"^vocab_size "):
            QRNNClassifier(0, 2, hidden_size=3, vocab_size=vocab)  # type: ignore[arg-type]


def delayed_bit_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Bit sequences of length 5; the target is the second bit (recall across 3 steps)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, 5, 1), generator=g).float()
    return bits, bits[:, 1, 0].long()


def _trained_accuracy(
    model: QRNNClassifier, data: Callable[[int, int], tuple[Tensor, Tensor]]
) -> float:
    """Train ``model`` 60 Adam steps (lr 0.05) on 256 examples of ``data`` (seed 0); its
    accuracy on 256 fresh ones (seed 1)."""
    x, y = data(256, 0)
    x_test, y_test = data(256, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model(x_test).argmax(-1) == y_test).float().mean())


def test_learns_to_recall_a_bit_in_seconds() -> None:
    torch.manual_seed(0)
    accuracy = _trained_accuracy(QRNNClassifier(1, 2, hidden_size=3), delayed_bit_data)
    # chance is 0.5 (balanced bits): recalling the bit must beat it by a wide margin
    assert accuracy >= 0.9, accuracy


def parity_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Token sequences of length 6 over {1, 2} (token 0 unused); the target is the parity
    of the number of 2s (a permutation automaton, as Tomita 5 and the paper's memorisation
    tasks need)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 3, (n, 6), generator=g)
    return tokens, (tokens == 2).sum(1) % 2


def test_token_inputs_learn_a_parity_in_seconds() -> None:
    # tokens enter one-hot (vocab_size); from |0...0> a neuron that flips its qubit on each 2
    # reads the parity off
    torch.manual_seed(0)
    accuracy = _trained_accuracy(QRNNClassifier(0, 2, hidden_size=3, vocab_size=3), parity_data)
    assert accuracy >= 0.9, accuracy  # chance is about 0.5


needs_tasks = pytest.mark.skipif(
    importlib.util.find_spec("rnnkit.tasks") is None, reason="rnnkit-tasks is not installed"
)


def documented_run(task: str, hidden_size: int, lr: float, out: Path) -> dict[str, float]:
    """Test metrics of ``rnnkit train --task TASK --model qrnn_classifier --hidden-size
    HIDDEN_SIZE --lr LR`` (seed 0, the task's budget of steps)."""
    from rnnkit.tasks.trainer import train

    result = train(
        task=task,
        model="qrnn_classifier",
        model_config={"hidden_size": hidden_size},
        lr=lr,
        out=str(out),
        progress=False,
        plot=False,
        verbose=False,
    )
    return dict(result.test)


@pytest.mark.experiment
@needs_tasks
def test_dms_score_in_the_docs(tmp_path: Path) -> None:
    """docs/tasks.md's ``rnnkit train --task dms --model qrnn_classifier --hidden-size 6
    --lr 0.01``."""
    test = documented_run("dms", 6, 0.01, tmp_path / "run")
    # chance is 0.5; docs/tasks.md reports 0.950 (seed 0; 0.579 from the uniform superposition)
    assert test["accuracy"] >= 0.85, test


@pytest.mark.experiment
@needs_tasks
def test_tomita5_score_in_the_docs(tmp_path: Path) -> None:
    """docs/tasks.md's ``rnnkit train --task tomita5 --model qrnn_classifier --hidden-size 4
    --lr 0.03`` (token inputs one-hot)."""
    test = documented_run("tomita5", 4, 0.03, tmp_path / "run")
    # chance is 0.5 (balanced); docs/tasks.md reports 0.877 on the longer test strings (23-30)
    assert test["accuracy"] >= 0.8, test


def test_the_classifier_passes_initial_and_reads_tokens_one_hot() -> None:
    """``initial`` reaches every layer's cell (default ``"zero"`` in the class and the
    registered builder, and named in the cell's repr); with ``vocab_size`` token ``k`` enters
    as the one-hot vector ``e_k``: the same logits as float inputs ``F.one_hot(x)``."""

    def cells(m: torch.nn.Module) -> list[QRNNCell]:
        return [c for c in m.modules() if isinstance(c, QRNNCell)]

    for build in (QRNNClassifier, qrnn_classifier):
        assert [c.initial for c in cells(build(2, 3, hidden_size=2, num_layers=2))] == ["zero"] * 2
        uniform = build(2, 3, hidden_size=2, num_layers=2, initial="uniform")
        assert [c.initial for c in cells(uniform)] == ["uniform"] * 2
    assert "initial='uniform'" in repr(cells(uniform)[0])
    torch.manual_seed(0)
    tokens_model = QRNNClassifier(0, 2, hidden_size=2, vocab_size=3).double()
    float_model = QRNNClassifier(3, 2, hidden_size=2).double()
    float_model.load_state_dict(tokens_model.state_dict())
    x = torch.tensor([[0, 1, 2, 2], [2, 0, 0, 1]])
    want = float_model(F.one_hot(x, 3).double())
    assert_close("token logits", tokens_model(x), want, 0.0)
    # vocab_size decides the width whatever input_size says (a task's token stream has 1)
    assert QRNNClassifier(1, 2, hidden_size=2, vocab_size=3)(x).shape == (2, 2)


@pytest.mark.parametrize("complex_pairs", [False, True])
def test_the_zero_register_is_one_real_amplitude_on_basis_zero(complex_pairs: bool) -> None:
    """``|0...0>``: amplitude exactly ``1 + 0i`` on basis index 0, zero elsewhere (not a
    global phase of it: :meth:`QRNNCell.register` hands the amplitudes out)."""
    cell = QRNNCell(1, 2, amplitudes="complex" if complex_pairs else "real").double()
    psi = cell.register(cell.init_state(1))[0]
    want = torch.zeros((4, 2) if complex_pairs else (4,), dtype=torch.float64)
    want.view(-1)[0] = 1.0  # the real part of basis index 0
    assert_close("|00>", psi, want, 0.0)
