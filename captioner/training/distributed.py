"""Data-parallel training under ``torchrun``: one process per GPU, gradients averaged by DDP.

``torchrun --nproc_per_node=N script.py ...`` starts N copies of a training script and tells each
where it stands through environment variables: ``RANK`` (0 .. world size - 1, over all machines),
``WORLD_SIZE``, ``LOCAL_RANK`` (which GPU of this machine) and ``MASTER_ADDR``/``MASTER_PORT``
(where rank 0 listens). Each process then:

- reads its own share of every epoch (``caption_loader(..., num_replicas=world_size, rank=rank)``:
  rank ``r`` takes every N-th sample of the epoch's ``(seed, epoch)`` order, starting at ``r``);
- trains the model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`wrap_ddp`),
  which averages the gradients of all processes during ``backward()``, so every process takes the
  same optimiser step and the weights stay identical everywhere;
- averages the losses it reports over all processes (:func:`all_reduce_mean`), so rank 0's log
  shows the figures of the whole batch;
- leaves writing (checkpoints, pictures, the log) and printing to rank 0, while the others wait at
  :func:`barrier`.

A plain ``python script.py`` has none of these variables: :func:`init_distributed` then returns
the :class:`DistInfo` of a single process and every helper here does nothing, so the single-process
path runs exactly as it would without this module.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from captioner.training.checkpoints import rng_state
from captioner.training.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a run.

    ``distributed`` is True under torchrun (a process group exists), even with a single process;
    ``is_main`` is True for rank 0, the process that writes files and prints.
    """

    rank: int
    world_size: int
    local_rank: int
    is_main: bool
    device: torch.device
    distributed: bool = False


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher speaking its protocol) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_name: str) -> DistInfo:
    """Join torchrun's process group, or describe a single process when there is none.

    Under torchrun: the CUDA device is ``cuda:LOCAL_RANK`` (whatever ``device_name`` names, as long
    as it is ``auto`` or ``cuda`` on a machine with GPUs) and the backend NCCL; on the CPU the
    backend is gloo. Without torchrun: nothing is initialised and the device is
    ``resolve_device(device_name)``.

    Example: ``torchrun --nproc_per_node=2 train_encoder.py`` gives rank 1
    ``DistInfo(rank=1, world_size=2, local_rank=1, is_main=False, device=cuda:1, distributed=True)``.
    """
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        return DistInfo(rank=0, world_size=1, local_rank=0, is_main=True, device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but this machine shows {torch.cuda.device_count()} GPUs: "
                             "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL, and every later `.cuda()`, then use this process's GPU
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return DistInfo(rank, world_size, local_rank, rank == 0, device, distributed=True)


def wrap_ddp(model: nn.Module, info: DistInfo, previous: nn.Module | None = None) -> nn.Module:
    """``DistributedDataParallel(model)`` under torchrun; ``model`` itself in a single process.

    DDP registers, when it is built, the parameters that require a gradient *at that moment*, and
    averages the gradients of exactly those. A parameter frozen then and unfrozen later (layer-wise
    unfreezing) would train on its own process's gradient only and the copies would drift apart.
    So call this again whenever the freeze state may have changed (every epoch): ``previous``, the
    wrapper returned last time, is returned again when the same parameters are trainable, and a new
    wrapper is built (copying rank 0's weights to every process, which already agree) when not.
    The alternative, building DDP once with every parameter trainable and
    ``find_unused_parameters=True``, would search the autograd graph and all-reduce the frozen
    parameters' zero gradients at every step; re-wrapping costs one broadcast per change.

    ``model`` may be ``torch.compile``-d: PyTorch recommends compiling the inner module and
    wrapping that in DDP.
    """
    if not info.distributed:
        return model
    trainable = tuple(p.requires_grad for p in model.parameters())
    if isinstance(previous, DistributedDataParallel) and previous.module is model \
            and getattr(previous, "trainable_when_built", None) == trainable:
        return previous
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    ddp.trainable_when_built = trainable
    return ddp


def gradient_sync(model: nn.Module, last: bool):
    """Gradient accumulation under DDP: ``model.no_sync()`` for every micro-batch but the ``last`` of a
    step (its gradients stay local and add up), so the gradients are all-reduced once per step; a plain
    context in a single process and for the last micro-batch."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a new tensor); ``tensor`` itself in a single process.

    Every process must call it, in the same order. Example: losses 1.0 on rank 0 and 3.0 on rank 1
    give 2.0 on both.
    """
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # SUM, not AVG: gloo has no AVG
    return total / dist.get_world_size()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s ``obj`` on every process (any picklable object); ``obj`` in a single process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rng_states_by_rank(info: DistInfo) -> dict:
    """``{"rng_by_rank": [rank 0's RNG states, rank 1's, ...]}`` for a checkpoint; ``{}`` in a single process.

    Every process must call it. The checkpoint's ``"rng"`` entry is rank 0's state, which is what a
    single process resumes with; a run resumed with the same number of processes gives each its own
    (dropout masks differ between processes: each script seeds with ``train.seed + rank``), so it continues exactly.
    """
    if not info.distributed:
        return {}
    states = [None] * info.world_size
    dist.all_gather_object(states, rng_state())
    return {"rng_by_rank": states}


def barrier() -> None:
    """Wait until every process gets here (rank 0 writing a checkpoint, say); nothing in a single process."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group at the end of a run; nothing in a single process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def weighted_mean(total: torch.Tensor, count: int, info: DistInfo) -> float:
    """``total / count`` over every process: each process saw its share of the validation batches, so
    their sums and counts are added, not their means. In a single process, ``total / count``."""
    if info.distributed:  # [distributed]
        total, count = all_reduce_mean(torch.stack([total, total.new_tensor(float(count))])).tolist()
        return total / count if count else 0.0
    return total.item() / max(1, count)
