"""Code reward: program extraction, test shapes, comparison, and scoring through the sandbox."""
import json

import pytest

from megatron_mcpo.rewards.code import extract_program, parse_tests, same_stdout, same_value

STDIO = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
TWO_SUM = {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], "outputs": [[0, 1], [1, 2]]}
TWO_SUM_PROGRAM = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                   "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                   "                return [seen[target - x], i]\n            seen[x] = i\n")


@pytest.mark.parametrize("text, expected", [
    ("```python\nprint(1)\n```", "print(1)"),
    ("```py\nx = 1\n```\ntext\n```python\nprint(2)\n```", "print(2)"),
    ("```\nprint(3)\n```", "print(3)"),
    ("```cpp\nint main(){}\n```", None),
    ("```python\nprint(1)\n```\n```cpp\nint main(){}\n```", "print(1)"),
    ("<think>plan</think>\nprint(4)", "print(4)"),
    ("```python\nprint(5)", None),  # truncated response
    ("", None),
    ("```python\n\n```", None),
])
def test_extract_program(text, expected):
    assert extract_program(text) == expected


def test_parse_tests_shapes():
    spec = parse_tests(json.dumps(STDIO))
    assert spec.mode == "stdio" and spec.tests == [{"stdin": "1 2\n"}, {"stdin": "3 4\n"}]
    assert spec.expected == ["3\n", "7\n"]
    lines = parse_tests({"inputs": [["1", "2"]], "outputs": [["3"]]})
    assert lines.tests == [{"stdin": "1\n2"}] and lines.expected == ["3"]
    call = parse_tests(TWO_SUM)
    assert call.mode == "call" and call.fn_name == "twoSum" and call.tests[0] == {"args": [[2, 7, 11, 15], 9]}
    assert parse_tests({"fn_name": "f", "inputs": [5], "outputs": [6]}).tests == [{"args": [5]}]
    mbpp = parse_tests({"assert": ["assert f(1) == 2", "assert f(2) == 3"]})
    assert mbpp.mode == "assert" and mbpp.tests == [{"code": "assert f(1) == 2\nassert f(2) == 3"}]
    assert parse_tests({"assert": "def check(c): pass", "entry_point": "f"}).entry_point == "f"


@pytest.mark.parametrize("ground_truth, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a dict"),
    ({"inputs": ["1"]}, "needs list 'inputs' and 'outputs'"),
    ({"inputs": ["1", "2"], "outputs": ["1"]}, "2 inputs and 1 outputs"),
    ({"inputs": [], "outputs": []}, "0 inputs"),
    ({"assert": ""}, "non-empty test code"),
    ({"inputs": [1], "outputs": ["1"]}, "must be strings"),
])
def test_parse_tests_errors(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        parse_tests(ground_truth)


def test_comparisons():
    assert same_stdout("1 2\n3\n\n", "1 2\n3")
    assert same_stdout("  1   2 \r\n", "1 2")
    assert not same_stdout("1 2", "12")
    assert same_value([1, 2.0000000001], [1, 2])
    assert not same_value([1, 2], [2, 1])
    assert not same_value(True, 1) and same_value({"a": [1]}, {"a": [1.0]})


@pytest.mark.parametrize("program, ground_truth, acc, status", [
    ("a, b = map(int, input().split())\nprint(a + b)", STDIO, True, "ok"),
    ("import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())), end='   \\n\\n')", STDIO, True, "ok"),
    ("print(3)", STDIO, False, "wrong_answer"),
    ("def main(:\n    pass", STDIO, False, "compile_error"),
    ("raise ValueError('boom')", STDIO, False, "runtime_error"),
    (TWO_SUM_PROGRAM, TWO_SUM, True, "ok"),
    ("def twoSum(nums, target):\n    return (0, 1)", TWO_SUM, False, "wrong_answer"),
    ("class Solution:\n    pass", TWO_SUM, False, "runtime_error"),
    ("def f(x):\n    return {x}", {"fn_name": "f", "inputs": [[1]], "outputs": [[[1]]]}, True, "ok"),
    ("def add(a, b):\n    return a + b", {"assert": "assert add(1, 2) == 3\nassert add(0, 0) == 0"}, True, "ok"),
    ("def add(a, b):\n    return a * b", {"assert": "assert add(1, 2) == 3"}, False, "runtime_error"),
    ("def add(a, b):\n    return a + b", {"assert": "def check(c):\n    assert c(2, 2) == 4", "entry_point": "add"},
     True, "ok"),
])
def test_scoring(scorer, program, ground_truth, acc, status):
    result = scorer.score("code", f"```python\n{program}\n```", ground_truth)
    assert result["acc"] is acc and result["details"]["status"] == status, result
    assert result["score"] == float(acc)
    assert result["format_error"] is (status == "compile_error")


def test_no_code_is_a_format_error(scorer):
    result = scorer.score("code", "I cannot solve this.\n```text\nsorry\n```", STDIO)
    assert result["format_error"] is True and result["score"] == 0.0
    assert result["details"] == {"status": "no_code", "passed": 0, "total": 2}


def test_stops_at_the_first_failing_test(scorer):
    gt = {"inputs": ["1", "2", "3"], "outputs": ["1", "0", "3"]}
    result = scorer.score("code", "```python\nprint(input())\n```", gt)
    assert result["details"]["passed"] == 1 and result["acc"] is False
    runs = scorer.sandbox.run("print(input())", [{"stdin": "1"}, {"stdin": "2"}, {"stdin": "3"}],
                              judge=lambda i, run: i < 1)
    assert [r.stdout for r in runs] == ["1\n", "2\n"]
