"""Data-parallel dataset sweeps on ``torch.distributed`` (one process per device, launched by torchrun).

    torchrun --nproc_per_node=2 -m fxvene trace-facts facts.jsonl --model DIR --out RUN_DIR

Each rank holds its own copy of the model on its own device (``cuda:LOCAL_RANK`` with NCCL when
CUDA is available, else the CPU with gloo), runs its share of the batches of prompts and sends its
per-prompt results to rank 0 (``gather_object``). Batches are cut from the dataset alone
(``fxvene.sweeps.datasets.plan_batches``) and every batch computes the same numbers on any rank, so
the gathered results are those of a single-process run. Nothing here opens sockets or spawns
processes: torchrun starts the ranks and ``init_process_group`` (env://) connects them.

Outside torchrun (no ``WORLD_SIZE`` > 1 in the environment and no initialised process group) every
function here is the single-process identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Context:
    rank: int
    world: int
    backend: str
    owned: bool  # the process group was initialised here (fxvene closes it at the end of a CLI run)


_CTX = None


def launched():
    """Whether this process is one rank of several (torchrun sets ``WORLD_SIZE``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def context():
    """The process group's rank and size, initialised from torchrun's environment on first use
    (NCCL on CUDA, gloo on CPU); None outside a multi-process run."""
    global _CTX
    import torch

    if not torch.distributed.is_available():
        return None
    dist = torch.distributed
    if dist.is_initialized():
        if dist.get_world_size() <= 1:
            return None
        if _CTX is None or not _CTX.owned:
            _CTX = Context(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()), False)
        return _CTX
    if not launched():
        return None
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    _CTX = Context(dist.get_rank(), dist.get_world_size(), backend, True)
    import atexit

    atexit.register(lambda: close(_CTX))  # a group started here ends with the process (no NCCL warning at exit)
    return _CTX


def device():
    """This rank's device: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


_STAGES = 1


def set_stages(k):
    """Pipeline stages per replica (``fxvene.sweeps.pipeline``): ranks ``r // k`` form one replica, whose
    ranks all run the same batches; results are gathered from each replica's first stage."""
    global _STAGES
    _STAGES = int(k)


def _stages(ctx):
    return _STAGES if _STAGES > 1 and ctx.world % _STAGES == 0 else 1


def shard(batches, ctx):
    """This rank's batches. Batches go to the replica (a rank, or a group of pipeline stages) with the least
    work so far (work: prompts x tokens^2), largest first, ties to the lower one: the same split on every
    rank, no messages."""
    if ctx is None:
        return batches
    k = _stages(ctx)
    load = [0] * (ctx.world // k)
    mine = []
    order = sorted(range(len(batches)), key=lambda i: (-_work(batches[i]), i))
    for i in order:
        r = min(range(len(load)), key=lambda j: (load[j], j))
        load[r] += _work(batches[i])
        if r == ctx.rank // k:
            mine.append(i)
    return [batches[i] for i in sorted(mine)]


def _work(batch):
    return len(batch) * batch[0].n_tokens ** 2


def gather(results, ctx):
    """``{record index: result}`` of every rank, merged on rank 0 (tensors moved to the CPU first);
    None on the other ranks. Single process: ``results`` itself."""
    if ctx is None:
        return results
    import torch.distributed as dist

    # the stages of a replica hold the same results: its first stage sends them
    local = {} if ctx.rank % _stages(ctx) else {k: _to_cpu(v) for k, v in results.items()}
    parts = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(local, parts, dst=0)
    if ctx.rank != 0:
        return None
    merged = {}
    for p in parts:
        merged.update(p)
    return merged


def barrier(ctx):
    if ctx is not None:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj, ctx):
    """Rank 0's ``obj`` on every rank."""
    if ctx is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close(ctx):
    """End a process group that ``context`` started (a no-op otherwise)."""
    global _CTX
    if ctx is not None and ctx.owned and ctx is _CTX:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _CTX = None


def _to_cpu(v):
    import dataclasses

    import torch

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        for f in dataclasses.fields(v):
            x = getattr(v, f.name)
            if isinstance(x, torch.Tensor):
                setattr(v, f.name, x.cpu())
    return v


__all__ = ["context", "device", "set_stages", "shard", "gather", "barrier", "broadcast", "close", "launched", "Context"]
