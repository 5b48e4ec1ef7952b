"""Multi-process training under ``torchrun --nproc_per_node N`` (or any launcher setting RANK / WORLD_SIZE).

``setup`` initialises the process group (NCCL on GPUs, Gloo on CPUs) and picks each rank's device;
:class:`DDPDual` wraps each trainable network of a ``DualModel`` in ``DistributedDataParallel`` (a
mean-teacher's EMA teacher is not wrapped: it gets no gradient and every rank updates it identically).
The sampler shards cases by rank (``training.sampling``); only rank 0 validates and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process stands.

    Attributes
    ----------
    rank, world_size, local_rank : int
    device : torch.device
    enabled : bool
        True when running with more than one process.
    owns_group : bool
        True when :func:`setup` created the process group (and :func:`cleanup` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0


def launched_distributed() -> bool:
    """Whether the environment describes a multi-process run (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or (dist.is_available() and dist.is_initialized())


def setup(device: torch.device) -> DistContext:
    """Join the process group if launched with several processes; otherwise a single-process context.

    ``device`` is the device resolved from the config; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    if not launched_distributed():
        return DistContext(device=device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return DistContext(rank, world, local_rank, device, enabled=world > 1, owns_group=owns)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (a list of one item when not distributed)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself when not distributed).

    Used for decisions every rank must take together (skip a non-finite step, redo it in fp32, fall back to
    fp32): a rank that skipped a backward while the others ran theirs would hang the gradient all-reduce.
    """
    if not ctx.enabled:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.enabled:
        dist.barrier()


def sync_state(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op when not distributed).

    DDP keeps gradients in step but each rank updates its own batch-norm running statistics after the
    last forward (DDP re-broadcasts them only at the next forward), and a mean-teacher's EMA teacher is
    not wrapped; called before checkpoints so that every rank holds exactly what rank 0 saves.
    """
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


class DDPDual(nn.Module):
    """A ``DualModel`` stand-in whose trainable networks are wrapped in ``DistributedDataParallel``.

    Methods see the same attributes (``net_a``, ``net_b``, ``kind``) and ``forward`` as a ``DualModel``;
    ``module`` is the unwrapped model (for checkpoints and validation).
    """

    def __init__(self, model: nn.Module, ctx: DistContext):
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None

        def wrap(net: nn.Module) -> nn.Module:
            if not any(p.requires_grad for p in net.parameters()):
                return net
            return DDP(net, device_ids=ids)

        self.module = model
        self.kind = model.kind
        self.net_a = wrap(model.net_a)
        self.net_b = model.net_b if model.net_b is model.net_a else wrap(model.net_b)

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    @property
    def in_channels(self) -> int:
        return self.module.in_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits_a = self.net_a(x)[0]
        return logits_a, self.net_b(x)[0]


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model methods train through: ``model`` itself, or a :class:`DDPDual` when distributed."""
    return DDPDual(model, ctx) if ctx.enabled else model
