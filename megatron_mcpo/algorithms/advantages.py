"""Outcome advantages per prompt group (docs/mcpo.md §2.1–§2.2; verl 0.6 `core_algos`).

Advantages are computed from the whole generation batch's (reward, prompt id) list, so a prompt group
whose rollouts sit on different ranks gets the same advantages as if it were local. The statistics are
taken in a canonical order (groups sorted by prompt id, members by reward), which makes the result
bitwise independent of how the batch was ordered or split.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms._checks import check_choice, check_finite, check_vector

ESTIMATORS = ("grpo", "drgrpo", "rloo")


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6
) -> torch.Tensor:
    """Sequence-level advantages Â_i, shape (N,), from rewards (N,) float and group_ids (N,) int.

    With g = the group of rollouts sharing group_ids[i], mean_g its mean and std_g its unbiased std:
      grpo:   Â_i = (r_i − mean_g) / (std_g + eps)
      drgrpo: Â_i = r_i − mean_g                          (Dr.GRPO: no std division)
      rloo:   Â_i = G/(G−1) · (r_i − mean_g) = r_i − mean of the other G−1 rollouts
    A single-member group uses mean 0 and std 1, as verl does (so grpo gives r/(1+eps), the others r).
    The trainer broadcasts Â_i over the rollout's response tokens.
    """
    n = rewards.numel() if isinstance(rewards, torch.Tensor) else None
    check_vector("rewards", rewards, kind="float")
    check_vector("group_ids", group_ids, n, kind="int")
    check_choice("estimator", estimator, ESTIMATORS)
    if n == 0:
        return rewards.clone()
    check_finite("rewards", rewards)

    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    # Canonical order: by prompt, ties (same prompt) by reward; stable sorts make it a lexsort.
    by_reward = torch.argsort(rewards, stable=True)
    order = by_reward[torch.argsort(inv[by_reward], stable=True)]
    group = inv[order]
    slot = torch.arange(n, device=rewards.device) - (torch.cumsum(counts, 0) - counts)[group]
    # Dense (groups, max size) layout: each row's reductions see the same values in the same order.
    shape = (counts.numel(), int(counts.max()))
    dense = rewards.new_zeros(shape)
    filled = torch.zeros(shape, dtype=torch.bool, device=rewards.device)
    dense[group, slot] = rewards[order]
    filled[group, slot] = True

    size = counts.to(rewards.dtype)
    mean = dense.sum(1) / size
    dev = torch.where(filled, dense - mean[:, None], 0.0)
    std = ((dev * dev).sum(1) / (size - 1).clamp_min(1)).sqrt()
    single = counts == 1
    mean = torch.where(single, 0.0, mean)[inv]
    if estimator == "grpo":
        std = torch.where(single, 1.0, std)[inv]
        return (rewards - mean) / (std + eps)
    if estimator == "drgrpo":
        return rewards - mean
    loo_scale = torch.where(single, 1.0, size / (size - 1).clamp_min(1))[inv]
    return (rewards - mean) * loo_scale


def advantage_metrics(advantages: torch.Tensor, dp_group=None) -> dict[str, float]:
    """adv/{mean,abs_mean,max,min} of the sequence advantages Â [N] of every rank of `dp_group` (None: this
    process only), verl's critic/advantages/*: abs_mean 0 means no learning signal. {} when N is 0 everywhere."""
    a = advantages.detach().double().flatten()
    count = torch.tensor(float(a.numel()), dtype=torch.float64, device=a.device)
    sums = torch.stack([a.sum(), a.abs().sum(), count])
    # on the advantages' device: NCCL reduces device tensors only
    extremes = torch.full((2,), float("-inf"), dtype=torch.float64, device=a.device)
    if a.numel():
        extremes = torch.stack([a.max(), -a.min()])
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(sums, group=dp_group)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=dp_group)
    total, abs_total, n = sums.tolist()
    if n == 0:
        return {}
    return {"adv/mean": total / n, "adv/abs_mean": abs_total / n, "adv/max": float(extremes[0]),
            "adv/min": -float(extremes[1])}
