"""Rollouts -> the training batch: right-padded tokens, response masks, (shaped) rewards, advantages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from megatron_mcpo.algorithms.advantages import group_advantages
from megatron_mcpo.algorithms.dapo import overlong_penalty
from megatron_mcpo.domains import domain_id


@dataclass
class Rollout:
    prompt_uid: int  # unique across ranks and generation batches
    domain: str
    prompt_ids: list[int]
    response_ids: list[int]
    sample_logprobs: list[float]  # the rollout engine's log-prob of each response token
    finish_reason: str
    score: float = 0.0
    acc: float = 0.0


def build_train_batch(
    rollouts: list[Rollout],
    *,
    adv_estimator: str,
    adv_eps: float,
    overlong: Optional[tuple[int, int, float]] = None,
    scatter_seed: Optional[int] = None,
    pad_multiple: int = 8,
    device: Union[str, torch.device] = "cpu",
) -> dict:
    """Tensors aligned with `tokens` [n, s] (s = longest sequence rounded up to pad_multiple):
    response_mask [n, s], sample_logprobs [n, s] (0 off the response), rewards [n] (overlong-shaped when
    `overlong` = (max_response_length, buffer_len, penalty_factor)), group_ids [n] (the rollouts' prompt_uid:
    rollouts of one prompt form a group), domain_ids, advantages [n].
    Rows keep the rollouts' order (whole prompt groups) unless `scatter_seed` permutes them. Built on the
    host, returned on `device` (the run's device: the losses, pool and collectives use them there)."""
    scores = torch.tensor([r.score for r in rollouts], dtype=torch.float32)
    if overlong is not None:
        lengths = torch.tensor([len(r.response_ids) for r in rollouts])
        scores, _ = overlong_penalty(scores, lengths, *overlong)
    uids = torch.tensor([r.prompt_uid for r in rollouts])
    seq_len = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    seq_len = -(-seq_len // pad_multiple) * pad_multiple
    tokens = torch.zeros(len(rollouts), seq_len, dtype=torch.long)
    mask = torch.zeros(len(rollouts), seq_len, dtype=torch.bool)
    sample_lp = torch.zeros(len(rollouts), seq_len)
    for i, r in enumerate(rollouts):
        start, end = len(r.prompt_ids), len(r.prompt_ids) + len(r.response_ids)
        tokens[i, :end] = torch.tensor(r.prompt_ids + r.response_ids)
        mask[i, start:end] = True
        sample_lp[i, start:end] = torch.tensor(r.sample_logprobs, dtype=torch.float32)
    batch = {
        "tokens": tokens, "response_mask": mask, "sample_logprobs": sample_lp, "rewards": scores,
        "group_ids": uids, "domain_ids": torch.tensor([domain_id(r.domain) for r in rollouts]),
        "advantages": group_advantages(scores, uids, adv_estimator, adv_eps),
    }
    if scatter_seed is not None:  # a prompt's rollouts spread over the mini-batches (verl's balancing order)
        perm = torch.randperm(len(rollouts), generator=torch.Generator().manual_seed(scatter_seed))
        batch = {k: v[perm] for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}
