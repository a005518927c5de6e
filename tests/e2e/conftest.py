import pytest

from dist_utils import run_distributed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny end-to-end run (tiny_run.py), once per session: a 60-step supervised warm start, one RL
    step with held-out eval, one more evaluation, TensorBoard, a checkpoint and its HF export. Several
    tests assert on it; only the resume test (test_trainer.py) writes next to it, into its own log dir."""
    from tiny_run import OUTPUTS, SFT_STEPS, run_trainer

    out = str(tmp_path_factory.mktemp("tiny_run"))
    (res,) = run_distributed(run_trainer, world_size=1, timeout=1800, out=out, total_steps=1, sft_steps=SFT_STEPS,
                             extra=OUTPUTS, evals_after=1, outputs=True)
    return {**res, "out": out}
