"""RewardScorer: routes each item to its domain scorer, owns the worker pools, batches, aggregates.

Results are dicts {"score": float, "acc": bool, "format_error": bool, "domain": str, "pred": str|None,
"details": dict}: `score` is `correct_reward` or `incorrect_reward` (binary by default) unless a
custom scorer sets it. Heavy checks run off the caller's thread: math in a WorkerPool (one process per
worker), code in the Sandbox pool; science, tooluse and safety are cheap parsers run inline.
"""
import atexit
import math as _math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from .registry import REGISTRY, Registry
from .sandbox import Sandbox, SandboxLimits
from .workers import WorkerError, WorkerPool, WorkerTimeout

_MATH_MODULE = "megatron_mcpo.rewards.math"


class RewardScorer:
    """Scores (data_source, solution_str, ground_truth, extra_info) items; thread-safe.

    num_workers: math worker processes and sandbox slots (0: one per CPU core).
    sandbox_limits: per-test limits of code runs. math_timeout_s: per parse/comparison time-out.
    correct_reward/incorrect_reward: the binary reward values (e.g. 1/-1 for DAPO-style rewards).
    Pools start on first use; `close()` (or a with-block) stops them. `busy_seconds`: the wall time
    spent in score_batch so far (the trainer charges its share of a step to time/reward).
    """

    def __init__(self, num_workers: int = 0, sandbox_limits: Optional[SandboxLimits] = None,
                 math_timeout_s: float = 5.0, registry: Optional[Registry] = None,
                 correct_reward: float = 1.0, incorrect_reward: float = 0.0):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not math_timeout_s > 0:
            raise ValueError(f"math_timeout_s must be > 0, got {math_timeout_s}")
        self.num_workers = num_workers or os.cpu_count() or 1
        self.sandbox_limits = sandbox_limits or SandboxLimits()
        self.math_timeout_s = math_timeout_s
        self.registry = registry or REGISTRY
        self.correct_reward, self.incorrect_reward = float(correct_reward), float(incorrect_reward)
        self._sandbox: Optional[Sandbox] = None
        self._math_pool: Optional[WorkerPool] = None
        self._threads: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self.busy_seconds = 0.0

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(self.num_workers, self.sandbox_limits)
            return self._sandbox

    @property
    def math_pool(self) -> WorkerPool:
        with self._lock:
            if self._math_pool is None:
                self._math_pool = WorkerPool(self.num_workers, preload=("math_verify", _MATH_MODULE))
            return self._math_pool

    def math_check(self, gold: str, answer: str) -> dict:
        """math.check in a worker process; a time-out or crash counts as not equal."""
        # Three timed steps (two parses and the comparison) plus slack, enforced from outside.
        limit = 3 * _math.ceil(self.math_timeout_s) + 5.0
        try:
            return self.math_pool.call(_MATH_MODULE, "check", (gold, answer, self.math_timeout_s), limit)
        except WorkerTimeout:
            return {"equal": False, "timed_out": True}
        except WorkerError as e:
            return {"equal": False, "error": str(e)}

    def score(self, data_source: str, solution_str: str, ground_truth, extra_info: Optional[dict] = None) -> dict:
        """Score one response (the verl `compute_score` convention, always in dict form)."""
        if not isinstance(solution_str, str):
            raise TypeError(f"solution_str must be a string, got {type(solution_str).__name__}")
        domain = self.registry.domain_of(data_source, extra_info)
        verdict = self.registry.scorer(domain)(solution_str, ground_truth, extra_info, self)
        return self._result(domain, verdict)

    def _result(self, domain: str, verdict) -> dict:
        if isinstance(verdict, (bool, int, float)):
            verdict = {"score": float(verdict), "acc": float(verdict) >= 0.5}
        if not isinstance(verdict, dict) or not ("acc" in verdict or "score" in verdict):
            raise TypeError(f"the {domain!r} scorer returned {verdict!r}: expected a float or a dict with 'acc'")
        acc = bool(verdict["acc"]) if "acc" in verdict else float(verdict["score"]) >= 0.5
        score = float(verdict.get("score", self.correct_reward if acc else self.incorrect_reward))
        return {"score": score, "acc": acc, "format_error": bool(verdict.get("format_error", False)),
                "domain": domain, "pred": verdict.get("pred"), "details": dict(verdict.get("details", {}))}

    def score_batch(self, items: Sequence[tuple], errors: str = "raise") -> list:
        """Score (data_source, solution_str, ground_truth[, extra_info]) items concurrently, in order.

        errors="raise": a scorer error is raised, naming the item. errors="zero" (training): the item
        scores `incorrect_reward` and its result carries "error" (the message), so one bad record or
        scorer bug costs one sample's reward, not the run; `reward_metrics` counts them."""
        if errors not in ("raise", "zero"):
            raise ValueError(f"errors must be 'raise' or 'zero', got {errors!r}")
        tic = time.perf_counter()
        try:
            return self._score_all(items, errors)
        finally:
            self.busy_seconds += time.perf_counter() - tic

    def _score_all(self, items: Sequence[tuple], errors: str) -> list:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(2 * self.num_workers + 2, thread_name_prefix="reward")
        futures = [self._threads.submit(self.score, *_unpack(i, item)) for i, item in enumerate(items)]
        results = []
        for i, future in enumerate(futures):
            try:
                results.append(future.result())
            except Exception as e:
                msg = f"reward item {i} (data_source {items[i][0]!r}): {type(e).__name__}: {e}"
                if errors == "raise":
                    cls = type(e) if isinstance(e, (ValueError, TypeError)) else RuntimeError
                    raise cls(msg) from e
                results.append({"score": self.incorrect_reward, "acc": False, "format_error": False,
                                "domain": self._domain_or_unknown(items[i]), "pred": None, "details": {},
                                "error": msg[:500]})
        return results

    def _domain_or_unknown(self, item) -> str:
        try:
            return self.registry.domain_of(item[0], item[3] if len(item) > 3 else None)
        except Exception:
            return "unknown"

    def close(self):
        with self._lock:
            for resource in (self._sandbox, self._math_pool):
                if resource is not None:
                    resource.close()
            if self._threads is not None:
                self._threads.shutdown(wait=False, cancel_futures=True)
            self._sandbox = self._math_pool = self._threads = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unpack(i: int, item) -> tuple:
    if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
        raise TypeError(f"reward item {i} must be (data_source, solution_str, ground_truth[, extra_info])")
    return tuple(item) if len(item) == 4 else (*item, None)


def reward_metrics(results: Sequence[dict], prefix: str = "reward", group_size: int = 1) -> dict:
    """Per-domain and overall means: {prefix}/{domain|all}/{count,score,acc,format_error_rate}. With
    `group_size` > 1 (`results` in consecutive groups of the samples of one prompt), also the share of
    groups all right and all wrong, {prefix}/{domain|all}/{solve_all,solve_none} (verl's names): only the
    others have an advantage to learn from."""
    by_domain: dict = {}
    for r in results:
        by_domain.setdefault(r["domain"], []).append(r)
    if results:
        by_domain["all"] = list(results)
    metrics = {}
    for domain, rs in by_domain.items():
        n = len(rs)
        metrics[f"{prefix}/{domain}/count"] = float(n)
        metrics[f"{prefix}/{domain}/score"] = sum(r["score"] for r in rs) / n
        metrics[f"{prefix}/{domain}/acc"] = sum(r["acc"] for r in rs) / n
        metrics[f"{prefix}/{domain}/format_error_rate"] = sum(r["format_error"] for r in rs) / n
    if group_size > 1 and results:
        if len(results) % group_size:
            raise ValueError(f"reward_metrics: {len(results)} results are not groups of {group_size}")
        outcomes: dict = {}
        for start in range(0, len(results), group_size):
            group = results[start : start + group_size]
            right = sum(bool(r["acc"]) for r in group)
            for domain in (group[0]["domain"], "all"):
                outcomes.setdefault(domain, []).append((right == group_size, right == 0))
        for domain, os_ in outcomes.items():
            metrics[f"{prefix}/{domain}/solve_all"] = sum(a for a, _ in os_) / len(os_)
            metrics[f"{prefix}/{domain}/solve_none"] = sum(z for _, z in os_) / len(os_)
    if results:
        metrics[f"{prefix}/scorer_errors"] = float(sum("error" in r for r in results))
    return metrics


class _NotScoring:
    """The scorer context for `check_ground_truth`: touching it means the ground truth was accepted."""

    class Used(Exception):
        pass

    def __getattr__(self, name):
        raise self.Used(name)


def check_ground_truth(domain: str, ground_truth, extra_info: Optional[dict] = None,
                       registry: Optional[Registry] = None) -> None:
    """Raise ValueError/TypeError if `domain`'s scorer rejects `ground_truth`, using the scorer's own
    checks: it is called on an empty answer, and stops where it would start real work."""
    fn = (registry or REGISTRY).scorer(domain)
    try:
        fn("", ground_truth, extra_info, _NotScoring())
    except _NotScoring.Used:
        pass


_default: Optional[RewardScorer] = None
_default_lock = threading.Lock()


def default_scorer(num_workers: int = 0) -> RewardScorer:
    """The process-wide scorer behind `compute_score`/`score_batch` (re-made if num_workers changes)."""
    global _default
    with _default_lock:
        wanted = num_workers or os.cpu_count() or 1
        if _default is None or _default.num_workers != wanted:
            if _default is not None:
                _default.close()
            _default = RewardScorer(wanted)
        return _default


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: Optional[dict] = None) -> dict:
    """verl-compatible entry point: score one response with the default scorer."""
    return default_scorer(_default.num_workers if _default else 0).score(data_source, solution_str,
                                                                          ground_truth, extra_info)


def score_batch(items: Sequence[tuple], num_workers: int = 0) -> list:
    """Score many (data_source, solution_str, ground_truth[, extra_info]) items with all cores busy."""
    return default_scorer(num_workers).score_batch(items)


@atexit.register
def _close_default():
    if _default is not None:
        _default.close()
