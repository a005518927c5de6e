"""Math reward: the last \\boxed{...} of the response, checked for equivalence with math-verify.

Reward 1 iff the content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x`) is
mathematically equivalent to the ground truth according to math-verify (fractions, radicals,
intervals, sets, percentages, units and `\\text{}` stripped where safe, LaTeX vs plain expressions).
No box, an empty box or an unbalanced one is a format error.

math-verify's own time-outs use SIGALRM, which works only in a main thread, so `check` runs in a
`WorkerPool` process (its main thread) and the pool also kills a worker that overruns from outside.
"""
import functools
import math as _math
from typing import Optional

MAX_ANSWER_CHARS = 1000  # longer "answers" are not worth a sympy parse: scored wrong
_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...}/\\fbox{...} (nested braces), or of `\\boxed x`; None if absent,
    empty or unbalanced."""
    if not isinstance(text, str):
        return None
    start, command = max((text.rfind(c), c) for c in _COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    if text.startswith("{", i):
        depth, j = 0, i
        while j < len(text):
            ch = text[j]
            if ch == "\\":  # \{ and \} are literal braces, not grouping
                j += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j].strip() or None
            j += 1
        return None
    if i < len(text) and text[i] in " \t":  # `\boxed 5`: one token up to whitespace or `$`
        token = text[i:].lstrip(" \t")
        end = min((k for k in (token.find(c) for c in " \t\n$") if k >= 0), default=len(token))
        return token[:end] or None
    return None


def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout_s: int):
    from math_verify import parse

    text = gold if "\\boxed" in gold or "\\fbox" in gold else "\\boxed{" + gold + "}"
    return parse(text, extraction_config=_configs(), parsing_timeout=timeout_s)


def check(gold: str, answer: str, timeout_s: float) -> dict:
    """Runs in a worker process: is `answer` (a box's content) equivalent to `gold`?

    Returns {"equal": bool, "gold_parsed": str, "answer_parsed": str}. Each parse and the comparison
    get math-verify's own (whole-second) time-out of ceil(timeout_s).
    """
    from math_verify import parse, verify

    seconds = max(1, _math.ceil(timeout_s))
    gold_parsed = _parse_gold(gold, seconds)
    answer_parsed = parse("\\boxed{" + answer + "}", extraction_config=_configs(), parsing_timeout=seconds)
    equal = bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=seconds))
    return {"equal": equal, "gold_parsed": str(gold_parsed[:1]), "answer_parsed": str(answer_parsed[:1])}


def score(solution_str: str, ground_truth, extra_info, ctx) -> dict:
    """Verdict for one response; `ctx` provides `math_check(gold, answer) -> dict` (see RewardScorer)."""
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        ground_truth = str(ground_truth)
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"math ground_truth must be a non-empty string or number, got {ground_truth!r}")
    answer = extract_boxed(solution_str)
    if answer is None:
        return {"acc": False, "format_error": True, "pred": None, "details": {"reason": "no_box"}}
    if len(answer) > MAX_ANSWER_CHARS:
        return {"acc": False, "format_error": False, "pred": answer[:100],
                "details": {"reason": "answer_too_long"}}
    result = ctx.math_check(ground_truth.strip(), answer)
    return {"acc": result["equal"], "format_error": False, "pred": answer, "details": result}
