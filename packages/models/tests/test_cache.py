"""The state cache for generation (issue 15, item 7): ``init_cache``/``prefill``/``step`` on an
LSTM stack, a Mamba LM and a Jamba-style hybrid decode token by token exactly as the full forward
on the prompt and the generated tokens, one step per layer; a cache of another batch size or
of a model with other shapes is refused with :class:`CacheMismatchError`."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from rnnkit.models import create_model
from rnnkit.models.cache import CachedModel, CacheMismatchError, KVCache, ModelCache
from rnnkit.models.hybrid import CausalSelfAttention

VOCAB = 11

#: the models, tiny: an LSTM stack, Mamba blocks, Mamba + attention + MoE, attention only
MODELS: dict[str, dict[str, Any]] = {
    "char_lm": {"cell": "lstm", "hidden_size": 8, "num_layers": 2},
    "mamba_lm": {"hidden_size": 8, "num_layers": 2, "d_state": 4},
    "mamba2_lm": {"hidden_size": 8, "num_layers": 2, "d_state": 4, "headdim": 4},
    "jamba": {"hidden_size": 8, "heads": 2, "kv_heads": 1, "d_state": 4},
    "transformer_lm": {"hidden_size": 8, "num_layers": 2, "heads": 2, "max_len": 32},
}


def _model(name: str, **over: Any) -> nn.Module:
    torch.manual_seed(0)
    cfg = {**MODELS[name], **over}
    return create_model(name, vocab_size=VOCAB, **cfg).double().eval()


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_greedy_decoding_equals_the_full_forward(name: str) -> None:
    model = _model(name)
    assert isinstance(model, CachedModel)
    prompt = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    out, cache = model.prefill(prompt)
    torch.testing.assert_close(out, model(prompt), rtol=0, atol=0)
    assert cache.batch == 2 and cache.length == 5
    seq, logits = prompt, out[:, -1]
    for _ in range(6):
        token = logits.argmax(-1)
        seq = torch.cat([seq, token[:, None]], 1)
        logits, cache = model.step(token, cache)
        # float64: one step after the cache equals the forward over the whole sequence
        torch.testing.assert_close(logits, model(seq)[:, -1], rtol=1e-12, atol=1e-12)
    assert cache.length == seq.shape[1] == 11


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_prefill_continues_from_a_cache_and_steps_from_the_start(name: str) -> None:
    model = _model(name)
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    _, cache = model.prefill(ids[:, :4])
    rest, cache = model.prefill(ids[:, 4:], cache)  # several positions after a cache
    torch.testing.assert_close(rest, full[:, 4:], rtol=1e-12, atol=1e-12)
    assert cache.length == 10
    cache = model.init_cache(3)
    for t in range(3):
        logits, cache = model.step(ids[:, t], cache)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_one_step_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("jamba")
    _, cache = model.prefill(torch.tensor([[1, 2, 3]]))
    calls: list[str] = []
    for i, block in enumerate(model.blocks):  # type: ignore[union-attr]
        mixer: Any = block.mixer
        if isinstance(mixer, CausalSelfAttention):
            forward = mixer.forward

            def counted(x: torch.Tensor, cache: Any, f: Any = forward, i: int = i) -> Any:
                assert x.shape[1] == 1  # one new position, not the prefix again
                calls.append(f"attention {i}")
                return f(x, cache)

            monkeypatch.setattr(mixer, "forward", counted)
        else:
            step = mixer.step

            def counted_step(x: torch.Tensor, s: Any, f: Any = step, i: int = i) -> Any:
                calls.append(f"cell {i}")
                return f(x, s)

            monkeypatch.setattr(mixer, "step", counted_step)
    _, cache = model.step(torch.tensor([4]), cache)
    assert calls == ["cell 0", "cell 1", "attention 2", "cell 3"]
    kv = cache.states[2]
    assert isinstance(kv, KVCache) and kv.keys.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_a_cache_of_another_batch_is_refused(name: str) -> None:
    model = _model(name)
    _, cache = model.prefill(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(CacheMismatchError, match="2 sequences, the input has 3"):
        model.step(torch.zeros(3, dtype=torch.long), cache)
    with pytest.raises(CacheMismatchError, match="2 sequences, the input has 1"):
        model.prefill(torch.zeros(1, 4, dtype=torch.long), cache)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_a_cache_after_a_shape_change_is_refused(name: str) -> None:
    _, cache = _model(name).prefill(torch.zeros(2, 3, dtype=torch.long))
    wider = _model(name, hidden_size=12, **({"heads": 3} if name == "jamba" else {}))
    with pytest.raises(CacheMismatchError, match="other shapes"):
        wider.step(torch.zeros(2, dtype=torch.long), cache)
    deeper = _model(name, num_layers=3) if name != "jamba" else _model(name, num_layers=5)
    with pytest.raises(CacheMismatchError, match=r"another model|other shapes"):
        deeper.step(torch.zeros(2, dtype=torch.long), cache)
    # the same model in another dtype: its float64 state no longer fits
    with pytest.raises(CacheMismatchError, match=r"dtype|float"):
        _model(name).float().step(torch.zeros(2, dtype=torch.long), cache)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_inputs_of_the_wrong_rank_are_refused(name: str) -> None:
    model = _model(name)
    _, cache = model.prefill(torch.zeros(2, 3, dtype=torch.long))
    # a whole sequence given to step, a single position given to prefill
    with pytest.raises(ValueError, match=r"step reads one position .* \(B,\); got .* \(2, 4\)"):
        model.step(torch.zeros(2, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"prefill reads a sequence .* \(B, T\); got .* \(2,\)"):
        model.prefill(torch.zeros(2, dtype=torch.long), cache)


@torch.no_grad()
def test_feature_inputs_of_the_wrong_rank_are_refused() -> None:
    model = create_model("sequence_tagger", input_size=3, output_size=2, hidden_size=5)
    with pytest.raises(ValueError, match=r"step reads one position of features, shape \(B, F\)"):
        model.step(torch.zeros(2, 4, 3))  # type: ignore[operator]
    with pytest.raises(
        ValueError, match=r"prefill reads a sequence of features, shape \(B, T, F\)"
    ):
        model.prefill(torch.zeros(2, 3))  # type: ignore[operator]


@torch.no_grad()
def test_a_damaged_kv_cache_is_refused() -> None:
    model = _model("jamba")
    _, cache = model.prefill(torch.zeros(1, 3, dtype=torch.long))
    states = list(cache.states)
    kv = states[2]
    states[2] = KVCache(kv.keys[:, :, :2], kv.values[:, :, :2])  # two positions for three
    with pytest.raises(CacheMismatchError, match=r"layer 2 \(attention\).*\(1, 1, 3, 4\)"):
        model.step(torch.zeros(1, dtype=torch.long), ModelCache(tuple(states), 1, 3))
    with pytest.raises(TypeError, match="ModelCache"):
        model.step(torch.zeros(1, dtype=torch.long), cache.states)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "cfg"),
    [
        ("sequence_classifier", {"input_size": 2, "output_size": 3, "hidden_size": 4}),
        ("mamba_classifier", {"input_size": 2, "output_size": 3, "hidden_size": 4}),
        ("jamba_classifier", {"input_size": 2, "output_size": 3, "hidden_size": 4, "heads": 2}),
    ],
)
def test_classifiers_have_no_cache(name: str, cfg: dict[str, Any]) -> None:
    model = create_model(name, **cfg)
    with pytest.raises(ValueError, match="pools over the sequence"):
        model.init_cache(1)  # type: ignore[operator]
    with pytest.raises(ValueError, match="pools over the sequence"):
        model.prefill(torch.zeros(1, 3, 2))  # type: ignore[operator]


def test_a_bidirectional_stack_has_no_cache() -> None:
    model = create_model("sequence_tagger", input_size=2, output_size=3, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.init_cache(1)  # type: ignore[operator]


@torch.no_grad()
def test_features_step_like_ids() -> None:
    # float inputs (a tagger over features) through the same cache
    torch.manual_seed(0)
    model = create_model("sequence_tagger", input_size=3, output_size=2, hidden_size=5).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    full = model(x)
    cache = None
    for t in range(4):
        out, cache = model.step(x[:, t], cache)  # type: ignore[operator]
        torch.testing.assert_close(out, full[:, t], rtol=1e-12, atol=1e-12)


def _first_kv(cache: ModelCache) -> KVCache:
    return next(s for s in cache.states if isinstance(s, KVCache))


@pytest.mark.parametrize(
    ("name", "new", "capacity"), [("transformer_lm", 60, 96), ("jamba", 12, 24)]
)
@torch.no_grad()
def test_the_kv_cache_is_written_in_place_and_doubles(name: str, new: int, capacity: int) -> None:
    # `new` decoded tokens after a prompt of 3: the attention caches are reallocated when full
    # (doubling: 3 -> 6 -> 12 -> ... -> capacity), not copied at every token, and stay exact
    # (jamba's Mamba steps are slow on the CPU: fewer tokens; the attention layer is the same)
    model = _model(name, **({"max_len": 128} if name == "transformer_lm" else {}))
    total = 3 + new
    ids = torch.randint(0, VOCAB, (2, total), generator=torch.Generator().manual_seed(2))
    _, cache = model.prefill(ids[:, :3])
    caches, logits = [cache], []
    for t in range(3, total):
        out, cache = model.step(ids[:, t], cache)
        caches.append(cache)  # every cache kept alive: a storage is never freed and reused
        logits.append(out)
    storages = [_first_kv(c).keys.untyped_storage().data_ptr() for c in caches[1:]]
    reallocations = sum(a != b for a, b in itertools.pairwise(storages))
    assert 1 + reallocations == len(set(storages)) <= 1 + math.ceil(math.log2(total / 3))
    buffer = _first_kv(cache).buffer
    assert buffer is not None and buffer.filled == total and buffer.capacity == capacity
    torch.testing.assert_close(torch.stack(logits, 1), model(ids)[:, 3:], rtol=1e-12, atol=1e-12)
    # an earlier cache still views its own positions, unchanged by the later writes
    early, last = _first_kv(caches[10]), _first_kv(cache)
    assert early.keys.shape[2] == 13
    assert torch.equal(early.keys, last.keys[:, :, :13])
    assert torch.equal(early.values, last.values[:, :, :13])


@pytest.mark.parametrize("name", ["jamba", "transformer_lm"])
@torch.no_grad()
def test_a_cache_stepped_twice_branches(name: str) -> None:
    # both branches continue the same cache; the second must not overwrite the first's token
    model = _model(name)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    _, start = model.prefill(prompt)
    _, cache = model.step(torch.tensor([2]), start)  # makes room: the next write is in place
    _, a = model.step(torch.tensor([6]), cache)
    _, b = model.step(torch.tensor([7]), cache)
    out_a, _ = model.step(torch.tensor([8]), a)
    out_b, _ = model.step(torch.tensor([9]), b)
    full_a = model(torch.tensor([[3, 1, 4, 1, 5, 2, 6, 8]]))[:, -1]
    full_b = model(torch.tensor([[3, 1, 4, 1, 5, 2, 7, 9]]))[:, -1]
    torch.testing.assert_close(out_a, full_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_b, full_b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["jamba", "transformer_lm"])
def test_decoding_under_autograd_has_the_gradients_of_the_full_forward(name: str) -> None:
    # with gradients, the cache concatenates (a write in place would break earlier steps'
    # backward): the gradient of the decoded logits is the full forward's
    model = _model(name)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2]])
    out, cache = model.prefill(ids[:, :4])
    steps = [out[:, -1]]
    for t in range(4, 7):
        logits, cache = model.step(ids[:, t], cache)
        steps.append(logits)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(torch.stack(steps).square().sum(), params, allow_unused=True)
    want = torch.autograd.grad(model(ids)[:, 3:].square().sum(), params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert g is not None
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# --- generate(prompt, max_new, temperature, top_k) (issue 15, item 7) -------------------------


# generate is one mixin (Generates) over prefill/step, whose equality with the full forward
# is tested for every model above: a stack, a block network and a hybrid with attention here
@pytest.mark.parametrize("name", ["char_lm", "mamba_lm", "jamba"])
def test_greedy_generation_is_the_argmax_of_the_full_forward(name: str) -> None:
    model = _model(name)
    prompt = torch.tensor([[3, 1, 4], [2, 7, 1]])
    seq = model.generate(prompt, 4, temperature=0.0)
    assert seq.shape == (2, 7) and seq.dtype == prompt.dtype
    assert torch.equal(seq[:, :3], prompt)
    with torch.no_grad():
        logits = model(seq)
    # every new token is the likeliest one after the tokens before it
    assert torch.equal(seq[:, 3:], logits[:, 2:-1].argmax(-1))


@pytest.mark.parametrize("name", ["mamba_lm"])
def test_top_k_samples_only_among_the_k_likeliest(name: str) -> None:
    model = _model(name)
    prompt = torch.tensor([[5, 2], [0, 9], [4, 4]])
    seq = model.generate(prompt, 8, temperature=1.0, top_k=2)
    with torch.no_grad():
        logits = model(seq)[:, 1:-1]  # the logits each new token was drawn from
    rank = (logits > logits.gather(-1, seq[:, 2:, None])).sum(-1)  # tokens likelier than it
    assert int(rank.max()) <= 1, rank
    # top_k=1 is greedy at any temperature; a generator seed repeats the draws
    torch.testing.assert_close(
        model.generate(prompt, 3, temperature=2.0, top_k=1), model.generate(prompt, 3, 0.0)
    )
    draws = [model.generate(prompt, 4, generator=torch.Generator().manual_seed(3)) for _ in "ab"]
    assert torch.equal(draws[0], draws[1])


def test_top_k_keeps_the_k_likeliest_tokens() -> None:
    from rnnkit.models.cache import next_token_probs

    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 4.0, 0.0]])
    probs = next_token_probs(logits, 1.0, top_k=2)
    assert torch.equal(
        probs > 0, torch.tensor([[False, True, False, True], [True, False, True, False]])
    )
    torch.testing.assert_close(probs[0, [1, 3]], torch.softmax(torch.tensor([3.0, 2.0]), 0))
    torch.testing.assert_close(
        next_token_probs(logits, 0.5, top_k=9), torch.softmax(logits / 0.5, -1)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"prompt": torch.tensor([1, 2]), "max_new": 3},
            r"prompt must be token ids of shape \(B, T\)",
        ),
        ({"prompt": torch.zeros(1, 0, dtype=torch.long), "max_new": 3}, "T >= 1"),
        ({"max_new": -1}, "max_new must be an int >= 0"),
        ({"max_new": 2, "top_k": 0}, "top_k must be a positive int"),
        ({"max_new": 2, "temperature": -1.0}, "temperature must be >= 0"),
    ],
)
def test_bad_generation_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    model = _model("mamba_lm")
    kwargs.setdefault("prompt", torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)


def test_a_classifier_does_not_generate() -> None:
    model = create_model("sequence_classifier", input_size=0, vocab_size=VOCAB, output_size=3)
    with pytest.raises(ValueError, match="pools over the sequence"):
        model.generate(torch.tensor([[1, 2]]), 2)  # type: ignore[operator]
