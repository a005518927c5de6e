"""Prompt files by extension: verl's parquet layout (`.parquet`, pyarrow) or JSONL (`.jsonl`).

verl's preprocessing scripts write a pandas DataFrame with the columns
  data_source (str), prompt (chat messages: a numpy array of {"role", "content"} dicts in pandas,
  list<struct> in the file), ability (str), reward_model (struct {ground_truth, style}),
  extra_info (struct, e.g. {split, index, domain, ...}).
Rows come back as the same plain dicts a JSONL line gives (lists, dicts, str; no numpy), and a bad file
or row is an error naming the file and the row (0-based, as pandas counts).
"""
from __future__ import annotations

import os

from megatron_mcpo.data.dataset import REQUIRED, load_jsonl

VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


# (path, size, mtime) -> records parsed by validation's preflight, kept for the run's build: the first
# plain read takes them, so a process parses each data file once and no two holders share one list.
_PARSED: dict[tuple, list[dict]] = {}


def load_records(path: str, keep: bool = False) -> list[dict]:
    """The prompt records of one data file, chosen by its extension. `keep` (preflight): the parse is
    kept for the next read of the unchanged file, which takes it over instead of parsing again."""
    try:
        st = os.stat(path)
    except OSError:
        return _parse(path)  # the loader names the problem
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    records = _PARSED.pop(key, None)
    if records is None:
        records = _parse(path)
    if keep:
        _PARSED[key] = records
    return records


def _parse(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        return load_parquet(path)
    if path.endswith(".jsonl"):
        return load_jsonl(path)
    raise ValueError(f"{path}: unsupported data file (expected .parquet or .jsonl)")


def _plain(value):
    """numpy arrays/scalars (pandas round-trips) -> lists/Python scalars, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy array or scalar
        return _plain(value.tolist())
    return value


def _check_row(rec: dict, where: str) -> dict:
    if not isinstance(rec["data_source"], str) or not rec["data_source"]:
        raise ValueError(f"{where}: data_source must be a non-empty string, got {rec['data_source']!r}")
    prompt = rec["prompt"]
    if isinstance(prompt, list):
        if not prompt:
            raise ValueError(f"{where}: prompt is an empty list of messages")
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: prompt[{i}] must be a {{'role': str, 'content': str}} message, got {m!r}")
    elif not isinstance(prompt, str) or not prompt:
        raise ValueError(f"{where}: prompt must be chat messages or a non-empty string, got {type(prompt).__name__}")
    rm = rec["reward_model"]
    if not isinstance(rm, dict) or rm.get("ground_truth") is None:
        raise ValueError(f"{where}: reward_model has no ground_truth")
    if rec.get("extra_info") is not None and not isinstance(rec["extra_info"], dict):
        raise ValueError(f"{where}: extra_info must be a mapping, got {type(rec['extra_info']).__name__}")
    return rec


def load_parquet(path: str) -> list[dict]:
    """Records of a verl-layout parquet file (pyarrow); errors name the file and the row."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading .parquet data needs pyarrow: pip install 'megatron_mcpo[parquet]'") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such data file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: lacks the column(s) {', '.join(missing)} (verl's layout: {', '.join(VERL_COLUMNS)})")
    # Struct columns are unified over all rows: a key only some rows have is None elsewhere; drop those.
    rows = table.to_pylist()
    records = []
    for i, row in enumerate(rows):
        rec = {k: _plain(v) for k, v in row.items()}
        for col in ("reward_model", "extra_info"):
            if isinstance(rec.get(col), dict):
                rec[col] = {k: v for k, v in rec[col].items() if v is not None}
        records.append(_check_row(rec, f"{path}: row {i}"))
    return records
