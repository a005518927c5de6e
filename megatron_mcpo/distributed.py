"""Distributed init (torchrun env or single process), Megatron parallel state, explicit process groups,
and the autograd all-gather used by the contrastive pool.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class ParallelGroups:
    """The process groups and ranks a rank needs, handed explicitly to whoever communicates."""

    tp: Any
    pp: Any
    dp: Any  # data parallel, context-parallel ranks not included
    cp: Any  # context parallel
    mp: Any  # model parallel: the tp x pp ranks of one data-parallel replica (megatron's, without CP)
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    cp_size: int
    world_rank: int
    world_size: int
    device: torch.device

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(requested: str) -> torch.device:
    """This rank's torch device for run.device (resolved once by config.resolve_device; cuda: LOCAL_RANK's GPU)."""
    from megatron_mcpo.config import resolve_device as resolve_name

    if resolve_name(requested) == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    vpp: Optional[int] = None,
    cp: int = 1,
    device: str = "auto",
    seed: int = 42,
    timeout_s: float = 600.0,
) -> ParallelGroups:
    """Initialise torch.distributed (NCCL on GPU, gloo on CPU) and Megatron's parallel state.

    Reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without it,
    runs as a single process. On CPU the megatron-core CPU backend is installed first. `device` (run.device)
    is resolved here once; the returned groups' `.device` is where every tensor of the run lives.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    dev = resolve_device(device)
    if dev.type == "cpu":
        from megatron_mcpo import cpu_backend

        cpu_backend.install()
    else:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    world = dist.get_world_size()
    if world % (tp * pp * cp) != 0:
        raise ValueError(f"parallel: tp*pp*cp={tp * pp * cp} does not divide the world size {world}")
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp,
            context_parallel_size=cp,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return current_groups(dev)


def current_groups(device: torch.device) -> ParallelGroups:
    from megatron.core import parallel_state as ps

    return ParallelGroups(
        tp=ps.get_tensor_model_parallel_group(),
        pp=ps.get_pipeline_model_parallel_group(),
        dp=ps.get_data_parallel_group(),
        cp=ps.get_context_parallel_group(),
        mp=ps.get_model_parallel_group(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        cp_size=ps.get_context_parallel_world_size(),
        world_rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        device=device,
    )


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, group, src: int):
    """`obj` (picklable) from the rank with group rank `src` to every rank of `group`."""
    if group is None or dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, src), group=group)
    return box[0]


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank holds a loss over the whole gathered tensor; the local slice's gradient is the sum of
        # all ranks' gradients for it (each rank's loss counts once, DDP averaging divides later).
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def all_gather_with_grad(x: torch.Tensor, group) -> torch.Tensor:
    """Concatenate `x` (n, ...) from every rank of `group` along dim 0 -> (world*n, ...), differentiable.

    All ranks must pass the same n. Backward: all-reduce (sum) the incoming gradient over `group` and
    return this rank's slice, so a loss computed identically on every rank and then averaged by
    data-parallel gradient averaging yields exactly the single-process gradient.
    """
    if group is None or dist.get_world_size(group) == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device), group=group)  # NCCL: on the device
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"all_gather_with_grad: ranks hold different row counts {[int(s) for s in sizes]}")
    return _AllGatherWithGrad.apply(x, group)
