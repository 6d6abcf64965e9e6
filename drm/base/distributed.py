"""One stage on many processes (torch.distributed), and the single process as its special case.

A stage runs distributed when torch's elastic agent started it: `torchrun` (multi-node, or a
launch of your own) or the stage itself, which relaunches its own command line under the
agent when `runtime.nproc_per_node` > 1 (`launch_workers`). Either way every worker sees
RANK, WORLD_SIZE and LOCAL_RANK; `init` joins the process group (NCCL on CUDA, gloo on CPU)
and places the worker on `cuda:LOCAL_RANK`. Without them everything here is a no-op on
one process, so the single-process code path is the distributed one with world size 1.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from drm.base.errors import ConfigError, DRMError


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank among world_size workers."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs, saves checkpoints and writes artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (the first n % world_size ranks get one more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def launched_by_agent() -> bool:
    """True inside a worker started by torchrun / the elastic agent with more than one process."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when launched as a worker; (World, this worker's device)."""
    if not launched_by_agent():
        return World(), device
    world = World(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {world.rank} has local rank {world.local_rank} but this node has "
                              f"{torch.cuda.device_count()} CUDA device(s): set runtime.nproc_per_node (or torchrun's "
                              "--nproc-per-node) to at most the number of GPUs")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_workers(nproc: int, argv: list[str]) -> None:
    """Run `python argv...` as nproc workers on this node under torch's elastic agent (what
    `torchrun --standalone --nproc-per-node nproc` does) and wait for them; a failed worker
    raises DRMError with its rank and exit code (its traceback is on stderr above)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 2:
        raise ConfigError("launch_workers needs nproc_per_node >= 2")
    # Each worker gets one intra-op thread unless told otherwise (torchrun's rule): nproc
    # workers x all cores would oversubscribe the CPU.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise DRMError(f"worker rank {rank} of {nproc} failed (exit code {failure.exitcode}); "
                       "its error is printed above") from None


def all_gather_with_grad(t: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's tensor concatenated in rank order, gradients flowing back to each rank's
    own part (as open_clip's gather_with_grad): the FLYP term over the global batch."""
    if not world.distributed:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()))


def all_gather_rows(t: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows (any count per rank) concatenated in rank order, on every rank; no
    gradient. Ranks pad to the longest share, as collectives need equal shapes."""
    if not world.distributed:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    counts = [torch.zeros_like(n) for _ in range(world.world_size)]
    dist.all_gather(counts, n)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of a scalar over ranks (e.g. the global batch's loss, for logging)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / world.world_size


def from_main(value, world: World):
    """Rank 0's value of a small picklable object, on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def map_batches(fn, dataset, *, batch_size: int, width: int, world: World, device, num_workers: int = 0,
                progress: bool = True, desc: str | None = None):
    """fn on every batch of `dataset` in order, the batches dealt round-robin to the ranks
    (batch i on rank i % world_size; one rank: plain batches in order). Yields, round by
    round, the outputs [rows, width] of the round's batches in dataset order, on every rank.
    Each batch holds the same images however many ranks share the work, so a sharded pass
    computes exactly what one process computes; memory holds one round at a time."""
    import math

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    n = len(dataset)
    n_batches = math.ceil(n / batch_size)
    mine = [list(range(b * batch_size, min(n, (b + 1) * batch_size)))
            for b in range(world.rank, n_batches, world.world_size)]
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    batches = iter(loader)
    rounds = math.ceil(n_batches / world.world_size)
    for r in tqdm(range(rounds), desc=desc, disable=not (progress and world.is_main), leave=False):
        if r < len(mine):
            x = next(batches)[0]
            out = fn(x.to(device, non_blocking=True))
        else:  # this rank has no batch in the last round: it still joins the gather
            out = torch.empty(0, width, device=device)
        yield all_gather_rows(out, world)
