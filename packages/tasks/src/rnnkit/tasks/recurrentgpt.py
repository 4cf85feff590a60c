"""RecurrentGPT: a recurrence whose state is text, around any text generator.

After Zhou et al. 2023 ("RecurrentGPT: Interactive Generation of (Arbitrarily) Long Text"): a
generator that reads a bounded prompt writes long text one paragraph per step, the way an LSTM
carries a cell state, by keeping three pieces of text between steps:

- the **short-term memory** ``s_t``: a bounded summary of the recent text;
- the **long-term memory** ``M_t``: every paragraph written so far, read by retrieval: the
  ``k`` past paragraphs most similar to the current plan and short-term memory
  (:class:`TfidfIndex`, a character n-gram TF-IDF cosine);
- the **plan** ``p_t``: what the next paragraph should do.

One step::

    retrieved = top_k(M_{t-1}, query = p_{t-1} + s_{t-1})
    prompt    = render(s_{t-1}, retrieved, p_{t-1})
    reply     = generator(prompt)
    x_t, s_t, p_t = parse(reply, s_{t-1})      # the paragraph and the two updated memories
    M_t       = M_{t-1} + [x_t]

The generator is any callable ``(prompt: str) -> str``. A capable instruction-following
generator (a chat model) can write the three sections itself: a reply with ``Paragraph:``,
``Memory:`` and ``Plan:`` headings is parsed into them. A reply without them (a small
character-level LM continues the prompt's text) is all paragraph, and the memories are updated
by rule: ``s_t`` is the last ``short_chars`` characters of ``s_{t-1}`` followed by ``x_t``, and
``p_t`` the last sentence of ``x_t`` (what the text was doing when it stopped).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rnnkit.tasks.reuse import LoadedRun

#: A text generator: a prompt in, the text it writes out.
Generator = Callable[[str], str]

__all__ = [
    "RECURRENTGPT_HELP",
    "Generator",
    "RecurrentGPT",
    "RecurrentState",
    "StepRecord",
    "TfidfIndex",
    "char_lm_generator",
    "char_ngrams",
    "configure_recurrentgpt",
    "parse_reply",
    "render_prompt",
    "run_recurrentgpt",
]


def char_ngrams(text: str, n: int = 3) -> Counter[str]:
    """The counts of ``text``'s character ``n``-grams, lower-cased, whitespace runs as one
    space, padded with a space at each end (so that a word's first and last letters count)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    norm = " " + re.sub(r"\s+", " ", text.lower()).strip() + " "
    return Counter(norm[i : i + n] for i in range(max(len(norm) - n + 1, 0)))


class TfidfIndex:
    """Retrieval by the cosine of character n-gram TF-IDF vectors.

    A document's vector has, for each n-gram ``g`` it holds, ``tf(g) * idf(g)`` with ``tf`` the
    count of ``g`` in the document and ``idf(g) = log((1 + N) / (1 + df(g))) + 1`` over the
    ``N`` indexed documents (``df``: how many hold ``g``), so that n-grams common to every
    paragraph ("the", " a ") weigh less than the ones that tell paragraphs apart. A query is
    weighed with the same ``idf``; n-grams no document holds do not count.
    """

    def __init__(self, n: int = 3) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.documents: list[str] = []
        self._counts: list[Counter[str]] = []
        self._df: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.documents)

    def add(self, document: str) -> int:
        """Index ``document``; returns its index."""
        grams = char_ngrams(document, self.n)
        self.documents.append(document)
        self._counts.append(grams)
        self._df.update(grams.keys())
        return len(self.documents) - 1

    def _idf(self, gram: str) -> float:
        return math.log((1 + len(self.documents)) / (1 + self._df[gram])) + 1.0

    def _vector(self, grams: Counter[str]) -> dict[str, float]:
        return {g: c * self._idf(g) for g, c in grams.items() if self._df[g] > 0}

    def scores(self, query: str) -> list[float]:
        """The cosine similarity of ``query`` to every document, in index order (0 where
        either shares no n-gram)."""
        q = self._vector(char_ngrams(query, self.n))
        q_norm = math.sqrt(sum(v * v for v in q.values()))
        out = []
        for grams in self._counts:
            d = self._vector(grams)
            d_norm = math.sqrt(sum(v * v for v in d.values()))
            dot = sum(v * d.get(g, 0.0) for g, v in q.items())
            out.append(dot / (q_norm * d_norm) if q_norm > 0 and d_norm > 0 else 0.0)
        return out

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` documents most similar to ``query``: ``(index, cosine)``, best first (ties:
        the more recent first); fewer when fewer are indexed."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ranked = sorted(enumerate(self.scores(query)), key=lambda p: (-p[1], -p[0]))
        return ranked[:k]


@dataclass
class RecurrentState:
    """The text state between steps: ``short_term``, ``plan`` and the long-term memory
    (``long_term``: every paragraph written, indexed for retrieval)."""

    short_term: str
    plan: str
    long_term: TfidfIndex = field(default_factory=TfidfIndex)


@dataclass(frozen=True)
class StepRecord:
    """What one step read and wrote: the ``prompt`` given to the generator, the indices of
    the long-term memories it retrieved, the ``paragraph`` written, and the memories after."""

    prompt: str
    retrieved: tuple[int, ...]
    paragraph: str
    short_term: str
    plan: str


SECTIONS = ("Paragraph", "Memory", "Plan")


def render_prompt(short_term: str, retrieved: Sequence[str], plan: str) -> str:
    """The generator's prompt: the retrieved paragraphs, the short-term memory and the plan
    under headings, then a request for the three sections, ending with ``short_term`` so that
    a plain continuation model continues the recent text."""
    past = "\n".join(f"- {p.strip()}" for p in retrieved) or "- (nothing yet)"
    return (
        f"Earlier passages:\n{past}\n"
        f"Plan: {plan.strip()}\n"
        "Write the next paragraph, then a Memory: line summarising the story so far and a "
        "Plan: line for the paragraph after it.\n"
        f"Story so far: {short_term.strip()}"
    )


def _last_sentence(text: str) -> str:
    parts = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
    return parts[-1] if parts else ""


def parse_reply(reply: str, short_term: str, *, short_chars: int = 300) -> tuple[str, str, str]:
    """``(paragraph, new short-term memory, new plan)`` from a generator's ``reply``.

    A reply with ``Paragraph:``, ``Memory:`` and ``Plan:`` headings (each at a line start,
    case-insensitive; ``Paragraph:`` may be left out, the text before the first heading is
    then the paragraph) gives the three directly; a missing memory or plan, and a reply with
    no heading, fall back to the rule of the module docstring."""
    heads = re.compile(r"^\s*(paragraph|memory|plan)\s*:", re.IGNORECASE | re.MULTILINE)
    found: dict[str, str] = {}
    marks = list(heads.finditer(reply))
    lead = reply[: marks[0].start()] if marks else reply
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(reply)
        found.setdefault(m.group(1).lower(), reply[m.end() : end].strip())
    paragraph = found.get("paragraph", lead.strip()) or lead.strip()
    memory = found.get("memory") or (short_term + " " + paragraph).strip()[-short_chars:]
    plan = found.get("plan") or _last_sentence(paragraph)
    return paragraph, memory[-short_chars:], plan


class RecurrentGPT:
    """The text recurrence of the module docstring around ``generator``.

    Args:
        generator: ``(prompt) -> text``: any text generator.
        k: long-term memories retrieved per step.
        short_chars: the longest short-term memory, in characters.
        n: the character n-gram length of retrieval.
    """

    def __init__(
        self, generator: Generator, *, k: int = 2, short_chars: int = 300, n: int = 3
    ) -> None:
        if k < 0 or short_chars < 1:
            raise ValueError(f"need k >= 0 and short_chars >= 1, got k={k}, {short_chars}")
        self.generator, self.k, self.short_chars, self.n = generator, k, short_chars, n

    def start(self, opening: str, plan: str = "") -> RecurrentState:
        """The state before the first step: ``opening`` as the short-term memory (and the
        first long-term memory), ``plan`` (default: the opening's last sentence)."""
        if not opening.strip():
            raise ValueError("the opening must hold some text (the recurrence starts from it)")
        state = RecurrentState(opening[-self.short_chars :], plan or _last_sentence(opening))
        state.long_term = TfidfIndex(self.n)
        state.long_term.add(opening)
        return state

    def step(self, state: RecurrentState) -> StepRecord:
        """One step (see the module docstring); updates ``state`` in place."""
        query = f"{state.plan} {state.short_term}"
        hits = state.long_term.search(query, self.k)
        retrieved = [state.long_term.documents[i] for i, _ in hits]
        prompt = render_prompt(state.short_term, retrieved, state.plan)
        reply = self.generator(prompt)
        if not isinstance(reply, str):
            raise TypeError(f"the generator must return a str, got {type(reply).__name__}")
        paragraph, memory, plan = parse_reply(reply, state.short_term, short_chars=self.short_chars)
        state.long_term.add(paragraph)
        state.short_term, state.plan = memory, plan
        return StepRecord(prompt, tuple(i for i, _ in hits), paragraph, memory, plan)

    def run(self, opening: str, steps: int, plan: str = "") -> list[StepRecord]:
        """``steps`` steps from :meth:`start` ``(opening, plan)``."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        state = self.start(opening, plan)
        return [self.step(state) for _ in range(steps)]


def char_lm_generator(
    run: LoadedRun,
    *,
    length: int = 200,
    context: int = 400,
    temperature: float = 0.8,
    seed: int = 0,
) -> Generator:
    """A :data:`Generator` over a loaded character-level LM run: the last ``context``
    characters of the prompt (characters outside the run's vocabulary dropped) continued by
    ``length`` sampled characters; call ``i`` samples with seed ``seed + i``."""
    from rnnkit.tasks.generate import generate_text
    from rnnkit.tasks.reuse import require_use

    require_use(run.config, "generate")
    vocab = set(run.info["vocab"])
    calls = [0]

    def generate(prompt: str) -> str:
        known = "".join(c for c in prompt if c in vocab)[-context:] or run.info["vocab"][0]
        text = generate_text(run, known, length, temperature=temperature, seed=seed + calls[0])
        calls[0] += 1
        return text

    return generate


# --- rnnkit recurrentgpt -----------------------------------------------------------------------

RECURRENTGPT_HELP = "write long text with a run's char-LM inside RecurrentGPT's text memory loop"


def configure_recurrentgpt(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit recurrentgpt``."""
    p.add_argument("--run", required=True, metavar="DIR", help="a finished char-LM run")
    p.add_argument("--steps", type=int, default=4, help="paragraphs to write (4)")
    p.add_argument("--opening", default="The king ", help="the text the story starts from")
    p.add_argument("--plan", default="", help="the first plan (default: the opening)")
    p.add_argument("--length", type=int, default=200, help="characters per paragraph (200)")
    p.add_argument("--context", type=int, default=400, help="prompt characters read (400)")
    p.add_argument("--k", type=int, default=2, help="long-term memories retrieved (2)")
    p.add_argument("--short-chars", type=int, default=300, help="short-term memory size (300)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0.8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first paragraph (0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print every step's record as JSON")


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an out-of-range option by its name, before the run is read (the loop's own
    checks name its keywords, ``k`` and ``short_chars``, and run after the run is loaded)."""
    for flag, low, need in (
        ("--steps", 1, "a positive integer"),
        ("--length", 1, "a positive integer"),
        ("--context", 1, "a positive integer"),
        ("--short-chars", 1, "a positive integer"),
        ("--k", 0, "an integer >= 0"),
    ):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value < low:
            raise ValueError(f"{flag} must be {need}, got {value}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if not args.opening.strip():
        raise ValueError(
            f"--opening must be some text (the story starts from it), got {args.opening!r}"
        )


def run_recurrentgpt(args: argparse.Namespace) -> int:
    """Run ``rnnkit recurrentgpt``: ``--steps`` paragraphs, each printed as it is written."""
    from rnnkit.tasks.reuse import RunLoadError, load_run, read_config, run_use

    _check_options(args)
    config = read_config(args.run)
    if run_use(config) != "language_model":
        raise RunLoadError(
            f"rnnkit recurrentgpt needs a character-LM run (rnnkit train --task charlm): "
            f"{args.run} trained task {config.get('task')!r}"
        )
    run = load_run(args.run, device=args.device)
    generator = char_lm_generator(
        run,
        length=args.length,
        context=args.context,
        temperature=args.temperature,
        seed=args.seed,
    )
    loop = RecurrentGPT(generator, k=args.k, short_chars=args.short_chars)
    state = loop.start(args.opening, args.plan)
    records = []
    for i in range(args.steps):
        rec = loop.step(state)
        records.append(rec)
        if not args.json:
            print(f"--- step {i + 1} (retrieved {list(rec.retrieved)}) ---\n{rec.paragraph}")
    if args.json:
        print(json.dumps({"opening": args.opening, "steps": [asdict(r) for r in records]}))
    return 0
