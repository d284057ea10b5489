"""PyTorch DDP as launched by torchrun: ranks from the environment, one process group, rank-0-first sections.

    torchrun --nproc_per_node 2 train.py --data ... --device 0,1     # nccl on GPUs
    torchrun --nproc_per_node 2 train.py --data ... --device cpu     # gloo on CPU
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import UserError
from utils.log import LOGGER

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))  # -1: not launched by torchrun
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0 of a DDP job, or a single process: the one that evaluates, logs and writes files."""
    return RANK in (-1, 0)


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun set up: nccl for CUDA devices, gloo for CPU."""
    if LOCAL_RANK == -1:
        return
    if device.type == "cuda":
        if torch.cuda.device_count() <= LOCAL_RANK:
            raise UserError(f"torchrun started {WORLD_SIZE} processes but only {torch.cuda.device_count()} "
                            "CUDA device(s) are visible")
        torch.cuda.set_device(LOCAL_RANK)
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(hours=3))
    if RANK == 0:
        LOGGER.info(f"DDP: {WORLD_SIZE} processes, {backend} backend")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_first():
    """Let rank 0 go through the block (dataset generation, label cache) before the other ranks enter it."""
    if RANK > 0:
        barrier()
    yield
    if RANK == 0:
        barrier()


def broadcast(obj):
    """rank 0's value of a picklable object on every rank (identity without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]
