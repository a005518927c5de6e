"""A checkpoint writer process that dies (SIGKILLed as by the host's OOM killer, or failing before it can
report, as without psutil) ends the save with a CheckpointError naming it, instead of megatron's wait for
it that never ends (the old code timed out here). Its sibling writers are gone too, so the process can
exit, the incomplete checkpoint is not marked latest, and the next save in the same process works."""
import os
import signal

from dist_utils import run_distributed


def _saves(rank, save_dir):
    import multiprocessing

    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
    from megatron_mcpo.training.optimizer import setup_train_state

    write = FileSystemWriterAsync.write_preloaded_data
    failure = {}

    def first_writer_fails(transform_list, local_proc_idx, *args, **kwargs):
        if local_proc_idx == 0 and failure.get("how") == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if local_proc_idx == 0 and failure.get("how") == "raise":
            raise RuntimeError("psutil is not installed")  # megatron's own first line, outside its try
        return write(transform_list, local_proc_idx, *args, **kwargs)

    FileSystemWriterAsync.write_preloaded_data = staticmethod(first_writer_fails)  # the forked writers run it
    cfg = load_config(overrides=["run.device=cpu"])
    state = setup_train_state(cfg, tiny_hf_config("qwen3", num_layers=2), init_distributed(device="cpu"))
    out = {}
    for step, how in [(1, "sigkill"), (2, "raise"), (3, None)]:
        failure["how"], state.step = how, step
        try:
            save_checkpoint(state, save_dir)
            out[how] = "saved"
        except CheckpointError as e:
            out[how] = str(e)
        out[f"{how} children"] = len(multiprocessing.active_children())
        out[f"{how} latest"] = latest_checkpoint(save_dir)
    return out


def test_a_dead_checkpoint_writer_is_an_error_not_a_hang(tmp_path):
    (out,) = run_distributed(_saves, world_size=1, timeout=180, save_dir=str(tmp_path))
    first = os.path.join(str(tmp_path), "iter_0000001")
    assert out["sigkill"].startswith(f"checkpoint save into '{first}': writer process ")
    assert "was killed by SIGKILL (what the host's out-of-memory killer sends" in out["sigkill"]
    assert "the checkpoint is incomplete and was not marked latest" in out["sigkill"]
    assert "exited with code 1 (its error is printed above)" in out["raise"]
    # Only megatron's results-queue Manager lives on after a save, failed or not.
    assert out["sigkill children"] == out["raise children"] == out["None children"] == 1
    assert out["sigkill latest"] is None and out["raise latest"] is None
    assert out[None] == "saved"
    assert out["None latest"] == os.path.join(str(tmp_path), "iter_0000003")
