"""Step metrics reach every configured backend (JSONL, TensorBoard, offline W&B) with the step as x-axis."""
import glob
import json
import os

import pytest

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate
from megatron_mcpo.metrics_log import MetricsLogger

SAMPLES = [{"domain": "math", "prompt": "1+1?", "response": "2 | done", "score": 1.0},
           {"domain": "code", "prompt": "def f", "response": "pass", "score": 0.0}]
RECORDS = [
    {"step": 0, "eval/all/acc": 0.25, "time/eval": 1.5},
    {"step": 1, "reward/all/acc": 0.5, "pg_loss": -0.125, "mcpo/pos_ratio": 0.375, "samples": SAMPLES},
    {"step": 2, "reward/all/acc": 0.75, "pg_loss": 0.0625, "mcpo/pos_ratio": 0.5, "eval/all/acc": 0.5},
]


def _cfg(tmp_path, *backends, extra=()):
    return load_config(None, [f"logging.log_dir={tmp_path}/logs", "run.name=unit", f"logging.backends={list(backends)}",
                              "logging.wandb_project=mcpo-unit", "logging.wandb_tags=[a,b]", *extra])


def _log_all(cfg, rank0=True):
    logger = MetricsLogger(cfg, rank0=rank0)
    for r in RECORDS:
        logger.log(r)
    logger.close()


def test_jsonl_default_keeps_every_value(tmp_path):
    cfg = load_config(None, [f"logging.log_dir={tmp_path}/logs", "run.name=unit"])
    assert cfg.logging.backends == ["jsonl"]
    _log_all(cfg)
    with open(f"{tmp_path}/logs/unit.jsonl") as f:
        assert [json.loads(line) for line in f] == RECORDS


def test_only_rank0_writes(tmp_path):
    _log_all(_cfg(tmp_path, "jsonl", "tensorboard"), rank0=False)
    assert not os.path.exists(f"{tmp_path}/logs")


def test_tensorboard_event_file_holds_the_step_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_all(_cfg(tmp_path, "jsonl", "tensorboard"))
    assert os.path.isfile(f"{tmp_path}/logs/unit.jsonl")
    ea = EventAccumulator(f"{tmp_path}/logs/tensorboard/unit")
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"reward/all/acc", "pg_loss", "mcpo/pos_ratio", "eval/all/acc", "time/eval"} <= scalars
    assert "step" not in scalars and "samples" not in scalars
    assert [(e.step, e.value) for e in ea.Scalars("reward/all/acc")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in ea.Scalars("eval/all/acc")] == [(0, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in ea.Scalars("pg_loss")] == [(1, -0.125), (2, 0.0625)]
    texts = set(ea.Tags()["tensors"])  # the samples table and the resolved config, as text
    assert {"samples/text_summary", "config/text_summary"} <= texts
    table = ea.Tensors("samples/text_summary")[0]
    assert table.step == 1 and b"2 \\| done" in table.tensor_proto.string_val[0]


def _wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header (":W&B", magic, version), then a LevelDB-style
    log of 32 KiB blocks, each record a 7-byte header (crc32c, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last) and its bytes; a block tail shorter than a header is padding."""
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(buf):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        length, kind = int.from_bytes(buf[pos + 4 : pos + 6], "little"), buf[pos + 6]
        if kind == 0:  # zero padding at the end of the file
            break
        pending += buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


def test_wandb_offline_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")  # no credentials, no network: offline mode must not need them
    _log_all(_cfg(tmp_path, "wandb", extra=["logging.wandb_run_name=offline-unit"]))
    runs = glob.glob(f"{tmp_path}/logs/wandb/offline-run-*")
    assert len(runs) == 1
    (data,) = glob.glob(f"{runs[0]}/run-*.wandb")
    assert os.path.getsize(data) > 0
    from wandb.proto import wandb_internal_pb2

    history, runs_seen, kinds = [], [], []
    for raw in _wandb_records(data):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "run":
            runs_seen.append(rec.run)
    assert len(runs_seen) == 1, f"record kinds in {data} ({os.path.getsize(data)} bytes): {kinds}"
    run = runs_seen[0]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert run.display_name == "offline-unit" and run.project == "mcpo-unit" and list(run.tags) == ["a", "b"]
    assert config["logging"]["wandb_project"] == "mcpo-unit" and config["run"]["name"] == "unit"  # resolved config, once
    steps = {h["_step"]: h for h in history}
    assert steps[1]["reward/all/acc"] == 0.5 and steps[2]["pg_loss"] == 0.0625 and steps[0]["eval/all/acc"] == 0.25
    assert steps[1]["samples/_type"] == "table-file" and steps[1]["samples/nrows"] == 2


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging.backends: 'wandb' needs the 'wandb' package: pip install 'megatron_mcpo\[wandb\]'"):
        MetricsLogger(_cfg(tmp_path, "jsonl", "wandb"), rank0=True)


def test_backend_config_is_strict():
    with pytest.raises(ConfigError, match=r"logging.backends\[0\]: 'tensorbord' is not one of .*did you mean 'tensorboard'"):
        load_config(None, ["logging.backends=[tensorbord]"])
    with pytest.raises(ConfigError, match="logging.backends: duplicate"):
        validate(load_config(None, ["logging.backends=[jsonl, jsonl]"]), cuda_available=False)
    with pytest.raises(ConfigError, match="checkpoint.export_hf: needs checkpoint.save_dir"):
        validate(load_config(None, ["checkpoint.export_hf=true"]), cuda_available=False)
