"""Every bad input is refused by `mcpo validate` and by `mcpo train` before anything heavy starts: exit
code 2, one line naming the field, file or line, no traceback, nothing written to save_dir or log_dir."""
import json
import os
import subprocess
import sys

import pytest

from megatron_mcpo.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml")
GOOD = {"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "data_source": "math",
        "reward_model": {"ground_truth": "2"}}


def _jsonl(path, *lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


def _fake_checkpoint(d, **run_info):
    it = d / "iter_0000002"
    it.mkdir(parents=True)
    (it / "metadata.json").write_text("{}")
    (it / "run_info.json").write_text(json.dumps(run_info))
    (d / "latest_iteration.txt").write_text("2")
    return str(d)


def _cases(tmp):
    """name -> (extra --set overrides, config path or None, WORLD_SIZE for train, expected message part)."""
    hf_no_weights = tmp / "hf_no_weights"
    hf_no_weights.mkdir()
    from megatron_mcpo.models.families import tiny_hf_config

    (hf_no_weights / "config.json").write_text(json.dumps(tiny_hf_config("qwen3")))
    (tmp / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "load_empty").mkdir()
    other = _fake_checkpoint(tmp / "other_model", model={"hidden_size": 4096, "model_type": "qwen3"}, model_name="big")
    proj = _fake_checkpoint(tmp / "other_proj", model={}, projector={"proj_dim": 8, "proj_hidden_dim": 64})
    data = lambda name, *lines: f"data.train_files=[{_jsonl(tmp / name, *lines)}]"  # noqa: E731
    return {
        "config is a directory": ([], str(tmp), 1, "--config: '%s' is a directory" % tmp),
        "train_batch_prompts=0": (["algorithm.train_batch_prompts=0"], None, 1, "algorithm.train_batch_prompts: must be >= 1"),
        "batch not divisible by DP": (["algorithm.train_batch_prompts=9", "algorithm.mini_batch_prompts=3",
                                       "rollout.n=2", "parallel.micro_batch_size=3"], None, 2,
                                      "algorithm.train_batch_prompts: 9 is not divisible by the data-parallel size 2"),
        "eval.n>1 greedy": (["eval.n=2", "eval.temperature=0"], None, 1, "eval.n: 2 samples per prompt need eval.temperature > 0"),
        "greedy rollouts": (["rollout.temperature=0"], None, 1, "rollout.temperature: must be > 0, got 0.0"),
        "no response tokens": (["rollout.max_response_length=0", "eval.max_response_length=null"], None, 1,
                               "rollout.max_response_length: must be >= 1"),
        "missing data file": ([f"data.train_files=[{tmp}/nope.jsonl]"], None, 1, "data.train_files[0]: '%s/nope.jsonl' does not exist" % tmp),
        "empty data file": ([f"data.train_files=[{tmp}/empty.jsonl]"], None, 1, "data.train_files[0]: '%s/empty.jsonl' is empty" % tmp),
        "binary data file": ([f"eval.files=[{tmp}/binary.jsonl]"], None, 1, "eval.files[0]: %s/binary.jsonl: not a UTF-8" % tmp),
        "malformed line": ([data("bad.jsonl", GOOD, "{not json")], None, 1, "bad.jsonl:2: not valid JSON"),
        "null math ground truth": ([data("null.jsonl", GOOD, {**GOOD, "reward_model": {"ground_truth": None}})], None, 1,
                                   "null.jsonl:2: math ground_truth must be a non-empty string or number, got None"),
        "unknown domain": ([data("dom.jsonl", {**GOOD, "extra_info": {"domain": "poetry"}})], None, 1,
                           "dom.jsonl:1: extra_info.domain 'poetry' is not one of"),
        "no records of the domains": ([data("sci.jsonl", GOOD), "data.domains=[science]"], None, 1,
                                      "data.train_files: no record is in data.domains=['science']"),
        "HF dir without weights": ([f"model.hf_path={hf_no_weights}"], None, 1, "model.hf_path: '%s' has a config.json but no weights" % hf_no_weights),
        "load_dir holds nothing": ([f"checkpoint.load_dir={tmp}/load_empty"], None, 1, "checkpoint.load_dir: '%s/load_empty' holds no checkpoint" % tmp),
        "another model": ([f"checkpoint.load_dir={other}"], None, 1, "is of another model (big) than model.hf_path=tiny:qwen3: hidden_size 4096 vs 128"),
        "another proj_dim": ([f"checkpoint.load_dir={proj}"], None, 1, "projection head with proj_dim=8, this run has mcpo.proj_dim=64"),
        "CPU engine memory": (["rollout.gpu_memory_utilization=0.001"], None, 1, "rollout.gpu_memory_utilization: 0.001 of"),
        "keep_last < 0": (["checkpoint.keep_last=-1"], None, 1, "checkpoint.keep_last: must be >= 0"),
    }


NAMES = ["config is a directory", "train_batch_prompts=0", "batch not divisible by DP", "eval.n>1 greedy",
         "greedy rollouts", "no response tokens", "missing data file", "empty data file", "binary data file",
         "malformed line", "null math ground truth", "unknown domain", "no records of the domains",
         "HF dir without weights", "load_dir holds nothing", "another model", "another proj_dim", "CPU engine memory",
         "keep_last < 0"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_refused_up_front(tmp_path, capsys, monkeypatch, name):
    overrides, config, world, message = _cases(tmp_path)[name]
    save, logs = tmp_path / "save", tmp_path / "logs"
    args = ["--config", config or CONFIG]
    for o in overrides + [f"checkpoint.save_dir={save}", f"logging.log_dir={logs}", f"run.output_dir={tmp_path}/out"]:
        args += ["--set", o]
    for command in (["validate", "--world-size", str(world)], ["train"]):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert main([command[0], *args, *command[1:]]) == 2, command
        err = capsys.readouterr().err
        assert message in err, (command, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not save.exists() and not logs.exists() and not (tmp_path / "out").exists()


def _refused_up_front(capsys, monkeypatch, args, message):
    for command in (["validate"], ["train"]):
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert main([*command, "--config", CONFIG, *args]) == 2, command
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (command, err)


@pytest.mark.parametrize("field", ["checkpoint.save_dir", "logging.log_dir", "run.output_dir"])
def test_an_output_dir_that_cannot_be_created_is_refused_up_front(tmp_path, capsys, monkeypatch, field):
    """Not after the training steps before the first save (the save would fail and lose them)."""
    (tmp_path / "afile").write_text("")
    dirs = {"checkpoint.save_dir": tmp_path / "save", "logging.log_dir": tmp_path / "logs",
            "run.output_dir": tmp_path / "out"}
    dirs[field] = tmp_path / "afile" / "sub"
    args = [a for name, d in dirs.items() for a in ("--set", f"{name}={d}")]
    _refused_up_front(capsys, monkeypatch, args, f"{field}: '{dirs[field]}' cannot be created: '{tmp_path}/afile' is "
                                                 f"not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_save_dir_without_room_for_a_checkpoint_is_refused_up_front(tmp_path, capsys, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    # the tiny Qwen3: 1,307,648 parameters counted (1,309,312 with its norms) at 12 bytes each in fp32
    _refused_up_front(capsys, monkeypatch, ["--set", f"checkpoint.save_dir={tmp_path}/save"],
                      f"checkpoint.save_dir: a checkpoint of this model takes at least 15.0 MiB (weights and optimizer "
                      f"state), but '{tmp_path}/save' has 1.0 MiB free")


def test_save_dir_of_another_run_is_not_overwritten(tmp_path, capsys):
    save = _fake_checkpoint(tmp_path / "run", model={})
    before = sorted(os.listdir(save))
    for extra in (["--set", "checkpoint.resume=never"], ["--set", f"checkpoint.load_dir={_fake_checkpoint(tmp_path / 'b', model={})}"]):
        assert main(["train", "--config", CONFIG, "--set", f"checkpoint.save_dir={save}", *extra]) == 2
        err = capsys.readouterr().err
        assert f"checkpoint.save_dir: '{save}' already holds checkpoints" in err and "checkpoint.overwrite=true" in err
    assert sorted(os.listdir(save)) == before and open(f"{save}/latest_iteration.txt").read() == "2"


def test_train_command_end_to_end(tmp_path):
    """The installed entry point: exit code 2 and one line, from a fresh interpreter."""
    r = subprocess.run([sys.executable, "-m", "megatron_mcpo", "train", "--config", CONFIG, "--set", "eval.n=4",
                        "--set", "eval.temperature=0", "--set", f"checkpoint.save_dir={tmp_path}/save"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "config error: eval.n: 4 samples per prompt need eval.temperature > 0 (0 is greedy: every sample would be the same)"]
    assert not (tmp_path / "save").exists()


def _not_importable(module):
    def hide(monkeypatch):
        import importlib.util

        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    return hide


def _sandbox_cannot_start(monkeypatch):
    from megatron_mcpo.rewards.sandbox import Sandbox, SandboxUnavailable

    def run(self, *a, **k):
        raise SandboxUnavailable("unshare: Operation not permitted (the code sandbox needs root, ...)")
    monkeypatch.setattr(Sandbox, "run", run)


def _sandbox_breaks_programs(monkeypatch):
    from megatron_mcpo.rewards.sandbox import RunResult, Sandbox

    monkeypatch.setattr(Sandbox, "run", lambda self, *a, **k: [RunResult("runtime_error", stderr="ImportError: boom")])


@pytest.mark.parametrize("broken, domains, message", [
    (_not_importable("math_verify"), "[math, science]", "data.domains: 'math' is scored with math-verify, but math_verify cannot be imported"),
    # megatron-core's writer processes die on it before reporting, and the save then waits forever
    (_not_importable("psutil"), "[science]", "checkpoint.save_dir: megatron-core's checkpoint writer needs psutil"),
    (_sandbox_cannot_start, "[code]", "data.domains: 'code' runs programs in the sandbox, which cannot start here: unshare"),
    (_sandbox_breaks_programs, "[code, math]", "data.domains: the code sandbox ran print(1) to 'runtime_error' ('ImportError: boom')"),
])
def test_a_run_whose_verifiers_or_checkpoint_writer_cannot_work_here_is_refused(tmp_path, capsys, monkeypatch, broken,
                                                                                domains, message):
    """`mcpo train` checks the verifiers of its domains (else every response of the domain would score 0,
    silently) and the checkpoint writer on the machine it runs on; `mcpo validate` (a login node may differ)
    does not."""
    broken(monkeypatch)
    args = ["--config", CONFIG, "--set", f"data.domains={domains}", "--set", f"logging.log_dir={tmp_path}/logs",
            "--set", f"checkpoint.save_dir={tmp_path}/save", "--set", f"run.output_dir={tmp_path}/out"]
    assert main(["validate", *args]) == 0
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / d).exists() for d in ("logs", "save", "out"))


def test_the_verifiers_work_on_this_machine():
    from megatron_mcpo.preflight import check_reward_backends

    check_reward_backends(["math", "code", "science", "tooluse", "safety"])  # the real sandbox runs print(1)
