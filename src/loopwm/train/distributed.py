"""Multi-process training on PyTorch's own engine: torchrun starts the processes, this module joins
them (gloo on CPU, NCCL on GPU) and wraps the model in DistributedDataParallel.

    torchrun --nproc_per_node 2 -m loopwm.train --data data/balls --out runs/balls-ddp
    torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint HOST:29400 --nproc_per_node 4 -m loopwm.train ...

Every process draws the same global batch of windows (the sampler's generator is seeded alike) and
trains on its own slice of it; DDP averages the gradients, so the result is that of one process on
the global batch. Only rank 0 writes metrics, checkpoints and the progress bar; every rank loads the
same checkpoint to resume, so a run can resume with a different number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from loopwm.utils import LoopWMError, pick_device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, requested_device: str) -> "Distributed":
        """Join the process group torchrun describes in the environment, or run alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, pick_device(requested_device))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(requested_device, local_rank=local)
        if not dist.is_initialized():
            dist.init_process_group(dist.get_default_backend_for_device(device))  # nccl on GPUs, gloo on CPUs
        return cls(rank, world, device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.index is not None else None  # a GPU process's own device
        # some parameters sit out some steps (an exit gate, a head without a target): let DDP know
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def shard(self, rows):
        """This rank's slice of the global batch."""
        return rows[self.rank :: self.world]

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (wall-clock budgets must stop all ranks together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def all_finite(self, value: torch.Tensor) -> bool:
        if self.world == 1:
            return bool(torch.isfinite(value))
        t = torch.tensor([0.0 if bool(torch.isfinite(value)) else 1.0], device=self.device)
        dist.all_reduce(t)
        return t.item() == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Raise unless every rank holds exactly the same weights (they must, after DDP)."""
        if self.world == 1:
            return
        flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = torch.tensor([float((flat - ref).abs().max())], device=self.device)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        if diff.item() != 0.0:
            raise LoopWMError(f"ranks hold different weights (max difference {diff.item():.3g}); distributed training "
                              "went out of step: report this with the command you ran")

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
