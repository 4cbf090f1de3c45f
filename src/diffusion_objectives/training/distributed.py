"""Process-group setup for ``torchrun`` and the few collectives the training loop needs.

``torchrun --nproc_per_node=N -m diffusion_objectives train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`session` reads them, initialises the process
group (gloo on CPU, NCCL on CUDA) and, on exit, waits at a barrier before destroying it (without the
barrier a fast rank may tear the group down while another is still in a collective). Without those
variables everything runs in one process and the collectives are no-ops.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import OptionError

__all__ = ["Dist", "from_env", "session", "all_reduce_sum", "all_reduce_max", "broadcast_object"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``device``: where it trains."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"environment variable {name}={value!r} is not an integer") from None


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local GPU) if available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"run.device={requested!r} but CUDA is not available")
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    return torch.device(requested)


def from_env(device: str = "auto") -> Dist:
    """The rank layout from torchrun's environment variables (one process if they are absent)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return Dist(rank, world, local, pick_device(device, local))


@contextlib.contextmanager
def session(device: str = "auto", timeout_s: float = 600.0) -> Iterator[Dist]:
    """Initialise the process group if torchrun launched us (and it is not initialised yet); on exit
    barrier, then destroy it. After an exception the barrier is kept only if the exception says every rank
    raised it (attribute ``all_ranks``); otherwise the other ranks may be gone."""
    d = from_env(device)
    if d.world_size == 1 or dist.is_initialized():
        yield d
        return
    backend = "nccl" if d.device.type == "cuda" else "gloo"
    if d.device.type == "cuda":
        torch.cuda.set_device(d.device)
    dist.init_process_group(backend, rank=d.rank, world_size=d.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield d
    except BaseException as exc:
        if getattr(exc, "all_ranks", False):  # an error every rank agreed on: all of them are here
            with contextlib.suppress(Exception):
                dist.barrier()
        raise
    else:
        dist.barrier()
    finally:
        # DDP's reducer sits in reference cycles that keep the process group (and gloo's threads) alive past
        # destroy_process_group; collected only at interpreter exit, a rank that leaves early (the others
        # still evaluating) could abort there ("terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum of ``x`` over ranks (in place; identity in one process)."""
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Element-wise maximum of ``x`` over ranks (in place)."""
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_object(obj: object, d: Dist, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (a small picklable value: a decision, a path)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_gather_object(obj: object, d: Dist) -> list[object]:
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out
