"""Devices, precision and distributed training (torchrun: one process per GPU or CPU worker)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # train() created the process group, so it must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def teardown_distributed(dist: Dist) -> None:
    """Destroy the process group train() created: a gloo group left to the interpreter's
    exit can abort a rank ("terminate called without an active exception") while the other
    still finishes its last collective."""
    if dist.owns_group and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: one process per GPU (or CPU worker)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if world <= 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return Dist(), device
    owns = not torch.distributed.is_initialized()
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), owns)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if owns:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast is slower than fp32 for convolutions on most CPUs


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def all_reduce_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    if dist.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_gather(value, dist: Dist) -> list:
    """Every rank's `value` (plain Python objects), on every rank."""
    if dist.world_size == 1:
        return [value]
    values = [None] * dist.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def broadcast(value, dist: Dist):
    """Rank 0's `value`, on every rank."""
    if dist.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
