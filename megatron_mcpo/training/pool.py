"""The MCPO pool's primitives: one PPO mini-batch gathered over all data-parallel ranks (docs/mcpo.md §4),
and the surrogate that injects a cached gradient into the backbone (§8). The terms using them are in
training/mcpo_term.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def surrogate(pooled: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ_i ⟨h_i, sg(G_i)⟩: its gradient w.r.t. the backbone is Σ_i G_i ∂h_i/∂θ."""
    return (pooled * grad.detach()).sum()
