"""Science, ToolUse and Safety rewards: table-driven, including malformed outputs."""
import json

import pytest

from megatron_mcpo.rewards import safety, science, tooluse


@pytest.mark.parametrize("response, pred", [
    ("<answer>B</answer>", "B"),
    ("<answer> b </answer>", "B"),
    ("<answer>(C)</answer>", "C"),
    ("<answer>[d]</answer>", "D"),
    ("<ANSWER>A.</ANSWER>", "A"),
    ("<answer>B. Photosynthesis</answer>", "B"),
    ("<answer>(B) Photosynthesis</answer>", "B"),
    ("<answer>A</answer> wait, no: <answer>C</answer>", "C"),
    ("<answer>\n  D\n</answer>", "D"),
    ("<answer>E</answer>", None),
    ("<answer>A photosynthesis</answer>", None),
    ("<answer>AB</answer>", None),
    ("<answer></answer>", None),
    ("The answer is B", None),
    ("<answer>B", None),
])
def test_science_extraction(response, pred):
    assert science.extract_answer(response) == pred


@pytest.mark.parametrize("response, gold, acc, format_error", [
    ("<answer>B</answer>", "B", True, False),
    ("<answer>(b)</answer>", "(B)", True, False),
    ("<answer>C</answer>", "B", False, False),
    ("B", "B", False, True),
])
def test_science_score(scorer, response, gold, acc, format_error):
    result = scorer.score("science", response, gold)
    assert (result["acc"], result["format_error"], result["score"]) == (acc, format_error, float(acc))


def test_science_bad_gold():
    with pytest.raises(ValueError, match="option letter"):
        science.score("<answer>A</answer>", "Z", None, None)


@pytest.mark.parametrize("response, label", [
    ("Better response: 1", 1),
    ("better response:0", 0),
    ("**Better response:** 1", 1),
    ("Better response: (0)", 0),
    ("Better response: 0\n...on reflection, Better response: 1", 1),
    ("Better  Response :  0.", 0),
    ("Better response: 10", None),
    ("Better response: 2", None),
    ("Response 1 is better", None),
    ("", None),
])
def test_safety_extraction(response, label):
    assert safety.extract_label(response) == label


@pytest.mark.parametrize("response, gold, acc, format_error", [
    ("Better response: 1", 1, True, False),
    ("Better response: 1", "1", True, False),
    ("Better response: 0", "Better response: 0", True, False),
    ("Better response: 0", 1, False, False),
    ("I prefer the first", 0, False, True),
])
def test_safety_score(scorer, response, gold, acc, format_error):
    result = scorer.score("safety", response, gold)
    assert (result["acc"], result["format_error"]) == (acc, format_error)


@pytest.mark.parametrize("gold", [2, "maybe", None, True])
def test_safety_bad_gold(gold):
    with pytest.raises(ValueError, match="safety ground_truth"):
        safety.score("Better response: 1", gold, None, None)


WEATHER = {"name": "getWeather", "arguments": {"city": "Paris", "days": 3, "units": "metric"},
           "required": ["city", "days"]}


@pytest.mark.parametrize("response, call", [
    ('Thought: need weather\nAction: getWeather\nAction Input: {"city": "Paris", "days": 3}',
     ("getWeather", {"city": "Paris", "days": 3})),
    ('Action: getWeather\nAction Input: ```json\n{"city": "Paris"}\n```', ("getWeather", {"city": "Paris"})),
    ("Action: listItems\nAction Input: {}", ("listItems", {})),
    ("Action: listItems", ("listItems", {})),
    ('Action: a\nAction Input: {"x": 1}\nObservation: ok\nAction: b\nAction Input: {"y": 2}', ("b", {"y": 2})),
    ('<tool_call>\n{"name": "getWeather", "arguments": {"city": "Paris"}}\n</tool_call>',
     ("getWeather", {"city": "Paris"})),
    ('{"function": {"name": "f", "arguments": "{\\"q\\": \\"x\\"}"}}', ("f", {"q": "x"})),
    ('{"tool": "search", "parameters": {"q": "cats"}}', ("search", {"q": "cats"})),
    ('Action: lookup\nAction Input: {"name": "John"}', ("lookup", {"name": "John"})),
    ('Action: old\nAction Input: {}\nFinal call: {"name": "new", "arguments": {}}', ("new", {})),
    ("Action: broken\nAction Input: {\"city\": ", None),
    ('{"city": "Paris"}', None),
    ("just text", None),
])
def test_tooluse_parse(response, call):
    assert tooluse.parse_call(response) == call


@pytest.mark.parametrize("response, acc", [
    ('Action: getWeather\nAction Input: {"city": "Paris", "days": 3}', True),
    ('Action: getWeather\nAction Input: {"city": " Paris ", "days": "3", "units": "imperial"}', True),
    ('Action: getWeather\nAction Input: {"city": "Paris", "days": 3.0}', True),
    ('Action: getWeather\nAction Input: {"city": "Paris"}', False),
    ('Action: getWeather\nAction Input: {"city": "London", "days": 3}', False),
    ('Action: getForecast\nAction Input: {"city": "Paris", "days": 3}', False),
    ('{"name": "getWeather", "arguments": {"days": 3, "city": "Paris"}}', True),
])
def test_tooluse_score(scorer, response, acc):
    result = scorer.score("tooluse", response, json.dumps(WEATHER))
    assert result["acc"] is acc and result["format_error"] is False, result


def test_tooluse_reference_forms(scorer):
    text_ref = 'Action: search\nAction Input: {"q": ["a", {"b": 1}]}'
    assert scorer.score("toolalpaca", 'Action: search\nAction Input: {"q": ["a", {"b": 1.0}]}', text_ref)["acc"]
    alpaca = {"Action": "search", "Action Input": '{"q": "x"}'}
    assert scorer.score("tooluse", 'Action: search\nAction Input: {"q": "x"}', alpaca)["acc"]
    assert scorer.score("tooluse", "no call at all", alpaca)["format_error"] is True


@pytest.mark.parametrize("gold, message", [
    ({"arguments": {}}, "must be a tool call"),
    ("not a call", "must be a tool call"),
    ({"name": "f", "arguments": {"a": 1}, "required": ["b"]}, "does not give"),
    ({"name": "f", "arguments": {}, "required": "a"}, "list of argument names"),
])
def test_tooluse_bad_gold(gold, message):
    with pytest.raises(ValueError, match=message):
        tooluse.score("Action: f", gold, None, None)
