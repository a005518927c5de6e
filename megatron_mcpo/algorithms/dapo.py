"""DAPO's two batch-level pieces as pure functions (docs/mcpo.md §2.3; DAPO arXiv 2503.14476, verl recipe).

* `dynamic_sampling_filter`: which prompt groups to keep. The trainer's generate-until-full loop
  (`max_num_gen_batches`) calls it on every generation batch; `dynamic_sampling_status`,
  `usable_groups` and `replica_share` are that loop's bookkeeping (groups counted over all data-parallel
  replicas, as verl's single controller does).
* `overlong_penalty`: verl `DAPORewardManager`'s soft length penalty, added to the verifier score by the
  trainer, which knows the response lengths.
"""
from __future__ import annotations

import torch

from megatron_mcpo.algorithms._checks import check_choice, check_vector

FILTER_METRICS = ("acc", "reward")


def dynamic_sampling_filter(
    values: torch.Tensor, group_ids: torch.Tensor, metric: str = "acc"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Keep mask (N,) bool over rollouts: a rollout is kept iff its whole prompt group is kept.

    values (N,) is the per-rollout accuracy (metric='acc') or reward (metric='reward'); group_ids (N,).
      acc:    keep a group unless its accuracies are all 0 or all 1  (DAPO: 0 < #correct < G)
      reward: keep a group unless its rewards are all equal
    A single-rollout group is all-equal and is dropped by both rules.
    Metrics: num_groups, num_kept_groups, frac_groups_all_correct, frac_groups_all_wrong (the last two
    count groups whose values are all 1 / all 0).
    """
    check_vector("values", values, kind="float")
    check_vector("group_ids", group_ids, values.numel(), kind="int")
    check_choice("metric", metric, FILTER_METRICS)
    if values.numel() == 0:
        raise ValueError("dynamic_sampling_filter: empty batch")
    _, inv = torch.unique(group_ids, return_inverse=True)
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


ON_EXHAUSTED = ("error", "continue")


def dynamic_sampling_status(kept_groups: int, target_groups: int, rounds: int, max_rounds: int,
                            on_exhausted: str = "error") -> str:
    """What the generate-until-full loop does after `rounds` generation rounds kept `kept_groups`
    mixed-outcome prompt groups in total (counted over all data-parallel replicas), needing `target_groups`:

      "enough"    kept_groups >= target_groups: train on the first target_groups
      "continue"  fewer, and rounds < max_rounds: generate another round
      "exhausted" fewer after max_rounds rounds, on_exhausted="continue": train on what was kept
    and raises RuntimeError when exhausted with on_exhausted="error" (verl's DAPO recipe stops there).
    """
    check_choice("on_exhausted", on_exhausted, ON_EXHAUSTED)
    if max_rounds < 1 or rounds < 1:
        raise ValueError(f"rounds ({rounds}) and max_rounds ({max_rounds}) must be >= 1")
    if kept_groups >= target_groups:
        return "enough"
    if rounds < max_rounds:
        return "continue"
    if on_exhausted == "error":
        raise RuntimeError(
            f"dynamic sampling kept {kept_groups} of the {target_groups} prompt groups needed after {rounds} "
            f"generation rounds (algorithm.max_num_gen_batches): the data may be too easy or too hard. Raise "
            f"max_num_gen_batches or gen_batch_prompts, or set dynamic_sampling_on_exhausted=continue")
    return "exhausted"


def usable_groups(kept_groups: int, target_groups: int, mini_batch_prompts: int) -> int:
    """Prompt groups to train on: at most target_groups, in whole mini-batches (each is one optimizer step
    and one MCPO pool). 0 when not even one mini-batch was kept."""
    if mini_batch_prompts < 1:
        raise ValueError(f"mini_batch_prompts must be >= 1, got {mini_batch_prompts}")
    return min(kept_groups, target_groups) // mini_batch_prompts * mini_batch_prompts


def replica_share(groups: list, num_groups: int, dp_rank: int, dp_size: int) -> list:
    """Replica dp_rank's contiguous share of the first num_groups entries of the global, identically
    ordered list `groups` (num_groups divisible by dp_size): each replica trains on num_groups/dp_size."""
    if num_groups % dp_size or num_groups > len(groups):
        raise ValueError(f"{num_groups} groups cannot be split over {dp_size} replicas from {len(groups)} kept")
    share = num_groups // dp_size
    return groups[dp_rank * share : (dp_rank + 1) * share]
