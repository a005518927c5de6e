"""Generate and score, written once for both callers: the trainer's rollouts and held-out evaluation.

An engine answers `sampling.n` times per record, the reward scorer (rewards/) scores every answer, and
the caller turns the scored samples into training rollouts or evaluation results. Seeds are
reproducible per (run seed, data-parallel replica, offset): a resumed run samples the same answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

from megatron_mcpo.config import SamplingSpec
from megatron_mcpo.data.dataset import score_item
from megatron_mcpo.rollout.engine import RolloutEngine, Sample

EVAL_SEED_OFFSET = 999_999_937  # evaluation's offset: the same answers for the same weights, whenever evaluated


def sampling_seed(rollout_seed: int, dp_rank: int, offset: int) -> int:
    """The engine seed of one generation call: per run seed (rollout.seed), replica and offset (the
    generation batch's prompt-id base in training, EVAL_SEED_OFFSET in evaluation)."""
    return rollout_seed * 1_000_003 + dp_rank * 7919 + offset


@dataclass
class Scored:
    """One answer to a record, with the verifier's result (score, acc, domain, format_error[, error]);
    result is None where the answers were not scored (an engine worker that is not its engine's leader)."""

    record: dict
    sample: Sample
    result: Optional[dict]


def generate(engine: RolloutEngine, records: list[dict], sampling: SamplingSpec, seed: Optional[int]) -> list[list[Scored]]:
    """For each record, its `sampling.n` answers from `engine` (seeded with `seed`), not yet scored."""
    engine.set_sampling_seed(seed)
    groups = engine.generate([rec["prompt"] for rec in records], sampling)
    return [[Scored(rec, s, None) for s in group] for rec, group in zip(records, groups)]


def score_answers(scorer, answers: list[list[Scored]], errors: str = "raise") -> list[list[Scored]]:
    """`answers` with the verifier's results, scored in one batch by `scorer`; `errors` as
    RewardScorer.score_batch ("zero" in training: an item the scorer fails on scores 0 and its result
    carries "error")."""
    flat = [a for group in answers for a in group]
    results = iter(scorer.score_batch([score_item(a.record, a.sample.text) for a in flat], errors=errors))
    return [[Scored(a.record, a.sample, next(results)) for a in group] for group in answers]


def generate_and_score(engine: RolloutEngine, scorer, records: list[dict], sampling: SamplingSpec,
                       seed: Optional[int], errors: str = "raise") -> list[list[Scored]]:
    """`generate`, then `score_answers` unless `scorer` is None (an engine worker that is not its engine's leader)."""
    answers = generate(engine, records, sampling, seed)
    return score_answers(scorer, answers, errors) if scorer is not None else answers


def gather_lists(local: list, group, size: int) -> list:
    """Every rank's `local` list of `group` (`size` ranks), concatenated in rank order, on every rank."""
    parts: list = [None] * size
    dist.all_gather_object(parts, local, group=group)
    return [x for part in parts for x in part]


def length_metrics(lengths: list[int], truncated: list[bool], prefix: str) -> dict:
    """{prefix}/response_length_mean and {prefix}/clip_ratio (the share cut at max_tokens); 0 when empty."""
    n = max(len(lengths), 1)
    return {f"{prefix}/response_length_mean": sum(lengths) / n, f"{prefix}/clip_ratio": sum(truncated) / n}
