"""DAPO's two batch-level pieces as pure functions (spec §2.3; DAPO arXiv 2503.14476, verl recipe).

* `dynamic_sampling_filter`: which prompt groups to keep. The trainer's generate-until-full loop
  (`max_num_gen_batches`) calls it on every generation batch.
* `overlong_penalty`: verl `DAPORewardManager`'s soft length penalty, added to the verifier score by the
  trainer, which knows the response lengths.
"""
from __future__ import annotations

import torch

from megatron_mcpo.algorithms._checks import check_choice, check_vector

FILTER_METRICS = ("acc", "reward")


def dynamic_sampling_filter(
    values: torch.Tensor, prompt_ids: torch.Tensor, metric: str = "acc"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep mask (N,) bool over rollouts: a rollout is kept iff its whole prompt group is kept.

    values (N,) is the per-rollout accuracy (metric='acc') or reward (metric='reward'); prompt_ids (N,).
      acc:    keep a group unless its accuracies are all 0 or all 1  (DAPO: 0 < #correct < G)
      reward: keep a group unless its rewards are all equal
    A single-rollout group is all-equal and is dropped by both rules.
    Metrics: num_groups, num_kept_groups, frac_groups_all_correct, frac_groups_all_wrong (the last two
    count groups whose values are all 1 / all 0).
    """
    check_vector("values", values, kind="float")
    check_vector("prompt_ids", prompt_ids, values.numel(), kind="int")
    check_choice("metric", metric, FILTER_METRICS)
    if values.numel() == 0:
        raise ValueError("dynamic_sampling_filter: empty batch")
    _, inv = torch.unique(prompt_ids, return_inverse=True)
    groups = int(inv.max()) + 1
    vmin = values.new_full((groups,), float("inf")).scatter_reduce(0, inv, values, "amin")
    vmax = values.new_full((groups,), float("-inf")).scatter_reduce(0, inv, values, "amax")
    all_wrong = (vmin == 0) & (vmax == 0)
    all_correct = (vmin == 1) & (vmax == 1)
    keep_group = ~(all_wrong | all_correct) if metric == "acc" else vmax > vmin
    metrics = {
        "num_groups": groups,
        "num_kept_groups": int(keep_group.sum()),
        "frac_groups_all_correct": float(all_correct.sum()) / groups,
        "frac_groups_all_wrong": float(all_wrong.sum()) / groups,
    }
    return keep_group[inv], metrics


def overlong_penalty(
    scores: torch.Tensor,
    response_lengths: torch.Tensor,
    max_response_length: int,
    buffer_len: int,
    penalty_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft overlong punishment (verl DAPORewardManager). Returns (shaped scores, penalty), both (N,).

      penalty = min(−(L − (L_max − L_buf)) / L_buf · factor, 0),   shaped = score + penalty
    i.e. 0 up to L_max − L_buf tokens, then linear down to −factor at L = L_max.
    """
    check_vector("scores", scores, kind="float")
    if response_lengths.shape != scores.shape:
        raise ValueError(f"response_lengths has shape {tuple(response_lengths.shape)}, expected {tuple(scores.shape)}")
    if not 1 <= buffer_len <= max_response_length:
        raise ValueError(f"buffer_len must be in [1, max_response_length={max_response_length}], got {buffer_len}")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    exceed = response_lengths.to(scores.dtype) - (max_response_length - buffer_len)
    penalty = (-exceed / buffer_len * penalty_factor).clamp(max=0.0)
    return scores + penalty, penalty
