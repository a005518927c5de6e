"""Verifiable rewards for the five MCPO domains (paper, Appendix A.1.4), with a real code sandbox.

Single item, verl's convention (always the dict form):
    compute_score(data_source, solution_str, ground_truth, extra_info=None)
        -> {"score": float, "acc": bool, "format_error": bool, "domain": str, "pred": str | None,
            "details": dict}

Batches, as the trainer calls them (items in, results out in the same order; math checks and code
runs go to worker processes and sandbox slots, keeping every core busy):
    results = score_batch([(data_source, solution_str, ground_truth, extra_info), ...], num_workers=0)
    metrics = reward_metrics(results)   # reward/{domain|all}/{count,score,acc,format_error_rate}
or with an explicitly configured, closable scorer:
    with RewardScorer(num_workers=8, sandbox_limits=SandboxLimits(cpu_time_s=5, memory_mb=1024),
                      math_timeout_s=5, correct_reward=1.0, incorrect_reward=0.0) as scorer:
        results = scorer.score_batch(items)

Domains (see each module): math (last \\boxed{} checked with math-verify), code (program run against
stdin/stdout, function-call or assert tests in the sandbox), science (<answer>X</answer>, A-D),
tooluse (Action/Action Input or JSON tool call vs the reference call), safety (`Better response: 0|1`).
Routing: `data_source` is matched case-insensitively against the registry (the domain names are always
accepted, plus common dataset names), then its prefix before '/' or ':', then `extra_info["domain"]`.
Extend it with `REGISTRY.register(domain, fn, data_sources)` / `REGISTRY.add_data_sources(...)`.
Rewards are binary; length shaping (DAPO's overlong penalty) belongs to the trainer.
"""
from .registry import DOMAINS, REGISTRY, Registry, default_registry
from .sandbox import RunResult, Sandbox, SandboxLimits, SandboxUnavailable
from .scorer import RewardScorer, compute_score, default_scorer, reward_metrics, score_batch

__all__ = ["DOMAINS", "REGISTRY", "Registry", "default_registry", "RunResult", "Sandbox", "SandboxLimits",
           "SandboxUnavailable", "RewardScorer", "compute_score", "default_scorer", "reward_metrics", "score_batch"]
