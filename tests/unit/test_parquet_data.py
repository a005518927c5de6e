"""verl's parquet layout (written by pandas as verl's preprocessing scripts do) loads into the same plain
records as JSONL; every error names the file and the row."""
import json

import numpy as np
import pandas as pd
import pytest

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate
from megatron_mcpo.data.dataset import record_domain, score_item
from megatron_mcpo.data.formats import load_parquet, load_records


def _verl_rows():
    # As verl's examples/data_preprocess/gsm8k.py builds them: the prompt a list of chat messages (numpy
    # arrays of dicts after a pandas round-trip), reward_model/extra_info dicts (parquet structs).
    return [
        {"data_source": "openai/gsm8k", "prompt": np.array([{"role": "user", "content": "2+3? Answer in \\boxed{}."}], dtype=object),
         "ability": "math", "reward_model": {"style": "rule", "ground_truth": "5"},
         "extra_info": {"split": "train", "index": 0, "domain": "math"}},
        {"data_source": "code/apps", "prompt": np.array([{"role": "system", "content": "Write Python."},
                                                         {"role": "user", "content": "Return 1."}], dtype=object),
         "ability": "code", "reward_model": {"style": "rule", "ground_truth": '{"inputs": ["a"], "outputs": ["1"]}'},
         "extra_info": {"split": "train", "index": 1, "domain": "code"}},
    ]


def _write(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def test_verl_parquet_round_trip(tmp_path):
    path = _write(tmp_path / "train.parquet", _verl_rows())
    recs = load_records(path)
    assert recs == [
        {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "2+3? Answer in \\boxed{}."}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "5"}, "extra_info": {"split": "train", "index": 0, "domain": "math"}},
        {"data_source": "code/apps", "prompt": [{"role": "system", "content": "Write Python."}, {"role": "user", "content": "Return 1."}],
         "ability": "code", "reward_model": {"style": "rule", "ground_truth": '{"inputs": ["a"], "outputs": ["1"]}'},
         "extra_info": {"split": "train", "index": 1, "domain": "code"}},
    ]
    json.dumps(recs)  # plain Python all the way down: no numpy left
    assert [record_domain(r) for r in recs] == ["math", "code"]
    assert score_item(recs[0], "\\boxed{5}") == ("openai/gsm8k", "\\boxed{5}", "5", recs[0]["extra_info"])


def test_struct_keys_missing_in_some_rows_are_dropped(tmp_path):
    rows = _verl_rows()
    rows[0]["extra_info"] = {"split": "train", "index": 0, "domain": "math", "reference": "5"}  # only row 0 has it
    rows[1]["reward_model"] = {"ground_truth": "1"}  # no style
    recs = load_parquet(_write(tmp_path / "t.parquet", rows))
    assert "reference" not in recs[1]["extra_info"] and recs[0]["extra_info"]["reference"] == "5"
    assert recs[1]["reward_model"] == {"ground_truth": "1"} and recs[0]["reward_model"]["style"] == "rule"


def test_array_ground_truths_become_lists(tmp_path):
    rows = [{"data_source": "science", "prompt": "Which?", "reward_model": {"ground_truth": np.array(["B", "b"], dtype=object)}}]
    (rec,) = load_parquet(_write(tmp_path / "a.parquet", rows))
    assert rec["reward_model"] == {"ground_truth": ["B", "b"]} and type(rec["reward_model"]["ground_truth"]) is list


def test_plain_string_prompts_and_no_optional_columns(tmp_path):
    rows = [{"data_source": "math", "prompt": "1+1?", "reward_model": {"ground_truth": "2"}}]
    assert load_parquet(_write(tmp_path / "s.parquet", rows)) == [
        {"data_source": "math", "prompt": "1+1?", "reward_model": {"ground_truth": "2"}}]


@pytest.mark.parametrize("change,message", [
    (lambda r: r[1].update(reward_model={"style": "rule"}), r"bad.parquet: row 1: reward_model has no ground_truth"),
    (lambda r: r[0].update(prompt=np.array([], dtype=object)), r"bad.parquet: row 0: prompt is an empty list"),
    (lambda r: r[1].update(prompt=np.array([{"role": "user", "content": None}], dtype=object)),
     r"bad.parquet: row 1: prompt\[0\] must be a \{'role': str, 'content': str\} message"),
    (lambda r: r[0].update(data_source=""), r"bad.parquet: row 0: data_source must be a non-empty string"),
])
def test_bad_rows_name_file_and_row(tmp_path, change, message):
    rows = _verl_rows()
    change(rows)
    with pytest.raises(ValueError, match=message):
        load_parquet(_write(tmp_path / "bad.parquet", rows))


def test_bad_files(tmp_path):
    no_gt = _write(tmp_path / "cols.parquet", [{"data_source": "math", "prompt": "x"}])
    with pytest.raises(ValueError, match=r"cols.parquet: lacks the column\(s\) reward_model \(verl's layout"):
        load_parquet(no_gt)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ValueError, match="junk.parquet: not a readable parquet file"):
        load_parquet(str(junk))
    with pytest.raises(FileNotFoundError, match="nope.parquet: no such data file"):
        load_parquet(str(tmp_path / "nope.parquet"))
    with pytest.raises(ValueError, match=r"x.csv: unsupported data file \(expected .parquet or .jsonl\)"):
        load_records(str(tmp_path / "x.csv"))


def test_config_accepts_parquet_and_names_other_files():
    validate(load_config(None, ["data.train_files=[a.parquet, b.jsonl]", "eval.files=[c.parquet]"]), cuda_available=False, check_files=False)
    with pytest.raises(ConfigError, match=r"eval.files: 'c.csv' is neither .jsonl nor .parquet"):
        validate(load_config(None, ["eval.files=[c.csv]"]), cuda_available=False)


def test_a_data_file_is_parsed_once_per_process(tmp_path, monkeypatch):
    """validate's preflight parses a JSONL file and the run's build takes that parse over (no second parse);
    a later read parses again (no two readers share one list), and so does a read after the file changed."""
    from megatron_mcpo.data import formats

    parses = []
    real_parse = formats._parse
    monkeypatch.setattr(formats, "_parse", lambda p: parses.append(p) or real_parse(p))
    path = tmp_path / "train.jsonl"
    row = {"data_source": "openai/gsm8k", "prompt": "2+3?", "reward_model": {"ground_truth": "5"}, "extra_info": {"domain": "math"}}
    path.write_text(json.dumps(row) + "\n")
    validate(load_config(None, [f"data.train_files=[{path}]"]), world_size=1, cuda_available=False)
    assert len(parses) == 1
    first = load_records(str(path))
    assert len(parses) == 1 and first[0]["reward_model"]["ground_truth"] == "5"
    first[0]["reward_model"]["ground_truth"] = "mutated by its holder"
    again = load_records(str(path))
    assert len(parses) == 2 and again is not first and again[0]["reward_model"]["ground_truth"] == "5"
    load_records(str(path), keep=True)
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "reward_model": {"ground_truth": "6"}}) + "\n")
    changed = load_records(str(path))
    assert len(parses) == 4 and [r["reward_model"]["ground_truth"] for r in changed] == ["5", "6"]
