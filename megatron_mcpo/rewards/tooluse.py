"""ToolUse reward (ToolAlpaca/"Toolpaca"-style tool calls): right tool, right required arguments.

The predicted call is the last one in the response, written either ToolAlpaca-style
    Action: get_weather
    Action Input: {"city": "Paris"}
or as a JSON tool-call object (`{"name": ..., "arguments": {...}}`, also `{"function": {...}}` with
arguments as a JSON string, `{"tool"|"action": ..., "parameters"|"args"|"action_input": ...}`, inside
`<tool_call>` tags or code fences or bare). Reward 1 iff the tool name equals the reference's and
every required argument of the reference is present with an equal value after JSON normalisation
(numbers and JSON written inside strings are parsed, strings stripped, 5 == 5.0 == "5").
The reference (`ground_truth`) is such a call as a dict, its JSON string, or an Action/Action Input
text; its "required" list (when present) names the arguments to compare, otherwise all of them are.
"""
import json
import re
from typing import Any, Optional

_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.MULTILINE | re.IGNORECASE)
_ACTION_INPUT = re.compile(r"^[ \t]*Action[ \t]+Input[ \t]*:[ \t]*", re.MULTILINE | re.IGNORECASE)
_NAME_KEYS = ("name", "tool", "tool_name", "action", "api_name", "Action")
_ARGS_KEYS = ("arguments", "args", "parameters", "params", "action_input", "input", "Action Input")
MAX_TEXT_CHARS = 50_000  # only the tail of longer responses is searched
MAX_JSON_TRIES = 2_000
_decoder = json.JSONDecoder()


def _as_args(value) -> Optional[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _call_from_dict(obj) -> Optional[tuple]:
    """(name, arguments) from a tool-call-shaped dict, or None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI style
        obj = obj["function"]
    name = next((obj[k] for k in _NAME_KEYS if isinstance(obj.get(k), str)), None)
    if name is None or not name.strip():
        return None
    raw = next((obj[k] for k in _ARGS_KEYS if k in obj), {})
    args = _as_args(raw)
    return None if args is None else (name.strip(), args)


def _json_objects(text: str):
    """(start, end, object) of the top-level JSON objects in text, in order (bounded work)."""
    pos, tries = 0, 0
    while tries < MAX_JSON_TRIES:
        pos = text.find("{", pos)
        if pos < 0:
            return
        tries += 1
        try:
            obj, end = _decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            pos += 1
            continue
        yield pos, end, obj
        pos = end


def _action_call(text: str) -> Optional[tuple]:
    """(end offset, (name, arguments)) of the last `Action:` line and its `Action Input:`, or None."""
    actions = list(_ACTION.finditer(text))
    if not actions:
        return None
    last = actions[-1]
    name = last.group(1).strip().strip("`*\"'").strip()
    if not name:
        return None
    m = _ACTION_INPUT.search(text, last.end())
    if m is None:
        return last.end(), (name, {})
    start = m.end() + len(text[m.end():]) - len(text[m.end():].lstrip())
    if text.startswith("```", start):  # fenced input: skip the fence line
        newline = text.find("\n", start)
        start = len(text) if newline < 0 else newline + 1
    if not text.startswith("{", start):
        return m.end(), (name, {})
    try:
        args, end = _decoder.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return (end, (name, args)) if isinstance(args, dict) else None


def parse_call(text: str) -> Optional[tuple]:
    """The last tool call (name, arguments) in a response, or None. Never raises on text."""
    if not isinstance(text, str):
        return None
    text = text[-MAX_TEXT_CHARS:]
    action = _action_call(text)
    after = action[0] if action else 0  # JSON inside the Action block is its input, not a call
    json_calls = [c for start, _, obj in _json_objects(text) if start >= after
                  for c in [_call_from_dict(obj)] if c is not None]
    if json_calls:
        return json_calls[-1]
    return action[1] if action else None


def normalise(value: Any) -> Any:
    """JSON-normal form of an argument value (see the module docstring)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return text
        return normalise(parsed) if not isinstance(parsed, str) else parsed.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k).strip(): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def _same(a, b) -> bool:
    try:
        return normalise(a) == normalise(b)
    except RecursionError:  # absurdly deep values
        return False


def _reference(ground_truth) -> tuple:
    """(name, arguments, required names) of the reference call; ValueError if malformed."""
    call, required = None, None
    if isinstance(ground_truth, str):
        try:
            ground_truth = json.loads(ground_truth)
        except ValueError:
            call = parse_call(ground_truth)
    if isinstance(ground_truth, dict):
        call = _call_from_dict(ground_truth)
        required = ground_truth.get("required")
    if call is None:
        raise ValueError(f"tooluse ground_truth must be a tool call (dict, JSON or Action text), got {ground_truth!r:.200}")
    name, args = call
    if required is None:
        required = list(args)
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"tooluse ground_truth 'required' must be a list of argument names, got {required!r}")
    missing = [r for r in required if r not in args]
    if missing:
        raise ValueError(f"tooluse ground_truth requires arguments {missing} it does not give")
    return name, args, required


def score(solution_str: str, ground_truth, extra_info, ctx) -> dict:
    name, args, required = _reference(ground_truth)
    call = parse_call(solution_str)
    if call is None:
        return {"acc": False, "format_error": True, "pred": None, "details": {"name_ok": False, "args_ok": False}}
    pred_name, pred_args = call
    name_ok = pred_name == name
    mismatched = [r for r in required if r not in pred_args or not _same(pred_args[r], args[r])]
    return {"acc": name_ok and not mismatched, "format_error": False, "pred": pred_name,
            "details": {"name_ok": name_ok, "args_ok": not mismatched, "mismatched_args": mismatched}}
