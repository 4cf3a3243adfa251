"""Training in several processes with `torch.distributed`, as launched by `torchrun`.

    torchrun --nproc_per_node=4 -m classifier_lib train --data-dir DATA
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 -m classifier_lib train ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op and training
runs in one process as usual. NCCL on CUDA (one GPU per process), gloo on the CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder, checkpoints, logs and TensorBoard."""
    return rank() == 0


def init(device_setting: str) -> torch.device | None:
    """Join the process group torchrun describes and return this process's device; None when this is
    not a torchrun launch (one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    use_cuda = torch.cuda.is_available() and device_setting in ("auto", "cuda")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (in place; returned for convenience)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. decoding images into the shared cache), the others after it."""
    if dist.is_initialized() and not is_main():
        dist.barrier()
    yield
    if dist.is_initialized() and is_main():
        dist.barrier()
