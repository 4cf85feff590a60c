"""Run by ``test_distributed.py`` under torchrun (and once alone): train, save the parameters."""

from __future__ import annotations

import sys

import torch

from rnnkit.tasks import TrainConfig, Trainer


def main(out: str) -> None:
    cfg = TrainConfig(
        task="copy",
        steps=6,
        batch_size=64,
        eval_every=3,
        out=out,
        model_config={"hidden_size": 16},
        verbose=False,
        plot=False,
    )
    trainer = Trainer(cfg)
    result = trainer.run()
    if trainer.dist.main:
        torch.save(
            {"state": trainer.model.state_dict(), "test": result.test, "world": trainer.dist.world},
            f"{out}/params.pt",
        )


if __name__ == "__main__":
    main(sys.argv[1])
