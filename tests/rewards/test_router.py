"""Routing, registry extension, batch scoring, reward values and per-domain metrics."""
import pytest

from megatron_mcpo.rewards import DOMAINS, Registry, RewardScorer, default_registry, reward_metrics

BATCH = [
    ("math", "\\boxed{\\frac{1}{2}}", "0.5"),
    ("HuggingFaceH4/MATH-500", "no box", "3"),
    ("code", "```python\nprint(int(input()) * 2)\n```", {"inputs": ["2"], "outputs": ["4"]}),
    ("mbpp", "```python\ndef f(x):\n    return x\n```", {"assert": ["assert f(1) == 2"]}, {"split": "test"}),
    ("science", "<answer>B</answer>", "B"),
    ("tooluse", "Action: f\nAction Input: {}", {"name": "f", "arguments": {}}),
    ("safety", "Better response: 0", 1),
    ("BeaverTails", "nothing", 1),
]


def test_domain_names_and_dataset_names_route():
    registry = default_registry()
    for domain in DOMAINS:
        assert registry.domain_of(domain) == domain
    assert registry.domain_of("openai/gsm8k") == "math"
    assert registry.domain_of("LiveCodeBench") == "code"
    assert registry.domain_of("math/aime24") == "math"
    assert registry.domain_of("code:my_contest") == "code"
    assert registry.domain_of("my_set", {"domain": "science"}) == "science"
    with pytest.raises(ValueError, match="no reward scorer for data_source 'unknown_set'"):
        registry.domain_of("unknown_set")


def test_batch_scores_in_order_with_metrics(scorer):
    results = scorer.score_batch(BATCH)
    assert [r["domain"] for r in results] == ["math", "math", "code", "code", "science", "tooluse",
                                              "safety", "safety"]
    assert [r["score"] for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert [r["format_error"] for r in results] == [False, True, False, False, False, False, False, True]
    for r in results:
        assert set(r) == {"score", "acc", "format_error", "domain", "pred", "details"}
    m = reward_metrics(results)
    assert m["reward/math/count"] == 2 and m["reward/math/acc"] == 0.5 and m["reward/math/format_error_rate"] == 0.5
    assert m["reward/safety/acc"] == 0.0 and m["reward/safety/format_error_rate"] == 0.5
    assert m["reward/all/count"] == 8 and m["reward/all/score"] == 4 / 8
    assert reward_metrics([]) == {}
    # groups of 2 (one prompt's samples): math mixed, code mixed, science + tooluse both right, safety both wrong
    g = reward_metrics(results, group_size=2)
    assert g["reward/all/solve_all"] == 1 / 4 and g["reward/all/solve_none"] == 1 / 4
    assert g["reward/safety/solve_none"] == 1.0 and g["reward/math/solve_all"] == 0.0 and "reward/science/solve_all" in g
    assert {k: v for k, v in g.items() if "solve" not in k} == m
    with pytest.raises(ValueError, match="8 results are not groups of 3"):
        reward_metrics(results, group_size=3)


def test_bad_items_name_their_index(scorer):
    with pytest.raises(ValueError, match=r"reward item 1 \(data_source 'science'\).*option letter"):
        scorer.score_batch([BATCH[4], ("science", "<answer>B</answer>", "Q")])
    with pytest.raises(TypeError, match="reward item 0 must be"):
        scorer.score_batch([("math", "x")])
    with pytest.raises(TypeError, match="solution_str must be a string"):
        scorer.score("math", None, "1")


def test_reward_values_are_configurable(limits):
    with RewardScorer(num_workers=1, sandbox_limits=limits, correct_reward=1.0, incorrect_reward=-1.0) as s:
        assert [r["score"] for r in s.score_batch([BATCH[4], ("science", "<answer>A</answer>", "B")])] == [1.0, -1.0]


def test_registry_is_extensible():
    registry = Registry()
    registry.register("echo", lambda sol, gt, extra, ctx: float(sol == gt), data_sources=["my/echo_set"])
    registry.register("judge", lambda sol, gt, extra, ctx: {"score": 0.7, "acc": True, "details": {"why": extra}})
    registry.add_data_sources("judge", "Judge_Set")
    with RewardScorer(num_workers=1, registry=registry) as s:
        assert s.score("my/echo_set", "x", "x")["score"] == 1.0
        assert s.score("echo", "x", "y") == {"score": 0.0, "acc": False, "format_error": False, "domain": "echo",
                                             "pred": None, "details": {}}
        r = s.score("judge_set", "anything", None, {"k": 1})
        assert (r["score"], r["acc"], r["details"]) == (0.7, True, {"why": {"k": 1}})
    with pytest.raises(KeyError, match="unknown domain"):
        registry.add_data_sources("nope", "x")
    with pytest.raises(TypeError, match="not callable"):
        registry.register("bad", "not a function")


def test_module_level_verl_entry_points():
    from megatron_mcpo.rewards import compute_score, score_batch

    result = compute_score("science", "<answer>(b)</answer>", "B", {"index": 3})
    assert result["score"] == 1.0 and result["acc"] is True and result["format_error"] is False
    assert [r["score"] for r in score_batch([BATCH[4], BATCH[6]], num_workers=1)] == [1.0, 0.0]
