"""Data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on CPUs); a no-op in one process."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._registry import RobustDistillError


class Distributed:
    """Data-parallel training under ``torchrun``: NCCL on GPUs, gloo on CPUs; a no-op in one process.

    Every rank walks the same global batch order and takes every ``world``-th sample of each batch, so a
    run on N processes sees the same global batches as one process with the same ``--batch-size``.
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")  # where collectives' tensors live (NCCL needs them on the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group; on CUDA each process takes the GPU of its local rank."""
        if self.world == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device
        return device

    def wrap(self, student: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
        if self.world == 1:
            return student
        if sync_bn:
            if device.type != "cuda":
                raise RobustDistillError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernels); "
                                         "drop --sync-bn for CPU runs")
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batch: Tensor) -> Tensor:
        return batch if self.world == 1 else batch[self.rank::self.world]

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over processes (a new tensor; ``tensor`` itself in one process)."""
        if self.world == 1:
            return tensor
        total = tensor.detach().clone().to(self.device)
        dist.all_reduce(total)
        return total.to(tensor.device)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main:
            print(*args, **kwargs)

    def share_module(self, module: nn.Module) -> None:
        """Start every process from rank 0's copy of a plugin-owned ``module`` and average its gradients over
        processes (it is not part of the student's DDP wrapper)."""
        if self.world == 1 or not dist.is_initialized():
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)
        world = self.world

        def average(grad: Tensor) -> Tensor:
            grad = grad.clone()
            dist.all_reduce(grad)
            return grad / world

        for p in module.parameters():
            if p.requires_grad:
                p.register_hook(average)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process gets the same answer)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
