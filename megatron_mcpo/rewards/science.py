"""Science reward (SciKnowEval-style multiple choice): the option letter in the last <answer> field.

Reward 1 iff the letter A-D inside the last `<answer>...</answer>` equals the gold letter. Case,
surrounding whitespace, brackets (`(B)`, `[b]`) and a trailing `.`/`)`/`:` with option text after it
(`B. Photosynthesis`) are tolerated; anything else inside the tags is a format error.
"""
import re
from typing import Optional

LETTERS = "ABCD"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LETTER = re.compile(r"[(\[]?\s*([A-Da-d])\s*(?:[)\]]\s*(?:[.:]\s*)?(?:\s.*)?|[.:](?:\s.*)?)?", re.DOTALL)


def parse_letter(text: str) -> Optional[str]:
    """Option letter written as `B`, `b`, `(B)`, `[B]`, `B.`, `B)`, `B: text`, ...; else None."""
    if not isinstance(text, str):
        return None
    m = _LETTER.fullmatch(text.strip())
    return m.group(1).upper() if m else None


def extract_answer(solution_str: str) -> Optional[str]:
    """Letter in the last <answer>...</answer> of a response, or None."""
    if not isinstance(solution_str, str):
        return None
    matches = _ANSWER.findall(solution_str)
    return parse_letter(matches[-1]) if matches else None


def score(solution_str: str, ground_truth, extra_info, ctx) -> dict:
    gold = parse_letter(ground_truth) if isinstance(ground_truth, str) else None
    if gold is None:
        raise ValueError(f"science ground_truth must be an option letter A-D, got {ground_truth!r}")
    pred = extract_answer(solution_str)
    return {"acc": pred == gold, "format_error": pred is None, "pred": pred, "details": {}}
