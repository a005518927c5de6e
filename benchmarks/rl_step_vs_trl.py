"""One RL step, ours vs TRL's GRPOTrainer, on the same workload (CPU).

Workload: the tiny Qwen3 (hidden 128, 2 layers, fp32, our local tokenizer), 16 math prompts of the
synthetic suite (chat messages, the same chat template) x 8 samples, 48 new tokens, temperature 1,
lr 1e-5, one optimizer step per RL step, no KL, token-mean loss (TRL's loss_type "dapo").
TRL keeps its defaults otherwise (gradient checkpointing on, plain HF generate) but fp32 (bf16=False); it runs in its own
environment (.venv-trl: `python -m venv .venv-trl && .venv-trl/bin/pip install -c constraints/trl.txt
torch trl`), this script re-invoking itself there with --trl-worker. Its reward is a cheap string check
(ours: the math verifier, which scores these random-model answers 0 just as fast).

Reported per side: seconds per step (mean over the steps after the first), start-up seconds, and for
ours the mean of every time/* phase (they sum to time/step).

Usage: python benchmarks/rl_step_vs_trl.py [--engine hf|vllm] [--steps 4] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROMPTS, N, NEW_TOKENS, LR = 16, 8, 48, 1e-5


def trl_worker(model_dir: str, prompts_file: str, steps: int, out: str) -> None:
    """Runs inside .venv-trl: TRL's GRPOTrainer on the workload; writes {startup_s, step_s: [...]}."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with open(prompts_file) as f:
        prompts = json.load(f)
    ds = Dataset.from_list([{"prompt": p} for p in prompts] * (steps + 1))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.tic = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.tic)

    def reward(completions, **kw):
        return [float("\\boxed{" in c[0]["content"]) for c in completions]

    args = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(out), "trl_out"), per_device_train_batch_size=PROMPTS * N,
        gradient_accumulation_steps=1, num_generations=N, max_completion_length=NEW_TOKENS, temperature=1.0,
        learning_rate=LR, loss_type="dapo", beta=0.0, max_steps=steps, logging_steps=1, report_to="none",
        use_cpu=True, bf16=False, save_strategy="no", seed=0, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    startup = time.perf_counter() - t0
    trainer.train()
    import transformers
    import trl

    with open(out, "w") as f:
        json.dump({"startup_s": startup, "step_s": times, "trl": trl.__version__,
                   "transformers": transformers.__version__, "torch": torch.__version__}, f)


def ours(model_dir: str, prompts: list, engine: str, steps: int, out_dir: str) -> dict:
    from megatron_mcpo.config import load_config, validate
    from megatron_mcpo.build import build_trainer

    path = os.path.join(out_dir, "prompts.jsonl")
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p, "data_source": "math", "reward_model": {"ground_truth": "42"}}) + "\n")
    t0 = time.perf_counter()
    cfg = load_config("examples/configs/tiny_cpu.yaml", [
        f"model.hf_path={model_dir}", f"rollout.engine={engine}", f"rollout.n={N}", "rollout.temperature=1.0",
        f"rollout.max_response_length={NEW_TOKENS}", f"algorithm.train_batch_prompts={PROMPTS}",
        f"algorithm.mini_batch_prompts={PROMPTS}", "algorithm.name=grpo", "algorithm.entropy_coef=0.0",
        "parallel.micro_batch_size=32", f"optimizer.lr={LR}", f"data.train_files=[{path}]", "data.domains=[math]",
        "eval.before_train=false", "eval.every=0", f"run.output_dir={out_dir}", f"logging.log_dir={out_dir}/logs",
        f"run.total_steps={steps}", "rollout.gpu_memory_utilization=0.1",
    ])
    trainer = build_trainer(validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    startup = time.perf_counter() - t0
    try:
        history = [trainer.rl_step() for _ in range(steps)]
    finally:
        trainer.close()
    later = history[1:] or history
    phases = sorted(k for k in later[0] if k.startswith("time/"))
    return {"startup_s": startup, "step_s": [m["time/step"] for m in history],
            "phases_mean_s": {k: sum(m.get(k, 0.0) for m in later) / len(later) for k in phases}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--trl-python", default=".venv-trl/bin/python")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trl-worker", nargs=3, metavar=("MODEL", "PROMPTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        trl_worker(*args.trl_worker[:2], args.steps, args.trl_worker[2])
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import write_result

    from megatron_mcpo.data.synthetic import synthetic_suite
    from megatron_mcpo.models.tiny import build_tiny_hf_checkpoint

    work = os.path.abspath("outputs/bench_rl_vs_trl")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "tiny-qwen3-2layers")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        build_tiny_hf_checkpoint("qwen3", model_dir, num_layers=2)
    prompts = [rec["prompt"] for rec in synthetic_suite(PROMPTS, ["math"], seed=0)][:PROMPTS]
    prompts_file = os.path.join(work, "prompts.json")
    with open(prompts_file, "w") as f:
        json.dump(prompts, f)
    trl_out = os.path.join(work, "trl.json")
    subprocess.run([args.trl_python, os.path.abspath(__file__), "--steps", str(args.steps),
                    "--trl-worker", model_dir, prompts_file, trl_out], check=True)
    with open(trl_out) as f:
        trl = json.load(f)
    mine = ours(model_dir, prompts, args.engine, args.steps, work)

    def mean_after_first(xs):
        xs = xs[1:] or xs
        return sum(xs) / len(xs)

    result = {
        "workload": {"model": "tiny qwen3, hidden 128, 2 layers, vocab 1000, fp32", "prompts": PROMPTS, "n": N,
                     "new_tokens": NEW_TOKENS, "temperature": 1.0, "lr": LR, "steps": args.steps,
                     "ours": f"grpo, token-mean, rollout.engine={args.engine}, micro-batch 32",
                     "trl": "GRPOTrainer defaults (loss_type dapo, gradient checkpointing, HF generate), beta 0"},
        "trl": {**trl, "step_mean_s": mean_after_first(trl["step_s"])},
        "ours": {**mine, "step_mean_s": mean_after_first(mine["step_s"])},
    }
    result["ours_over_trl_step"] = result["ours"]["step_mean_s"] / result["trl"]["step_mean_s"]
    print(json.dumps({k: result[k] for k in ("ours_over_trl_step",)}, indent=1))
    write_result(args.out or f"benchmarks/results/rl_step_vs_trl_{args.engine}_cpu.json", result)


if __name__ == "__main__":
    main()
