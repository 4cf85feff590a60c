"""RecurrentGPT (issue 18, item 10): retrieval by character n-gram TF-IDF cosine finds the
right memory on constructed memories; the loop feeds its own memories back (each prompt holds
the previous step's short-term memory, plan and retrieved paragraphs); a reply with sections
is parsed, one without is all paragraph; the loop runs end to end around a char-LM run trained
here, from Python and as ``rnnkit recurrentgpt``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import TrainConfig, Trainer, load_run
from rnnkit.tasks.recurrentgpt import (
    RecurrentGPT,
    TfidfIndex,
    char_lm_generator,
    char_ngrams,
    parse_reply,
)

MEMORIES = [
    "The dragon slept on a hoard of gold beneath the mountain.",
    "Maria sailed her boat across the stormy harbour at dawn.",
    "In the kitchen the baker kneaded bread and lit the oven.",
    "The astronomer pointed her telescope at the rings of Saturn.",
]


def test_char_ngrams() -> None:
    grams = char_ngrams("Ab  ab", 3)
    assert grams == {" ab": 2, "ab ": 2, "b a": 1}
    with pytest.raises(ValueError, match="n must be"):
        char_ngrams("x", 0)


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("a sleeping dragon and its gold", 0),
        ("sailing a boat through the storm", 1),
        ("bread from the baker's oven", 2),
        ("telescopes and planets like Saturn", 3),
    ],
)
def test_retrieval_finds_the_memory_on_the_same_subject(query: str, want: int) -> None:
    index = TfidfIndex()
    for m in MEMORIES:
        index.add(m)
    hits = index.search(query, 2)
    assert hits[0][0] == want
    assert hits[0][1] > hits[1][1] > -1e-12
    scores = index.scores(query)
    assert max(range(len(scores)), key=scores.__getitem__) == want


def test_retrieval_edge_cases() -> None:
    index = TfidfIndex()
    assert index.search("anything", 3) == []
    index.add("alpha beta")
    assert index.search("alpha beta", 1)[0][1] == pytest.approx(1.0)
    assert index.scores("zzzz") == [0.0]  # no shared n-gram
    index.add("gamma delta")
    assert len(index.search("alpha", 5)) == 2
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", -1)


def test_idf_weighs_down_what_every_memory_shares() -> None:
    # every memory holds "the story"; only one holds "lantern": the shared phrase must not win
    index = TfidfIndex()
    for text in ["the story of the lantern", "the story of the river", "the story of the hill"]:
        index.add(text)
    assert index.search("lantern", 1)[0][0] == 0


def test_parse_reply_sections_and_fallback() -> None:
    reply = "Paragraph: Tom ran home.\nMemory: Tom is home.\nPlan: Tom sleeps."
    assert parse_reply(reply, "old") == ("Tom ran home.", "Tom is home.", "Tom sleeps.")
    # no headings: all paragraph; memory = old + paragraph (bounded), plan = its last sentence
    para, memory, plan = parse_reply("He went out. It rained", "x" * 50, short_chars=30)
    assert para == "He went out. It rained"
    assert memory == ("x" * 50 + " He went out. It rained")[-30:] and len(memory) == 30
    assert plan == "It rained"


def test_the_loop_feeds_its_memory_back() -> None:
    # a real generator callable (no part of the loop replaced): it answers in sections, writing
    # about whichever memory word it read in the prompt's plan
    prompts: list[str] = []

    def writer(prompt: str) -> str:
        prompts.append(prompt)
        n = len(prompts)
        plan = prompt.split("Plan: ", 1)[1].split("\n", 1)[0]
        return f"Paragraph: chapter {n} follows '{plan}'.\nMemory: m{n}\nPlan: topic {n}"

    loop = RecurrentGPT(writer, k=1, short_chars=100)
    records = loop.run("Once upon a time.", 3, plan="start")
    assert [r.paragraph for r in records] == [
        "chapter 1 follows 'start'.",
        "chapter 2 follows 'topic 1'.",
        "chapter 3 follows 'topic 2'.",
    ]
    # step 2's prompt holds step 1's short-term memory and plan
    assert "Story so far: m1" in prompts[1] and "Plan: topic 1" in prompts[1]
    # the long-term memory holds the opening and every paragraph; step 3 retrieves the
    # paragraph most like its query ("topic 2 m2"): step 2's
    assert records[2].retrieved == (2,)
    assert "- chapter 2 follows 'topic 1'." in prompts[2]


def test_a_generator_that_returns_no_text_is_refused() -> None:
    loop = RecurrentGPT(lambda p: 3)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="must return a str"):
        loop.run("Once.", 1)
    with pytest.raises(ValueError, match="opening"):
        RecurrentGPT(str.upper).run("  ", 1)


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "charlm"
    config = TrainConfig(
        task="charlm",
        model="char_lm",
        model_config={"cell": "gru", "hidden_size": 16},
        steps=4,
        batch_size=8,
        eval_every=4,
        device="cpu",
        out=str(out),
        verbose=False,
        plot=False,
        backend="reference",
    )
    Trainer(config).run()
    return out


def test_runs_end_to_end_with_a_trained_char_lm(charlm_run: Path) -> None:
    run = load_run(charlm_run)
    vocab = set(run.info["vocab"])
    loop = RecurrentGPT(char_lm_generator(run, length=40, context=120), k=2, short_chars=80)
    records = loop.run("The king ", 3)
    assert len(records) == 3
    for i, rec in enumerate(records):
        assert len(rec.paragraph) > 0 and set(rec.paragraph) <= vocab | {" "}
        assert len(rec.short_term) <= 80
        if i:  # the memory fed back: the previous paragraph's end is in this prompt
            assert records[i - 1].short_term.strip()[-20:] in rec.prompt
            assert len(rec.retrieved) == 2
    assert len({r.paragraph for r in records}) == 3  # each call samples with its own seed


def test_the_command(charlm_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    args = ["recurrentgpt", "--run", str(charlm_run), "--steps", "2", "--length", "30"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["steps"]) == 2 and out["opening"] == "The king "
    assert all(len(s["paragraph"]) > 0 for s in out["steps"])
    assert main(args) == 0
    assert "--- step 2" in capsys.readouterr().out
    assert main([*args[:3], "--steps", "-1"]) == 2
    assert "--steps must be a positive integer, got -1" in capsys.readouterr().err


BAD_OPTIONS = [
    ("--steps", "0", "a positive integer"),
    ("--length", "0", "a positive integer"),
    ("--context", "-1", "a positive integer"),
    ("--short-chars", "0", "a positive integer"),
    ("--k", "-1", "an integer >= 0"),
    ("--temperature", "nan", ">= 0"),
    ("--opening", "  ", "some text (the story starts from it)"),
]


@pytest.mark.parametrize(("flag", "value", "need"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_the_command_refuses_bad_options_by_name_before_reading_the_run(
    flag: str, value: str, need: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming the option, checked before the run is read (there is none here):
    ``--steps 0`` printed nothing, and ``--k`` and ``--short-chars`` were refused by the
    loop's keyword names after the run was loaded."""
    capsys.readouterr()
    assert main(["recurrentgpt", "--run", str(tmp_path / "none"), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"rnnkit recurrentgpt: error: {flag} must be {need}, got " in err, err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--k", "0"), ("--temperature", "0"), ("--steps", "1"), ("--short-chars", "1")],
)
def test_the_least_values_pass_the_option_checks(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The least value of each range is accepted: the command goes on to read the run (there
    is none here, which is the error)."""
    capsys.readouterr()
    assert main(["recurrentgpt", "--run", str(tmp_path / "none"), flag, value]) == 2
    err = capsys.readouterr().err
    assert "must be" not in err and str(tmp_path / "none") in err, err


def test_the_command_names_itself_for_a_run_that_is_not_a_char_lm(
    charlm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A classifier's run (here the char-LM's config relabelled) is refused in one line that
    says what ``rnnkit recurrentgpt`` needs, not what ``rnnkit generate`` would say."""
    config = json.loads((charlm_run / "config.json").read_text())
    config.update(task="digits_rows", kind="classify")
    (tmp_path / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["recurrentgpt", "--run", str(tmp_path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "rnnkit recurrentgpt needs a character-LM run" in err and "'digits_rows'" in err
    assert "rnnkit generate" not in err
