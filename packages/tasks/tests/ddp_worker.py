"""Run by ``test_distributed.py``, once alone and once per process of a job (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set as torchrun sets them).

    python ddp_worker.py RESULT [--interrupt-at STEP] -- ARGS...

runs ``rnnkit ARGS...`` (the whole CLI, in the current folder) and saves what this process's
trainer ended with to the file ``RESULT`` (given outside the run directory): the model's
parameters, the result's metrics, the evaluation history and the process's place in the job;
last thing before the interpreter's teardown, it writes to ``RESULT.left`` whether the process
group was destroyed by then.
With ``--interrupt-at``, rank 0 alone receives a SIGINT (a Ctrl-C) during that step.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rnnkit.core.cli import main as rnnkit_main
from rnnkit.tasks.trainer import RunResult, Trainer


def main(argv: list[str]) -> int:
    result_file = argv[0]
    sep = argv.index("--")
    opts, args = argv[1:sep], argv[sep + 1 :]
    interrupt_at = int(opts[opts.index("--interrupt-at") + 1]) if opts else None
    trainers: list[Trainer] = []
    results: list[RunResult] = []
    run, step = Trainer.run, Trainer._train_step

    def capturing_run(self: Trainer) -> RunResult:
        trainers.append(self)
        results.append(run(self))
        return results[-1]

    def interrupting_step(self: Trainer) -> float:
        if self.dist.main and self.state.step + 1 == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag
        return step(self)

    # registered before the trainer joins the group, so run after its own exit handler:
    # whether the process group was gone before the interpreter's teardown
    atexit.register(lambda: Path(result_file + ".left").write_text(str(not dist.is_initialized())))
    Trainer.run = capturing_run  # type: ignore[method-assign]
    Trainer._train_step = interrupting_step  # type: ignore[method-assign]
    code = rnnkit_main(args)
    (t,), (r,) = trainers, results
    torch.save(
        {
            "code": code,
            "state": t.model.state_dict(),
            "history": t.state.history,
            "valid": r.valid,
            "test": r.test,
            "step": t.state.step,
            "rank": t.dist.rank,
            "world": t.dist.world,
            "out": str(t.out),
            "wrapper_released": t._parallel is None,
        },
        result_file,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
