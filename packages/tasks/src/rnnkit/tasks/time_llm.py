"""The ``time_llm`` model: :class:`rnnkit.models.time_llm.TimeLLM` with a frozen ``char_lm``
backbone loaded from a finished rnnkit run (``rnnkit train --task charlm --out DIR``).

It lives in rnnkit-tasks because reading a run directory (:func:`rnnkit.tasks.load_run`) is
the tasks package's; rnnkit-models never imports rnnkit-tasks.
"""

from __future__ import annotations

from typing import Any

from rnnkit.models.time_llm import TimeLLM


def time_llm(*, backbone_run: str | None = None, **cfg: Any) -> TimeLLM:
    """Time-LLM: patches reprogrammed onto a frozen char_lm (backbone_run=DIR) + prompt"""
    from rnnkit.tasks.reuse import load_run

    if not isinstance(backbone_run, str) or not backbone_run:
        raise ValueError(
            "backbone_run must name the directory of a finished char_lm run (rnnkit train "
            f"--task charlm --out DIR), got {backbone_run!r}"
        )
    run = load_run(backbone_run)
    if run.config.get("model") != "char_lm":
        raise ValueError(
            f"backbone_run {backbone_run!r} trained model {run.config.get('model')!r}, "
            "not a char_lm"
        )
    vocab = run.task.data(0).info.get("vocab")
    cfg.setdefault("vocab", vocab if isinstance(vocab, str) else None)
    return TimeLLM(backbone=run.model, **cfg)
