"""PV-RNN: a predictive-coding-inspired variational RNN (Ahmadi & Tani, Neural Computation 2019).

A stack of multiple-timescale (MTRNN) layers, each with a deterministic state ``d^k`` and a
stochastic latent ``z^k``. There is no encoder: the approximate posterior of every training
sequence, step and latent unit is a free parameter (the *adaptive vectors* ``A``), reached only
by the backpropagated prediction error. The meta-prior ``w`` weights the KL term of the ELBO;
:meth:`PVRNN.regularization` returns that term in the trainer's ``regularization(progress)``
convention. At test time :meth:`PVRNN.error_regression` fits fresh posterior latents to a
sliding window of observed data with the weights frozen, then rolls the prior forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_finite


class PVRNNState(NamedTuple):
    """State of :class:`PVRNN`: the internal (pre-tanh) states ``h[k]: (B, d_sizes[k])`` of
    every layer, bottom (``k = 0``, nearest the output) first; ``d^k = tanh(h[k])``."""

    h: tuple[Tensor, ...]


class Gaussian(NamedTuple):
    """A diagonal Gaussian per layer: ``mu[k], log_sigma[k]: (B, z_sizes[k])`` (``sigma`` is
    the standard deviation)."""

    mu: tuple[Tensor, ...]
    log_sigma: tuple[Tensor, ...]


class Rollout(NamedTuple):
    """What :meth:`PVRNN.rollout` returns: ``outputs (B, T, output_size)``, ``kl (B, T, L)``
    (KL(q || p) per step and layer summed over the layer's latent units; zeros when the
    latents come from the prior) and the final state."""

    outputs: Tensor
    kl: Tensor
    state: PVRNNState


class ErrorRegression(NamedTuple):
    """What :meth:`PVRNN.error_regression` returns.

    ``fit: (B, T_obs, output_size)``: the reconstruction of the observed steps under the final
    posterior latents (each step as last optimised); ``prediction: (B, horizon,
    output_size)``: the prior's roll-out after the last observed step; ``window_loss:
    (n_windows,)``: the free energy of each window after its last iteration (mean over the
    batch).
    """

    fit: Tensor
    prediction: Tensor
    window_loss: Tensor


def _gaussian_kl(q_mu: Tensor, q_ls: Tensor, p_mu: Tensor, p_ls: Tensor) -> Tensor:
    """KL(N(q_mu, e^{2 q_ls}) || N(p_mu, e^{2 p_ls})) summed over the last dimension."""
    var_ratio = torch.exp(2 * (q_ls - p_ls))
    mean_term = (q_mu - p_mu).square() * torch.exp(-2 * p_ls)
    return (p_ls - q_ls + 0.5 * (var_ratio + mean_term - 1)).sum(-1)


def _check_sizes(name: str, value: object, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    out = tuple(check_positive_int(name, v) for v in value)
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have one entry per layer ({length}), got {value!r}")
    return out


def _per_layer(name: str, value: object, layers: int, *, minimum: float) -> tuple[float, ...]:
    """A float per layer from a number or a sequence, each finite and ``>= minimum``."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if values is None:
        values = [value] * layers
    if len(values) != layers:
        raise ValueError(f"{name} must be a number or one per layer ({layers}), got {value!r}")
    out = tuple(check_finite(name, v) for v in values)
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum} (each layer), got {value!r}")
    return out


class PVRNN(nn.Module):
    """PV-RNN over ``num_sequences`` training sequences of up to ``seq_len`` steps.

    Layer ``k`` (``0`` = bottom, fastest; ``L - 1`` = top) at step ``t``::

        z^k_t ~ q(z^k_t) = N(tanh(A^mu_t), exp(A^sigma_t))          (posterior, training)
        p(z^k_t | d^k_{t-1}) = N(tanh(W^mu d^k_{t-1} + b^mu), exp(W^sigma d^k_{t-1} + b^sigma))
                              (N(0, I) at t = 0)
        h^k_t = (1 - 1/tau_k) h^k_{t-1} + (1/tau_k) (W_dd d^k_{t-1} + W_zd z^k_t
                                                      + W_top d^{k+1}_t + b)
        d^k_t = tanh(h^k_t),      x_hat_t = tanh(W_out d^0_t + b_out)

    (the top layer has no ``W_top`` term; layers are updated top-down so ``d^{k+1}_t`` is the
    current step's). ``h_{-1} = 0``. ``exp(.)`` is the standard deviation.

    Training minimises the negative ELBO (free energy) per output element::

        mean_{b,t,i} (x_hat - x)^2  +  sum_k w_k mean_{b,t} KL(q(z^k_t) || p(z^k_t)) / (|z^k| D)

    the first term is the trainer's ``regress`` loss, the second :meth:`regularization`; their
    ratio is the paper's ``sum_t ||x_hat_t - x_t||^2 : sum_k w_k sum_t KL_k / |z^k|``
    (``D = output_size``). ``meta_prior_init`` replaces ``w`` at ``t = 0``.

    The input ``x: (B, T)`` int64 (or ``(B,)``) names each row's sequence (its slot of
    ``A``); only ``x[:, 0]`` is read. In training mode ``z`` is sampled (reparametrised); in
    eval mode it is the posterior mean ``tanh(A^mu)``.

    Args:
        output_size: ``D``, width of ``x_hat``.
        num_sequences: number of posterior slots (``A`` is ``(num_sequences, seq_len, 2|z|)``
            per layer).
        seq_len: longest sequence trained.
        d_sizes: deterministic units per layer, bottom first (default ``(40, 20)``).
        z_sizes: latent units per layer (default ``(2, 2)``).
        taus: time constant per layer, each ``>= 1`` (default ``(2, 8)``).
        meta_prior: ``w``, a number or one per layer, ``>= 0`` (default ``0.01``).
        meta_prior_init: ``w`` at ``t = 0`` (default: ``meta_prior``).
        device, dtype: for the parameters.

    Parameters: per layer ``dd[k]`` (``W_dd``, ``b``), ``zd[k]`` (``W_zd``), ``top[k]`` (``W_top``,
    absent for the top layer), ``prior[k]`` (``(2|z^k|, d^k)``, mean rows first), ``a_mu[k]``,
    ``a_log_sigma[k]: (num_sequences, seq_len, |z^k|)`` (zeros: ``q = N(0, I)``); ``out``.
    """

    def __init__(
        self,
        output_size: int,
        num_sequences: int,
        seq_len: int,
        *,
        d_sizes: Sequence[int] = (40, 20),
        z_sizes: Sequence[int] = (2, 2),
        taus: Sequence[float] = (2.0, 8.0),
        meta_prior: float | Sequence[float] = 0.01,
        meta_prior_init: float | Sequence[float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.output_size = check_positive_int("output_size", output_size)
        self.num_sequences = check_positive_int("num_sequences", num_sequences)
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.d_sizes = _check_sizes("d_sizes", d_sizes)
        layers = len(self.d_sizes)
        self.z_sizes = _check_sizes("z_sizes", z_sizes, layers)
        self.taus = _per_layer("taus", taus, layers, minimum=1.0)
        self.meta_prior = _per_layer("meta_prior", meta_prior, layers, minimum=0.0)
        self.meta_prior_init = (
            self.meta_prior
            if meta_prior_init is None
            else _per_layer("meta_prior_init", meta_prior_init, layers, minimum=0.0)
        )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.dd = nn.ModuleList(nn.Linear(d, d, **kw) for d in self.d_sizes)
        self.zd = nn.ModuleList(
            nn.Linear(z, d, bias=False, **kw)
            for z, d in zip(self.z_sizes, self.d_sizes, strict=True)
        )
        self.top = nn.ModuleList(
            nn.Linear(self.d_sizes[k + 1], self.d_sizes[k], bias=False, **kw)
            for k in range(layers - 1)
        )
        self.prior = nn.ModuleList(
            nn.Linear(d, 2 * z, **kw) for z, d in zip(self.z_sizes, self.d_sizes, strict=True)
        )
        self.out = nn.Linear(self.d_sizes[0], self.output_size, **kw)
        shape = (self.num_sequences, self.seq_len)
        self.a_mu = nn.ParameterList(
            nn.Parameter(torch.zeros(*shape, z, **kw)) for z in self.z_sizes
        )
        self.a_log_sigma = nn.ParameterList(
            nn.Parameter(torch.zeros(*shape, z, **kw)) for z in self.z_sizes
        )
        self._kl: Tensor | None = None

    @property
    def num_layers(self) -> int:
        """``L``, the number of MTRNN layers."""
        return len(self.d_sizes)

    def init_state(
        self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PVRNNState:
        """Zero internal states ``h[k]: (batch, d_sizes[k])``."""
        ref = self.out.weight
        return PVRNNState(
            tuple(
                torch.zeros(batch, d, device=device or ref.device, dtype=dtype or ref.dtype)
                for d in self.d_sizes
            )
        )

    def prior_of(self, state: PVRNNState, *, first: bool = False) -> Gaussian:
        """The prior ``p(z_t | d_{t-1})`` from the previous state; ``N(0, I)`` when ``first``
        (``t = 0``). Shapes ``(B, z_sizes[k])`` per layer."""
        mus, lss = [], []
        for k, h in enumerate(state.h):
            if first:
                zero = h.new_zeros(h.shape[0], self.z_sizes[k])
                mus.append(zero)
                lss.append(zero)
                continue
            pre = self.prior[k](torch.tanh(h))
            mu, ls = pre.split(self.z_sizes[k], dim=-1)
            mus.append(torch.tanh(mu))
            lss.append(ls)
        return Gaussian(tuple(mus), tuple(lss))

    def step(self, state: PVRNNState, z: Sequence[Tensor]) -> tuple[Tensor, PVRNNState]:
        """One step given the latents ``z[k]: (B, z_sizes[k])``: ``(x_hat_t (B, D), state)``."""
        if len(z) != self.num_layers:
            raise ValueError(f"z must have one tensor per layer ({self.num_layers}), got {len(z)}")
        new: list[Tensor] = [state.h[0]] * self.num_layers
        above: Tensor | None = None
        for k in reversed(range(self.num_layers)):
            h = state.h[k]
            drive = self.dd[k](torch.tanh(h)) + self.zd[k](z[k])
            if above is not None:
                drive = drive + self.top[k](above)
            rate = 1.0 / self.taus[k]
            new[k] = (1.0 - rate) * h + rate * drive
            above = torch.tanh(new[k])
        assert above is not None
        return torch.tanh(self.out(above)), PVRNNState(tuple(new))

    def rollout(
        self,
        state: PVRNNState,
        steps: int,
        *,
        t0: int = 0,
        posterior: Gaussian | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Run ``steps`` steps from ``state`` (``t0``: the index of the first step; the prior
        is ``N(0, I)`` at ``t = 0``).

        With ``posterior`` (``mu[k], log_sigma[k]: (B, steps, z_sizes[k])``, ``mu`` already
        squashed) the latents come from it and the KL to the prior is returned; without, from
        the prior. ``sample``: draw ``z = mu + sigma * eps`` (reparametrised) instead of the
        mean.
        """
        outs, kls = [], []
        for i in range(steps):
            p = self.prior_of(state, first=t0 + i == 0)
            zs: list[Tensor] = []
            kl_t: list[Tensor] = []
            for k in range(self.num_layers):
                if posterior is not None:
                    mu, ls = posterior.mu[k][:, i], posterior.log_sigma[k][:, i]
                    kl_t.append(_gaussian_kl(mu, ls, p.mu[k], p.log_sigma[k]))
                else:
                    mu, ls = p.mu[k], p.log_sigma[k]
                if sample:
                    eps = torch.randn(mu.shape, generator=generator, device=mu.device)
                    zs.append(mu + torch.exp(ls) * eps.to(mu.dtype))
                else:
                    zs.append(mu)
            y, state = self.step(state, zs)
            outs.append(y)
            if kl_t:
                kls.append(torch.stack(kl_t, -1))
        ref = self.out.weight
        b = state.h[0].shape[0]
        outputs = torch.stack(outs, 1) if outs else ref.new_zeros(b, 0, self.output_size)
        kl = (
            torch.stack(kls, 1)
            if kls
            else ref.new_zeros(b, steps, self.num_layers).to(state.h[0].dtype)
        )
        return Rollout(outputs, kl, state)

    def posterior_of(self, ids: Tensor, steps: int) -> Gaussian:
        """The training posterior of sequences ``ids: (B,)`` over the first ``steps`` steps:
        ``mu[k] = tanh(A^mu)``, ``log_sigma[k] = A^sigma``, each ``(B, steps, z_sizes[k])``."""
        return Gaussian(
            tuple(torch.tanh(a[ids, :steps]) for a in self.a_mu),
            tuple(a[ids, :steps] for a in self.a_log_sigma),
        )

    def forward(self, x: Tensor, backend: str = "auto") -> Tensor:
        """Reconstruct the sequences named by ``x: (B, T)`` (or ``(B,)``, then ``T =
        seq_len``) int64 under their posterior: ``(B, T, output_size)``.

        Stores the KL per step and layer for :meth:`regularization`. ``backend`` is accepted
        for the trainer and ignored: the step loop is the only implementation.
        """
        if x.dtype not in (torch.int64, torch.int32) or x.dim() not in (1, 2):
            raise ValueError(
                f"x must be (B,) or (B, T) int sequence ids, got {x.dtype} {tuple(x.shape)}"
            )
        steps = self.seq_len if x.dim() == 1 else int(x.shape[1])
        if steps > self.seq_len:
            raise ValueError(f"x has {steps} steps but seq_len is {self.seq_len}")
        ids = x if x.dim() == 1 else x[:, 0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_sequences):
            raise ValueError(f"sequence ids must lie in [0, {self.num_sequences})")
        ids = ids.long()
        post = self.posterior_of(ids, steps)
        r = self.rollout(
            self.init_state(int(ids.shape[0])), steps, posterior=post, sample=self.training
        )
        self._kl = r.kl
        return r.outputs

    def weighted_kl(self, kl: Tensor, *, meta_prior: Sequence[float] | None = None) -> Tensor:
        """``sum_k w_k KL_k / (|z^k| D)`` averaged over batch and steps, from ``kl (B, T, L)``
        (``meta_prior_init`` weights ``t = 0`` when ``meta_prior`` is not given)."""
        w = torch.tensor(meta_prior or self.meta_prior, dtype=kl.dtype, device=kl.device)
        w_t = w.expand(kl.shape[1], -1).clone()
        if meta_prior is None and kl.shape[1] > 0:
            w_t[0] = torch.tensor(self.meta_prior_init, dtype=kl.dtype, device=kl.device)
        size = torch.tensor(self.z_sizes, dtype=kl.dtype, device=kl.device) * self.output_size
        return (kl * w_t / size).sum(-1).mean()

    def regularization(self, progress: float) -> Tensor:
        """The meta-prior-weighted KL term of the last :meth:`forward` (see the class
        docstring); ``0`` before any forward. ``progress`` is not used: ``w`` is constant."""
        if self._kl is None:
            return self.out.weight.new_zeros(())
        return self.weighted_kl(self._kl)

    @torch.no_grad()
    def generate(
        self,
        batch: int,
        steps: int,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Free generation from the prior, from ``t = 0``: ``(batch, steps, output_size)``."""
        check_positive_int("batch", batch)
        check_positive_int("steps", steps)
        return self.rollout(
            self.init_state(batch), steps, sample=sample, generator=generator
        ).outputs

    def initial_adaptive(self) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """The per-unit median of the trained ``A^mu`` and ``A^sigma`` over sequences and
        steps (``(z_sizes[k],)`` each): where error regression starts new latents."""
        return (
            tuple(a.detach().flatten(0, 1).median(0).values for a in self.a_mu),
            tuple(a.detach().flatten(0, 1).median(0).values for a in self.a_log_sigma),
        )

    def error_regression(
        self,
        observed: Tensor,
        *,
        window: int = 10,
        iterations: int = 50,
        lr: float = 0.09,
        horizon: int = 0,
        shift: int = 1,
        meta_prior: float | Sequence[float] | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> ErrorRegression:
        """Infer posterior latents for new data with the weights frozen, then predict ahead.

        A window of the last ``window`` observed steps slides over ``observed: (B, T_obs, D)``
        by ``shift`` steps at a time. For each position, fresh adaptive vectors ``A`` for the
        new steps start at :meth:`initial_adaptive`; ``iterations`` Adam steps (``lr``) on the
        window's free energy ``sum_t ||x_hat_t - x_t||^2 + sum_k w_k sum_t KL_k / |z^k|``
        adjust every ``A`` in the window (and only those: the state entering the window is
        fixed by the earlier steps' latents). Then the prior is rolled ``horizon`` steps past
        ``T_obs`` (its mean, or samples when ``sample``). ``meta_prior`` defaults to the
        training ``w``; it weighs every step of the window, ``t = 0`` included
        (``meta_prior_init`` is a training weight only). ``sample`` also draws the posterior
        latents during the fit.
        """
        if observed.dim() != 3 or observed.shape[-1] != self.output_size:
            raise ValueError(
                f"observed must be (B, T, {self.output_size}), got {tuple(observed.shape)}"
            )
        check_positive_int("window", window)
        check_positive_int("iterations", iterations)
        check_positive_int("shift", shift)
        check_finite("lr", lr, positive=True)
        if isinstance(horizon, bool) or horizon < 0:
            raise ValueError(f"horizon must be an int >= 0, got {horizon!r}")
        w = (
            self.meta_prior
            if meta_prior is None
            else _per_layer("meta_prior", meta_prior, self.num_layers, minimum=0.0)
        )
        b, t_obs = int(observed.shape[0]), int(observed.shape[1])
        if t_obs == 0:
            raise ValueError("observed must have at least one step")
        observed = observed.to(self.out.weight.dtype)
        mu0, ls0 = self.initial_adaptive()
        a_mu = [m.expand(b, t_obs, -1).clone() for m in mu0]
        a_ls = [s.expand(b, t_obs, -1).clone() for s in ls0]
        frozen = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        ends = list(range(min(shift, t_obs), t_obs + 1, shift))
        if ends[-1] != t_obs:
            ends.append(t_obs)
        state, start_done = self.init_state(b), 0  # state entering step start_done
        losses = []
        try:
            for end in ends:
                start = max(0, end - window)
                if start > start_done:  # advance the fixed state past steps leaving the window
                    post = Gaussian(
                        tuple(torch.tanh(a[:, start_done:start]) for a in a_mu),
                        tuple(a[:, start_done:start] for a in a_ls),
                    )
                    with torch.no_grad():
                        state = self.rollout(
                            state, start - start_done, t0=start_done, posterior=post
                        ).state
                    start_done = start
                leaves = [a[:, start:end].clone().requires_grad_(True) for a in a_mu + a_ls]
                opt = torch.optim.Adam(leaves, lr=lr)
                target = observed[:, start:end]
                for _ in range(iterations):
                    opt.zero_grad()
                    loss = self._window_energy(state, leaves, start, target, w, sample, generator)
                    torch.autograd.backward(loss.sum())
                    opt.step()
                with torch.no_grad():
                    final = self._window_energy(state, leaves, start, target, w, False, None)
                losses.append(final.mean())
                for k, leaf in enumerate(leaves):
                    dest = a_mu[k] if k < self.num_layers else a_ls[k - self.num_layers]
                    dest[:, start:end] = leaf.detach()
        finally:
            for p, flag in zip(self.parameters(), frozen, strict=True):
                p.requires_grad_(flag)
        with torch.no_grad():
            post = Gaussian(tuple(torch.tanh(a) for a in a_mu), tuple(a_ls))
            r = self.rollout(self.init_state(b), t_obs, posterior=post)
            pred = self.rollout(r.state, horizon, t0=t_obs, sample=sample, generator=generator)
        return ErrorRegression(r.outputs, pred.outputs, torch.stack(losses))

    def _window_energy(
        self,
        state: PVRNNState,
        leaves: list[Tensor],
        start: int,
        target: Tensor,
        w: Sequence[float],
        sample: bool,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Free energy of one error-regression window per batch row: ``(B,)``."""
        n = self.num_layers
        post = Gaussian(tuple(torch.tanh(a) for a in leaves[:n]), tuple(leaves[n:]))
        r = self.rollout(
            state,
            int(target.shape[1]),
            t0=start,
            posterior=post,
            sample=sample,
            generator=generator,
        )
        rec = (r.outputs - target).square().sum((1, 2))
        wz = torch.tensor(w, dtype=r.kl.dtype, device=r.kl.device)
        wz = wz / torch.tensor(self.z_sizes, dtype=r.kl.dtype, device=r.kl.device)
        return rec + (r.kl * wz).sum((1, 2))


def pvrnn(
    output_size: int,
    vocab_size: int,
    seq_len: int,
    **config: object,
) -> PVRNN:
    """Registered builder ``"pvrnn"``: a :class:`PVRNN` whose ``num_sequences`` is the task's
    ``vocab_size`` (the number of sequence slots its inputs name); ``config`` goes to
    :class:`PVRNN` (``d_sizes``, ``z_sizes``, ``taus``, ``meta_prior``, ...)."""
    return PVRNN(output_size, vocab_size, seq_len, **config)  # type: ignore[arg-type]


__all__ = ["PVRNN", "ErrorRegression", "Gaussian", "PVRNNState", "Rollout", "pvrnn"]
