"""pass@n over grouped eval results (hand-counted)."""
import pytest

from megatron_mcpo.evaluation import pass_at_n


def _r(domain, acc):
    return {"domain": domain, "acc": float(acc)}


def test_pass_at_n_counts_prompts_with_any_correct_sample():
    results = [_r("math", 0), _r("math", 1),   # solved
               _r("math", 0), _r("math", 0),   # not solved
               _r("code", 1), _r("code", 1)]   # solved
    assert pass_at_n(results, 2) == {"eval/math/pass@2": 0.5, "eval/code/pass@2": 1.0, "eval/all/pass@2": 2 / 3}


def test_pass_at_n_rejects_partial_groups():
    with pytest.raises(ValueError, match="not whole groups of n=3"):
        pass_at_n([_r("math", 1)] * 4, 3)
