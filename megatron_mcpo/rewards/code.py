"""Code reward: run the generated Python program against the problem's tests in the sandbox.

Reward 1 iff every test passes. The program is the last ```python (or untagged) fenced block of the
response, or, without fences, the text after any `</think>`. `ground_truth` (a dict or its JSON
string) takes one of these shapes:
  {"inputs": [str, ...], "outputs": [str, ...]}            stdin -> stdout, whitespace-tolerant
  {"fn_name": "f", "inputs": [[args], ...], "outputs": [v]} call `f(*args)`, or `Solution().f(*args)`
                                                            for a LeetCode-style `class Solution`
  {"assert": "<test code>" | [str, ...], "entry_point"?: "f"}  HumanEval/MBPP: the test code runs after
                                                            the program and must not raise (then
                                                            `check(f)` when `entry_point` is given)
Expected outputs never enter the sandbox: each result is judged here, and the run stops at the first
failing test.
"""
import json
import math as _math
import re
from dataclasses import dataclass
from typing import Any, Optional

from .sandbox import RunResult

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_FORMAT_STATUSES = {"compile_error"}


@dataclass
class CodeTests:
    """Parsed reference tests: `tests` go into the sandbox, `expected` stays outside."""
    mode: str  # "stdio" | "call" | "assert"
    tests: list
    expected: list
    fn_name: Optional[str] = None
    entry_point: Optional[str] = None


def extract_program(text: str) -> Optional[str]:
    """The program in a response (see the module docstring), or None when there is none."""
    if not isinstance(text, str):
        return None
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    if blocks:
        python = [body.strip("\n") for tag, body in blocks if tag in _PYTHON_TAGS]
        return (python[-1] or None) if python else None
    if "```" in text:  # an unterminated fence: a truncated response
        return None
    return text.rsplit("</think>", 1)[-1].strip() or None


def _as_text(value, what: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if not isinstance(value, str):
        raise ValueError(f"code ground_truth {what} must be strings (or lists of lines), got {type(value).__name__}")
    return value


def parse_tests(ground_truth: Any) -> CodeTests:
    """Parse a code ground truth (dict or JSON string) into a CodeTests; ValueError names the problem."""
    if isinstance(ground_truth, (str, bytes)):
        try:
            ground_truth = json.loads(ground_truth)
        except ValueError as e:
            raise ValueError(f"code ground_truth is not valid JSON: {e}") from None
    if not isinstance(ground_truth, dict):
        raise ValueError(f"code ground_truth must be a dict, got {type(ground_truth).__name__}")
    if "assert" in ground_truth:
        code = ground_truth["assert"]
        if isinstance(code, list) and all(isinstance(c, str) for c in code):
            code = "\n".join(code)
        if not isinstance(code, str) or not code.strip():
            raise ValueError("code ground_truth 'assert' must be non-empty test code (a string or list of strings)")
        return CodeTests("assert", [{"code": code}], [None], entry_point=ground_truth.get("entry_point") or None)
    inputs, outputs = ground_truth.get("inputs"), ground_truth.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("code ground_truth needs list 'inputs' and 'outputs' (or an 'assert' key); "
                         f"got keys {sorted(ground_truth)}")
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"code ground_truth has {len(inputs)} inputs and {len(outputs)} outputs")
    fn_name = ground_truth.get("fn_name")
    if fn_name:
        if not isinstance(fn_name, str):
            raise ValueError(f"code ground_truth fn_name must be a string, got {fn_name!r}")
        tests = [{"args": args if isinstance(args, list) else [args]} for args in inputs]
        return CodeTests("call", tests, list(outputs), fn_name=fn_name)
    tests = [{"stdin": _as_text(x, "inputs")} for x in inputs]
    return CodeTests("stdio", tests, [_as_text(y, "outputs") for y in outputs])


def same_stdout(got: str, expected: str) -> bool:
    """Whitespace-tolerant: equal as sequences of whitespace-separated tokens."""
    return got.split() == expected.split()


def same_value(got: Any, expected: Any) -> bool:
    """JSON-level equality with float tolerance (rel 1e-6, abs 1e-9)."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return got is expected
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return got == expected or _math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(same_value(g, e) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same_value(got[k], expected[k]) for k in got)
    return got == expected


def passes(spec: CodeTests, i: int, run: RunResult) -> bool:
    """Did test `i` pass? (Expected values are compared here, never in the sandbox.)"""
    if run.status != "ok":
        return False
    if spec.mode == "stdio":
        return same_stdout(run.stdout, spec.expected[i])
    if spec.mode == "call":
        try:
            got = json.loads(run.payload)
        except (TypeError, ValueError):
            return False
        expected = spec.expected[i]
        # Datasets such as TACO wrap a single return value in a list.
        return same_value(got, expected) or (isinstance(expected, list) and len(expected) == 1
                                             and same_value(got, expected[0]))
    return True  # assert mode: "ok" means the test code ran to its end


def score(solution_str: str, ground_truth, extra_info, ctx) -> dict:
    """Verdict for one response; `ctx.sandbox` is a `Sandbox`."""
    spec = parse_tests(ground_truth)
    program = extract_program(solution_str)
    if program is None:
        return {"acc": False, "format_error": True, "pred": None,
                "details": {"status": "no_code", "passed": 0, "total": len(spec.tests)}}
    passed = []
    runs = ctx.sandbox.run(program, spec.tests, mode=spec.mode, fn_name=spec.fn_name,
                           entry_point=spec.entry_point,
                           judge=lambda i, run: passed.append(passes(spec, i, run)) or passed[-1])
    failed = next((r for r, ok in zip(runs, passed) if not ok), None)
    status = "ok" if failed is None else ("wrong_answer" if failed.status == "ok" else failed.status)
    return {"acc": failed is None and len(passed) == len(spec.tests),
            "format_error": status in _FORMAT_STATUSES, "pred": None,
            "details": {"status": status, "passed": sum(passed), "total": len(spec.tests),
                        "cpu_s": round(sum(r.cpu_s for r in runs), 4)}}
