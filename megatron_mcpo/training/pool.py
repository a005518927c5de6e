"""The MCPO pool: one PPO mini-batch gathered over all data-parallel ranks (docs/mcpo.md §4, §8).

`exact` (default) is a two-pass gradient cache: pooled states H of the whole pool (from a no-grad
pre-pass, or the old-log-prob pass while θ still equals the rollout policy) are gathered, the full-pool
loss λ·L_CL is differentiated once w.r.t. H and φ (the projector steps on that gradient), and the real
micro-batch passes inject G = λ ∂L_CL/∂H through the surrogate ⟨h_i, sg(G_i)⟩, whose summed backbone
gradient is exactly λ ∇_θ L_CL. During warmup H is detached: φ learns, the backbone gets nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.mcpo import mcpo_contrastive_loss
from megatron_mcpo.config import MCPOConfig
from megatron_mcpo.models.projection import ProjectionTrainer


@dataclass
class PoolMeta:
    """Per-rollout pool metadata of this rank's rows, in local order."""

    rewards: torch.Tensor  # (n,) float
    group_ids: torch.Tensor  # (n,) long, unique across ranks and generation batches
    domain_ids: torch.Tensor  # (n,) long


def gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Concatenate equal-length (n, ...) tensors from every rank of `group` in rank order (no grad)."""
    if group is None or dist.get_world_size(group) == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)


def gather_meta(meta: PoolMeta, group) -> PoolMeta:
    return PoolMeta(*(gather_rows(t, group) for t in (meta.rewards, meta.group_ids, meta.domain_ids)))


def pool_gradient(
    pooled_local: torch.Tensor,
    meta: PoolMeta,
    projector: ProjectionTrainer,
    cfg: MCPOConfig,
    dp_group,
    dp_rank: int,
    backbone_grad: bool,
) -> tuple[Optional[torch.Tensor], dict]:
    """Gather the pool, backward λ·L_CL into the projector and return (G_local, metrics).

    pooled_local (n, d) fp32 states of this rank's rows; G_local (n, d) = λ ∂L_CL/∂h for those rows,
    or None when `backbone_grad` is False (warmup). Projector gradients are left in its .grad.
    """
    n = pooled_local.shape[0]
    H = gather_rows(pooled_local.detach().float(), dp_group).requires_grad_(backbone_grad)
    full = gather_meta(meta, dp_group)
    u = projector.head(H)
    loss_cl, metrics = mcpo_contrastive_loss(u, full.rewards, full.group_ids, full.domain_ids, cfg)
    if loss_cl.requires_grad:
        (cfg.cl_coef * loss_cl).backward()
    metrics = {f"mcpo/{k}": float(v) for k, v in metrics.items()}
    metrics["mcpo/warmup_active"] = float(not backbone_grad)
    if not backbone_grad or H.grad is None:
        return (None if not backbone_grad else torch.zeros_like(pooled_local)), metrics
    return H.grad[dp_rank * n : (dp_rank + 1) * n].detach(), metrics


def surrogate(pooled: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ_i ⟨h_i, sg(G_i)⟩: its gradient w.r.t. the backbone is Σ_i G_i ∂h_i/∂θ."""
    return (pooled * grad.detach()).sum()
