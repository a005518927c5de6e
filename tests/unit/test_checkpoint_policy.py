"""checkpoint.resume (auto | required | never), checkpoint.overwrite and what a save directory may be
written over: a mistyped load_dir or a relaunch into an existing run's save_dir never silently starts
from step 0 over its checkpoints; checkpoint.keep_last deletes only this run's older checkpoints."""
import json

import pytest

from megatron_mcpo.config import CheckpointConfig
from megatron_mcpo.training.ckpt_files import (
    CheckpointError, check_run_info, prune_checkpoints, resume_source, saved_optimizer_format,
)


def _ckpt(d, step=2):
    it = d / f"iter_{step:07d}"
    it.mkdir(parents=True)
    (it / "metadata.json").write_text("{}")
    (d / "latest_iteration.txt").write_text(str(step))
    return str(it)


def test_auto_resumes_from_save_dir_or_starts_fresh(tmp_path):
    assert resume_source(CheckpointConfig(save_dir=str(tmp_path / "new"))) is None
    it = _ckpt(tmp_path / "run")
    assert resume_source(CheckpointConfig(save_dir=str(tmp_path / "run"))) == it  # relaunch = continue
    assert resume_source(CheckpointConfig(load_dir=str(tmp_path / "run"), save_dir=str(tmp_path / "run"))) == it
    assert resume_source(CheckpointConfig(load_dir=str(tmp_path / "run"), save_dir=str(tmp_path / "new"))) == it


def test_load_dir_must_hold_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.load_dir: '.*empty' holds no checkpoint"):
        resume_source(CheckpointConfig(load_dir=str(tmp_path / "empty")))
    with pytest.raises(CheckpointError, match="checkpoint.load_dir: '.*typo' does not exist"):
        resume_source(CheckpointConfig(load_dir=str(tmp_path / "typo")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "latest_iteration.txt").write_text("7")
    with pytest.raises(CheckpointError, match="names .*iter_0000007, which does not exist"):
        resume_source(CheckpointConfig(load_dir=str(tmp_path / "bad")))


def test_required_and_never(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.resume: 'required' but there is no checkpoint"):
        resume_source(CheckpointConfig(save_dir=str(tmp_path / "new"), resume="required"))
    _ckpt(tmp_path / "run")
    with pytest.raises(CheckpointError, match="load_dir: set to .* but checkpoint.resume=never"):
        resume_source(CheckpointConfig(load_dir=str(tmp_path / "run"), resume="never"))
    with pytest.raises(CheckpointError, match="save_dir: '.*run' already holds checkpoints and checkpoint.resume=never"):
        resume_source(CheckpointConfig(save_dir=str(tmp_path / "run"), resume="never"))
    assert resume_source(CheckpointConfig(save_dir=str(tmp_path / "run"), resume="never", overwrite=True)) is None
    assert resume_source(CheckpointConfig(save_dir=str(tmp_path / "run"), resume="never"), training=False) is None


def test_save_dir_of_another_run_refused(tmp_path):
    other = _ckpt(tmp_path / "other")
    _ckpt(tmp_path / "run", step=4)
    c = CheckpointConfig(load_dir=str(tmp_path / "other"), save_dir=str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=r"already holds checkpoints and this run starts from .*other.*overwrite=true"):
        resume_source(c)
    assert resume_source(CheckpointConfig(load_dir=c.load_dir, save_dir=c.save_dir, overwrite=True)) == other
    # an interrupted first save (an iteration directory, no marker) is not an empty directory either
    (tmp_path / "crashed" / "iter_0000001").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="its latest checkpoint is incomplete"):
        resume_source(CheckpointConfig(save_dir=str(tmp_path / "crashed")))


def test_run_info_names_both_models(tmp_path):
    it = tmp_path / "iter_0000001"
    it.mkdir()
    (it / "run_info.json").write_text(json.dumps({"model": {"hidden_size": 576, "num_hidden_layers": 30},
                                                  "model_name": "SmolLM2-135M", "projector": {"proj_dim": 256}}))
    ours = {"hidden_size": 576, "num_hidden_layers": 30}
    check_run_info(str(it), ours, {"proj_dim": 256}, "x")
    check_run_info(str(it), ours, None, "x")  # GRPO resuming an MCPO run's policy: no head involved
    with pytest.raises(CheckpointError, match=r"another model \(SmolLM2-135M\) than model.hf_path=/m/qwen: hidden_size 576 vs 1024"):
        check_run_info(str(it), {**ours, "hidden_size": 1024}, None, "/m/qwen")
    with pytest.raises(CheckpointError, match="proj_dim=256, this run has mcpo.proj_dim=64"):
        check_run_info(str(it), ours, {"proj_dim": 64}, "x")


def test_run_info_refuses_an_optimizer_state_this_layout_cannot_load(tmp_path):
    """The distributed optimizer's state saved as dp_reshardable reshards across DP only (as
    fully_reshardable, across everything), and neither optimizer reads the other's (both fail deep in
    dist_checkpointing with a KeyError otherwise)."""
    from megatron_mcpo.config import ParallelConfig
    from megatron_mcpo.training.ckpt_files import optimizer_layout

    it = tmp_path / "iter_0000001"
    it.mkdir()
    dist_tp2 = optimizer_layout(ParallelConfig(tp=2, use_distributed_optimizer=True))
    (it / "run_info.json").write_text(json.dumps({"model": {}, "optimizer_layout": dist_tp2}))
    check_run_info(str(it), {}, None, "x", dist_tp2)
    check_run_info(str(it), {}, None, "x")  # no layout given: not checked
    dist_tp1 = optimizer_layout(ParallelConfig(tp=1, use_distributed_optimizer=True))
    with pytest.raises(CheckpointError, match=r"distributed optimizer at parallel.tp=2 pp=1 vpp=None, this run has "
                                              r"tp=1 pp=1 vpp=None: its optimizer state \(checkpoint.optimizer_format="
                                              r"dp_reshardable\) reshards across data parallelism only; .* save with "
                                              r"checkpoint.optimizer_format=fully_reshardable to change them"):
        check_run_info(str(it), {}, None, "x", dist_tp1)
    assert saved_optimizer_format(str(it)) == "dp_reshardable"  # saved before the format was recorded
    (it / "run_info.json").write_text(json.dumps({"model": {}, "optimizer_layout": dist_tp2,
                                                  "optimizer_format": "fully_reshardable"}))
    check_run_info(str(it), {}, None, "x", dist_tp1)  # that format loads at any tp/pp/vpp
    assert saved_optimizer_format(str(it)) == "fully_reshardable"
    (it / "run_info.json").write_text(json.dumps({"model": {}, "optimizer_layout": dist_tp2}))
    with pytest.raises(CheckpointError, match=r"use_distributed_optimizer=true, this run has false"):
        check_run_info(str(it), {}, None, "x", optimizer_layout(ParallelConfig(tp=2)))
    plain = optimizer_layout(ParallelConfig(tp=2))  # the plain optimizer's state reshards over TP/PP too
    (it / "run_info.json").write_text(json.dumps({"model": {}, "optimizer_layout": plain}))
    check_run_info(str(it), {}, None, "x", optimizer_layout(ParallelConfig(tp=1, pp=2)))


def test_keep_last_deletes_older_iterations_up_to_the_latest_only(tmp_path):
    for step in (2, 10, 6, 4, 8):  # created out of order: pruning goes by step number
        _ckpt(tmp_path, step)
    (tmp_path / "latest_iteration.txt").write_text("10")
    (tmp_path / "iter_0000012").mkdir()  # past the marker: an interrupted save, not this run's to delete
    (tmp_path / "iter_notes").mkdir()  # not an iteration
    (tmp_path / "hf").mkdir()
    assert prune_checkpoints(str(tmp_path), 0) == []  # 0 keeps all
    deleted = prune_checkpoints(str(tmp_path), 2)
    assert [p.rsplit("/", 1)[1] for p in deleted] == ["iter_0000002", "iter_0000004", "iter_0000006"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hf", "iter_0000008", "iter_0000010", "iter_0000012", "iter_notes", "latest_iteration.txt"]
    assert resume_source(CheckpointConfig(save_dir=str(tmp_path))) == str(tmp_path / "iter_0000010")
    assert prune_checkpoints(str(tmp_path), 1) == [str(tmp_path / "iter_0000008")]
    assert prune_checkpoints(str(tmp_path / "iter_0000010"), 1) == []  # a checkpoint directory given itself
