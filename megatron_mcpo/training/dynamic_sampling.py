"""DAPO's generate-until-full loop over data-parallel replicas (verl recipe/dapo, single-controller semantics).

Each round every replica generates its share of `gen_batch_prompts` prompts and filters its groups
(`algorithms.dapo.dynamic_sampling_filter`); the kept groups of all replicas are gathered in one global
order (round, then replica), so the count that stops the loop is the global one, as in verl, where one
controller sees the whole batch. The first train_batch_prompts groups (whole mini-batches only, when the
rounds ran out and `on_exhausted=continue`) are then shared out evenly, contiguously by replica.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.dapo import dynamic_sampling_filter, dynamic_sampling_status, replica_share, usable_groups


@dataclass
class DynamicSamplingResult:
    rollouts: list  # this replica's share of the kept groups, n rollouts per group
    results: list  # the reward results of every rollout this replica generated (for the reward metrics)
    groups_kept: int  # groups trained on, over all replicas
    groups_seen: int  # groups that passed the filter, over all replicas and rounds
    rounds: int
    exhausted: bool  # the rounds ran out before train_batch_prompts groups were kept


def dynamic_sampling_rounds(
    generate_round: Callable[[], tuple[list, list]],
    filter_values: Callable[[list], torch.Tensor],
    *,
    n: int,
    train_batch_prompts: int,
    mini_batch_prompts: int,
    max_rounds: int,
    metric: str,
    on_exhausted: str,
    dp_group,
    dp_rank: int,
    dp_size: int,
) -> DynamicSamplingResult:
    """Run generation rounds until train_batch_prompts groups pass the filter over all replicas.

    generate_round() -> (this replica's rollouts of one round, grouped n per prompt, each with a
    `prompt_uid`; their reward results). filter_values(rollouts) -> (N,) the values the filter reads.
    Collective over dp_group (gloo/NCCL object gather; None for one process). Raises RuntimeError when
    the rounds run out with on_exhausted="error", or when not one mini-batch was kept.
    """
    pool: list = []
    results: list = []
    status, rounds = "continue", 0
    while status == "continue":
        rounds += 1
        new, res = generate_round()
        results += res
        keep, _ = dynamic_sampling_filter(filter_values(new), torch.tensor([r.prompt_uid for r in new]), metric)
        kept = [r for r, k in zip(new, keep.tolist()) if k]
        if dp_size > 1:
            gathered = [None] * dp_size
            dist.all_gather_object(gathered, kept, group=dp_group)
            kept = [r for part in gathered for r in part]
        pool += kept
        status = dynamic_sampling_status(len(pool) // n, train_batch_prompts, rounds, max_rounds, on_exhausted)
    groups_kept = usable_groups(len(pool) // n, train_batch_prompts, mini_batch_prompts)
    if groups_kept == 0:
        raise RuntimeError(f"dynamic sampling kept {len(pool) // n} prompt groups in {rounds} rounds, not one "
                           f"mini-batch of {mini_batch_prompts}: raise algorithm.max_num_gen_batches")
    groups = [pool[i : i + n] for i in range(0, len(pool), n)]
    mine = [r for group in replica_share(groups, groups_kept, dp_rank, dp_size) for r in group]
    return DynamicSamplingResult(mine, results, groups_kept, len(pool) // n, rounds, status == "exhausted")
