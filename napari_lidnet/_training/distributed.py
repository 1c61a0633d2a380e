"""torch.distributed for the trainer: one process per GPU (or CPU worker) under ``torchrun``.

The trainer stays one generator: every rank draws the same seeded global batch and trains on its share, DDP
averages the gradients (so a run equals a single-process run over the same global batch), and only rank 0
validates, writes checkpoints and reports.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env(device: str = "auto") -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment, if any: nccl when training on CUDA (each
    process on the GPU of its LOCAL_RANK), gloo on the CPU. ``device`` is the training device preference.

    Returns (rank, world size); (0, 1) outside torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from napari_lidnet.models.device import pick_device

        on_cuda = pick_device(device)[0].type == "cuda"
        if on_cuda:
            local_rank, n_gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local_rank >= n_gpus:
                raise ValueError(
                    f"process {local_rank} of this node has no GPU of its own ({n_gpus} visible): start at most "
                    f"{n_gpus} process(es) per node (torchrun --nproc-per-node), or train with --device cpu"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device: torch.device) -> torch.device:
    """On CUDA each process uses the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DistributedDataParallel when a process group exists, else itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself without a process group): every rank calls it at the
    same step, so all of them stop at that step when one was asked to."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    box = torch.tensor([int(flag)], device=on)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def shutdown() -> None:
    """Leave the process group (every rank, at the end of a run): a process that exits with gloo's threads still
    running can abort ("terminate called without an active exception"). The DDP wrappers left in reference cycles
    are collected first, so none holds the group into the interpreter's teardown."""
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()
