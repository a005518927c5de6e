"""Property-based: no parser raises on arbitrary text, and the inline scorers always give a verdict."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_mcpo.rewards import code, math, safety, science, tooluse

# Fragments of every format, glued with arbitrary text, reach the parsers' interesting branches.
FRAGMENTS = ["\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\{", "\\}", "\\", "$", "```", "```python\n",
             "```cpp\n", "</think>", "<answer>", "</answer>", "(", ")", "B", "Action:", "Action Input:",
             '{"name": "f", "arguments": {"a": 1}}', '"', ":", "[", "]", "Better response:", " 1", "0",
             "\n", " ", "<tool_call>", '{"function": {"name": "g", "arguments": "{"}}']
TEXT = st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)),
                                     max_size=40).map("".join))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(TEXT)
def test_parsers_never_raise(text):
    boxed = math.extract_boxed(text)
    assert boxed is None or isinstance(boxed, str)
    program = code.extract_program(text)
    assert program is None or isinstance(program, str)
    assert science.extract_answer(text) in (None, "A", "B", "C", "D")
    assert science.parse_letter(text) in (None, "A", "B", "C", "D")
    assert safety.extract_label(text) in (None, 0, 1)
    call = tooluse.parse_call(text)
    assert call is None or (isinstance(call[0], str) and isinstance(call[1], dict))


@SETTINGS
@given(TEXT)
def test_inline_scorers_always_give_a_verdict(text):
    for module, gold in ((science, "B"), (safety, 1), (tooluse, {"name": "f", "arguments": {"a": 1}})):
        verdict = module.score(text, gold, None, None)
        assert isinstance(verdict["acc"], bool) and isinstance(verdict["format_error"], bool)
        assert not (verdict["acc"] and verdict["format_error"])


@SETTINGS
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
def test_ground_truth_parsers_fail_only_with_value_errors(text):
    for parse in (code.parse_tests, lambda t: tooluse.score("", t, None, None)):
        try:
            parse(text)
        except ValueError:
            pass


def test_hostile_nesting_is_bounded():
    deep = '{"name": "f", "arguments": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    assert tooluse.parse_call(deep) is None  # too deep to decode: no call, no crash
    assert tooluse.parse_call("{" * 100_000) is None
    assert math.extract_boxed("\\boxed{" + "{" * 100_000) is None
