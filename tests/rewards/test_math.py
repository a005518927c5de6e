"""Math reward: \\boxed{} extraction and math-verify equivalence (run in worker processes)."""
import threading

import pytest

from megatron_mcpo.rewards.math import extract_boxed
from megatron_mcpo.rewards.workers import WorkerError, WorkerPool, WorkerTimeout


@pytest.mark.parametrize("text, expected", [
    ("The answer is \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and later \\fbox{x+1}", "x+1"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{ 12 }", "12"),
    ("no box here: 42", None),
    ("\\boxed{}", None),
    ("\\boxed{unbalanced", None),
    ("\\boxed", None),
    ("", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("answer, gold, equal", [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac12", "1/2", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("[1,2)", "[1, 2)", True),
    ("(1,2]", "[1,2)", False),
    ("\\{3,1,2\\}", "\\{1,2,3\\}", True),
    ("5\\text{ cm}", "5", True),
    ("10\\%", "10", True),
    ("x = 3", "3", True),
    ("2^{10}", "1024", True),
    ("90^\\circ", "90", True),
    ("\\infty", "\\infty", True),
    ("3.14", "\\pi", False),
    ("0.333", "\\frac{1}{3}", False),
    ("-2", "2", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\$5", "5", True),
    ("\\text{(B)}", "B", True),
])
def test_equivalence(scorer, answer, gold, equal):
    result = scorer.score("math", f"Reasoning... so \\boxed{{{answer}}}", gold)
    assert result["acc"] is equal, result
    assert result["score"] == float(equal) and result["format_error"] is False


def test_gold_given_boxed_or_numeric(scorer):
    assert scorer.score("math", "\\boxed{7}", "\\boxed{7}")["acc"] is True
    assert scorer.score("math", "\\boxed{7}", 7)["acc"] is True
    assert scorer.score("math", "\\boxed{7.5}", 7.5)["acc"] is True


def test_missing_box_is_a_format_error(scorer):
    result = scorer.score("math", "The answer is 7.", "7")
    assert result == {"score": 0.0, "acc": False, "format_error": True, "domain": "math", "pred": None,
                      "details": {"reason": "no_box"}}


def test_bad_gold_is_a_clear_error(scorer):
    with pytest.raises(ValueError, match="math ground_truth"):
        scorer.score("math", "\\boxed{1}", "  ")


def test_check_off_the_main_thread(scorer):
    """math-verify's SIGALRM time-outs only work in a main thread: the worker process provides one."""
    out = []
    thread = threading.Thread(target=lambda: out.append(scorer.score("math", "\\boxed{\\frac{2}{4}}", "1/2")))
    thread.start()
    thread.join(timeout=60)
    assert out and out[0]["acc"] is True


def test_worker_pool_kills_an_overrunning_call_and_recovers():
    pool = WorkerPool(num_workers=1)
    try:
        with pytest.raises(WorkerTimeout):
            pool.call("time", "sleep", (30,), timeout_s=0.5)
        assert pool.call("operator", "add", (2, 3), timeout_s=30) == 5
        with pytest.raises(WorkerError, match="ZeroDivisionError"):
            pool.call("operator", "truediv", (1, 0), timeout_s=30)
        with pytest.raises(WorkerError, match="worker died"):
            pool.call("os", "_exit", (3,), timeout_s=30)
        assert pool.call("operator", "mul", (2, 3), timeout_s=30) == 6
    finally:
        pool.close()
