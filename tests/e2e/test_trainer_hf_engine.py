"""The RL loop with the in-process HF transformers engine (`rollout.engine=hf`, no vLLM): two steps, a
checkpoint, a resumed third step. After every refit (and the resume's) the engine's sampling log-probs
must equal Megatron's old log-probs of the same tokens (fp32)."""
import math
import os

import pytest

from dist_utils import run_distributed

pytestmark = pytest.mark.slow

OVERRIDES = [
    "rollout.engine=hf", "rollout.n=2", "rollout.max_response_length=12", "algorithm.train_batch_prompts=2",
    "algorithm.mini_batch_prompts=2", "parallel.micro_batch_size=4", "mcpo.warmup_batches=0",
    "eval.before_train=false", "eval.every=0", "data.domains=[math,code]", "optimizer.lr=1e-2",
]


def _run(rank, out, total_steps, resume):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched
    from megatron_mcpo.build import build_trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        f"run.total_steps={total_steps}", f"run.output_dir={out}", f"logging.log_dir={out}/logs",
        f"checkpoint.save_dir={out}/ckpt", *([f"checkpoint.load_dir={out}/ckpt"] if resume else []),
        "checkpoint.save_interval=1", "checkpoint.keep_last=1",
    ])
    trainer = build_trainer(validate_launched(cfg))
    try:
        probe = [[5, 17, 99, 240, 7, 11, 42]]  # the engine's view of the weights, before and after
        before = trainer.engine.score(probe)[0]
        history = trainer.train()
        return {"engine": type(trainer.engine).__name__, "history": history, "probe": (before, trainer.engine.score(probe)[0]),
                "end": (trainer.rl_steps, trainer.state.step)}
    finally:
        trainer.close()


def test_loop_with_hf_engine_refit_checkpoint_resume(tmp_path):
    out = str(tmp_path)
    (first,) = run_distributed(_run, world_size=1, timeout=1200, out=out, total_steps=2, resume=False)
    assert first["engine"] == "HFEngine" and first["end"] == (2, 2)
    saved = lambda: sorted(n for n in os.listdir(f"{out}/ckpt") if n.startswith("iter_"))  # noqa: E731
    assert saved() == ["iter_0000002"]  # saved every step, keep_last=1
    (second,) = run_distributed(_run, world_size=1, timeout=1200, out=out, total_steps=3, resume=True)
    assert second["end"] == (3, 3) and [m["step"] for m in second["history"]] == [3]
    assert saved() == ["iter_0000003"]  # the one resumed from goes once a newer one is complete
    steps = first["history"] + second["history"]
    for m in steps:
        for key in ("pg_loss", "grad_norm", "mcpo/loss_cl", "reward/all/acc", "refit/seconds"):
            assert key in m and math.isfinite(m[key]), key
        assert m["reward/all/count"] == 4
        # step 1 samples from the initial weights, steps 2 and 3 from refit ones (3: after the resume's refit)
        assert m["rollout/logprob_abs_diff_max"] < 1e-4, (m["step"], m["rollout/logprob_abs_diff_max"])
        # every phase is timed: the phases sum to the step (bookkeeping in time/other, which stays small)
        phases = sum(v for k, v in m.items() if k.startswith("time/") and k != "time/step")
        assert phases == pytest.approx(m["time/step"], rel=1e-9), (phases, m["time/step"])
        assert m["time/other"] >= -1e-9 and m["time/reward"] > 0 and m["time/rollout"] > 0
    # the refits carried real updates (Adam, lr 1e-2: the engine's log-probs of a fixed sequence move), and
    # the resumed engine starts from the checkpoint's weights, not the initial ones
    before, after = first["probe"]
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3
    assert max(abs(a - b) for a, b in zip(second["probe"][0], after)) < 1e-5


def _run_tp2(rank, out):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched
    from megatron_mcpo.build import build_trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        "parallel.tp=2", "run.total_steps=1", f"run.output_dir={out}", f"logging.log_dir={out}/logs"])
    trainer = build_trainer(validate_launched(cfg))
    try:
        return {"engine": trainer.engine is not None, "history": trainer.train()}
    finally:
        trainer.close()


def test_hf_engine_with_tensor_parallel_training(tmp_path):
    """TP2 on 2 CPU ranks: one engine (tp rank 0) serves the replica, both ranks train on its rollouts."""
    a, b = run_distributed(_run_tp2, world_size=2, timeout=1200, out=str(tmp_path))
    assert (a["engine"], b["engine"]) == (True, False)
    (ma,), (mb,) = a["history"], b["history"]
    assert ma["rollout/logprob_abs_diff_max"] < 1e-4 and ma["reward/all/count"] == mb["reward/all/count"] == 4
    for key in ("grad_norm", "pg_loss", "rollout/logprob_abs_diff_max", "rollout/response_length_mean"):
        assert ma[key] == mb[key], key


def _run_recipe(rank, out, total_steps, resume, tp=1):
    """The example configs' recipe on the tiny model: bf16 parameters (fp32 main parameters), the
    distributed optimizer (its checkpoint fully_reshardable), a KL term, full activation recompute."""
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched
    from megatron_mcpo.build import build_trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        "model.params_dtype=bf16", "parallel.use_distributed_optimizer=true", "algorithm.kl_coef=0.01",
        "model.recompute_granularity=full", "parallel.micro_batch_size=2",
        "optimizer.lr=1e-3", f"run.total_steps={total_steps}", f"run.output_dir={out}",
        f"parallel.tp={tp}", "checkpoint.optimizer_format=fully_reshardable",
        f"logging.log_dir={out}/logs", f"checkpoint.save_dir={out}/ckpt",
        *([f"checkpoint.load_dir={out}/ckpt"] if resume else [])])
    trainer = build_trainer(validate_launched(cfg))
    try:
        return {"history": trainer.train(), "end": (trainer.rl_steps, trainer.state.step)}
    finally:
        trainer.close()


def test_bf16_distributed_optimizer_recipe_checkpoints_and_resumes_at_another_layout(tmp_path):
    """Two data-parallel ranks take a step and save; a TP2 run resumes and takes the next. The policy stays
    near the weights it loaded (KL to them, the reference, small: a bf16 run's first update used to write
    the optimizer's copy of megatron's random initial weights back, KL 0.56 here at step 2), and the
    distributed optimizer's checkpoint, saved fully_reshardable, loads at another TP and DP size."""
    out = str(tmp_path)
    a, b = run_distributed(_run_recipe, world_size=2, timeout=1200, out=out, total_steps=1, resume=False)
    assert a["end"] == b["end"] == (1, 1)
    resumed, _ = run_distributed(_run_recipe, world_size=2, timeout=1200, out=out, total_steps=2, resume=True, tp=2)
    assert resumed["end"] == (2, 2)
    (m1,), (m2,) = a["history"], resumed["history"]
    for m in (m1, m2):
        for key in ("pg_loss", "grad_norm", "kl_loss", "mcpo/loss_cl"):
            assert math.isfinite(m[key]), key
        assert m["rollout/logprob_abs_diff_max"] < 0.1  # bf16 engine vs bf16 Megatron
    assert m1["kl_loss"] < 1e-6 and m2["kl_loss"] < 0.05, (m1["kl_loss"], m2["kl_loss"])
