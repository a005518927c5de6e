"""A scorer error while training costs one sample's reward, counted, not the run; ground truths are
checked per domain by the domain scorers' own rules before a run starts."""
import pytest

from megatron_mcpo.rewards import RewardScorer, reward_metrics
from megatron_mcpo.rewards.registry import default_registry
from megatron_mcpo.rewards.scorer import check_ground_truth


def test_scorer_error_scores_zero_and_is_counted():
    registry = default_registry()

    def broken(solution_str, ground_truth, extra_info, ctx):
        raise KeyError("a bug in a custom scorer")

    registry.register("custom", broken)
    items = [("science", "<answer>B</answer>", "B"), ("custom", "x", "y"), ("science", "<answer>A</answer>", "B")]
    with RewardScorer(num_workers=1, registry=registry, incorrect_reward=-1.0) as scorer:
        results = scorer.score_batch(items, errors="zero")
        assert [r["score"] for r in results] == [1.0, -1.0, -1.0]
        assert "error" not in results[0] and "KeyError" in results[1]["error"] and "'custom'" in results[1]["error"]
        assert results[1]["domain"] == "custom"
        m = reward_metrics(results)
        assert m["reward/scorer_errors"] == 1.0 and m["reward/custom/count"] == 1.0
        with pytest.raises(RuntimeError, match=r"reward item 1 \(data_source 'custom'\): KeyError"):
            scorer.score_batch(items)


@pytest.mark.parametrize("domain, good, bad, message", [
    ("math", "42", None, "math ground_truth must be a non-empty string or number"),
    ("math", 3.5, "  ", "math ground_truth must be"),
    ("code", {"inputs": ["1"], "outputs": ["1"]}, {"inputs": ["1"]}, "code ground_truth needs list 'inputs' and 'outputs'"),
    ("science", "C", "E", "science ground_truth must be an option letter"),
    ("safety", 1, "maybe", "safety ground_truth must be 0 or 1"),
    ("tooluse", {"name": "search", "arguments": {"q": "x"}}, 17, "tooluse ground_truth must be a tool call"),
])
def test_ground_truth_checked_per_domain(domain, good, bad, message):
    check_ground_truth(domain, good)
    with pytest.raises(ValueError, match=message):
        check_ground_truth(domain, bad)


def test_busy_seconds_accumulate_over_batches_and_failures():
    """The trainer charges the scorer's wall time to time/reward: it grows with every batch, a raising one too."""
    import time

    registry = default_registry()
    registry.register("slow", lambda solution_str, ground_truth, extra_info, ctx: time.sleep(0.2) or {"acc": True})
    registry.register("bad", lambda solution_str, ground_truth, extra_info, ctx: 1 / 0)
    with RewardScorer(num_workers=1, registry=registry) as scorer:
        assert scorer.busy_seconds == 0.0
        scorer.score_batch([("slow", "x", "y")])
        first = scorer.busy_seconds
        assert first >= 0.2
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            scorer.score_batch([("slow", "x", "y"), ("bad", "x", "y")])
        assert scorer.busy_seconds - first >= 0.2
