"""Fault injection for the training tests: a loss that is NaN in one training step on one rank.

The training loop has no fault-injection switch; the tests inject the fault themselves. In-process,
:func:`nonfinite_loss` patches :meth:`WeightedLoss.loss_at` (the per-example loss every training step
calls, once per micro-batch) for the duration of a ``with`` block. For ``torchrun`` workers, which are
separate processes, the test launches this file as the worker script instead of ``-m diffusion_objectives``:

    python -m torch.distributed.run ... tests/_faults.py --nonfinite-step 4 --nonfinite-rank 1 train --out ...

Each worker installs the same patch and then runs ``diffobj`` with the remaining arguments (its exit code is
the worker's). Nothing in the package knows about it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from unittest import mock

import torch

from diffusion_objectives.cli import main
from diffusion_objectives.core.loss import WeightedLoss


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


@contextlib.contextmanager
def nonfinite_loss(step: int, rank: int | None = None, grad_accum: int = 1) -> Iterator[None]:
    """Within the block, the per-example losses of training step ``step`` are NaN on process ``rank`` (None:
    every process). Steps are counted from the first call in this process, ``grad_accum`` calls a step: the
    run must start at step 0 (not resume)."""
    real = WeightedLoss.loss_at
    calls = 0

    def loss_at(self, model, x, eps, logsnr, labels=None):
        nonlocal calls
        out = real(self, model, x, eps, logsnr, labels)
        this_step, calls = calls // grad_accum, calls + 1
        if this_step == step and rank in (None, _rank()):
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    with mock.patch.object(WeightedLoss, "loss_at", loss_at):
        yield


def _worker(argv: list[str]) -> int:
    """``diffobj ARGS`` with the loss of one step made NaN (see the module docstring)."""
    p = argparse.ArgumentParser(description="diffobj with a NaN loss at one step (a test's fault injection)",
                                allow_abbrev=False)
    p.add_argument("--nonfinite-step", type=int, required=True)
    p.add_argument("--nonfinite-rank", type=int, default=None)
    args, rest = p.parse_known_args(argv)
    with nonfinite_loss(args.nonfinite_step, args.nonfinite_rank):
        return main(rest)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
