"""Held-out evaluation: the rollout engine (current weights) answers the eval prompts, the training
verifiers score the answers, and the results become per-domain metrics (verl's `val/` numbers).

Every data-parallel replica's engine takes its share of the prompts (`records[dp_rank::dp_size]`); the
results are gathered over the data-parallel group, so every rank returns the same metrics. Ranks without
an engine (tp > 0 or pp > 0) contribute nothing and still join the gather.
"""
from __future__ import annotations

from typing import Optional, Sequence

from megatron_mcpo.config import SamplingSpec
from megatron_mcpo.rollout.collect import gather_lists, generate_and_score, length_metrics


def pass_at_n(results: Sequence[dict], n: int, prefix: str = "eval") -> dict:
    """{prefix}/{domain|all}/pass@n: the fraction of prompts with at least one of their n samples correct.
    `results` hold the n samples of each prompt consecutively, each with "domain" and "acc"."""
    if len(results) % n:
        raise ValueError(f"eval: {len(results)} results are not whole groups of n={n}")
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(results), n):
        group = results[i : i + n]
        solved = any(r["acc"] for r in group)
        for key in (group[0]["domain"], "all"):
            hits.setdefault(key, []).append(solved)
    return {f"{prefix}/{d}/pass@{n}": sum(h) / len(h) for d, h in hits.items()}


def evaluate(engine, scorer, records: list[dict], sampling: SamplingSpec, dp_group, dp_rank: int, dp_size: int,
             seed: Optional[int] = None, prefix: str = "eval") -> dict:
    """Generate `sampling.n` answers per record on this replica's engine (None on ranks without one; seeded
    with `seed`), score them, gather over `dp_group`; returns {prefix}/{domain|all}/{count,score,acc,
    format_error_rate}, pass@n when n > 1, and the mean response length / truncation rate."""
    from megatron_mcpo.rewards import reward_metrics

    local: list[dict] = []
    mine = records[dp_rank::dp_size]
    if engine is not None and mine:
        for group in generate_and_score(engine, scorer, mine, sampling, seed):
            local += [{"domain": a.result["domain"], "score": float(a.result["score"]), "acc": float(a.result["acc"]),
                       "format_error": float(a.result["format_error"]), "length": len(a.sample.token_ids),
                       "truncated": a.sample.finish_reason == "length"} for a in group]
    results = gather_lists(local, dp_group, dp_size)
    if not results:
        return {}
    metrics = reward_metrics(results, prefix=prefix)
    if sampling.n > 1:
        metrics.update(pass_at_n(results, sampling.n, prefix))
    metrics.update(length_metrics([r["length"] for r in results], [r["truncated"] for r in results], prefix))
    return metrics
