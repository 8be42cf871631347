"""Distributed data-parallel set-up for the trainer: one process per device, launched by ``torchrun``.

``torchrun --nproc_per_node=N -- scripts/train.py --run RUN ...`` starts N copies (the ``--`` stops
torchrun reading ``--run`` as its own ``--run-path``), as does any launcher that sets ``WORLD_SIZE``,
``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; each joins the process group here.
CUDA devices use NCCL, CPUs gloo. Rank 0 alone writes files and validates; the others train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world`` processes (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str = "auto") -> tuple[Distributed, torch.device]:
        """Join the process group the environment describes, if any; returns it and this process's device.

        ``device`` is ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; under DDP each
        process takes the CUDA device of its local rank.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        target = torch.device(device)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(), target
        if not dist.is_initialized():
            dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        if target.type == "cuda":
            target = torch.device("cuda", local_rank)
            torch.cuda.set_device(target)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank), target

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` for the training step: DDP-wrapped when distributed, else itself.

        Keep the unwrapped model for saving and validation: DDP only adds gradient averaging.
        """
        if not self.enabled:
            return model
        if device.type == "cuda":  # batch statistics over all GPUs; SyncBatchNorm has no CPU kernel
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Some outputs feed the loss only with some options (a person-aware encoder's mask without
        # --person-loss), so not every parameter gets a gradient on every step.
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=True)

    def main_decides(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank, so that all stop at the same step."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.broadcast(value, 0)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (the end of a distributed run)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
