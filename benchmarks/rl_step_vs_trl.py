"""One RL step, ours vs TRL's GRPOTrainer, on the same workload (CPU).

Workload: the tiny Qwen3 (hidden 128, 2 layers, fp32, our local tokenizer), 16 math prompts of the
synthetic suite (chat messages, the same chat template) x 8 samples, 48 new tokens, temperature 1,
lr 1e-5, one optimizer step per RL step, no KL, token-mean loss (TRL's loss_type "dapo").
TRL keeps its defaults otherwise (gradient checkpointing on, plain HF generate) but fp32 (bf16=False); it runs in its own
environment (.venv-trl: `python -m venv .venv-trl && .venv-trl/bin/pip install -c constraints/trl.txt
torch trl`), this script re-invoking itself there with --trl-worker. Its reward is a cheap string check
(ours: the math verifier, which scores these random-model answers 0 just as fast).

The two run in lock-step (TRL's step i, then ours, alternating; the TRL process waits on a pipe), so both
see the same machine load: a shared CPU machine's load moves by minutes. Reported per side: wall seconds
per step and the CPU seconds (user + system) of the side's process tree in it (engine and reward
processes included), both as means over the steps after the first; start-up seconds (framework imports,
model, engine); for ours the mean of every time/* phase (they sum to time/step, bookkeeping in time/other)
and the first step's phases (its one-time warm-up).

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


def trl_worker(model_dir: str, prompts_file: str, steps: int, go_fd: int, done_fd: int) -> None:
    """Runs inside .venv-trl: TRL's GRPOTrainer on the workload, one step per line read from `go_fd`;
    writes JSON lines to `done_fd`: {startup_s}, then {step_s} per step, then the versions."""
    import torch

    t0 = time.perf_counter()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    go, done = os.fdopen(go_fd, "r"), os.fdopen(done_fd, "w", buffering=1)
    torch.manual_seed(0)
    with open(prompts_file) as f:
        prompts = json.load(f)
    ds = Dataset.from_list([{"prompt": p} for p in prompts] * (steps + 1))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    class LockStep(TrainerCallback):  # the parent runs our step while this one waits for "go"
        def on_step_begin(self, args, state, control, **kw):
            go.readline()
            self.tic = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            done.write(json.dumps({"step_s": time.perf_counter() - self.tic}) + "\n")

    def reward(completions, **kw):
        return [float("\\boxed{" in c[0]["content"]) for c in completions]

    args = GRPOConfig(
        output_dir=os.path.splitext(prompts_file)[0] + "_trl_out", per_device_train_batch_size=PROMPTS * N,
        gradient_accumulation_steps=1, num_generations=N, max_completion_length=NEW_TOKENS, temperature=1.0,
        learning_rate=LR, loss_type="dapo", beta=0.0, max_steps=steps, logging_steps=1, report_to="none",
        use_cpu=True, bf16=False, save_strategy="no", seed=0, shuffle_dataset=False, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[LockStep()])
    done.write(json.dumps({"startup_s": time.perf_counter() - t0}) + "\n")
    trainer.train()
    import transformers
    import trl

    done.write(json.dumps({"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__, "torch_threads": torch.get_num_threads()}) + "\n")


def tree_cpu_seconds(root: int, exclude: int = -1) -> float:
    """user + system CPU seconds of the live processes under `root` (itself included), leaving out the
    subtree of `exclude` (Linux /proc; a process that already exited is not counted)."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid == exclude:
            continue
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def build_ours(model_dir: str, prompts: list, engine: str, steps: int, out_dir: str):
    """Our Trainer on the workload, and its start-up seconds (framework imports included)."""
    path = os.path.join(out_dir, "prompts.jsonl")
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p, "data_source": "math", "reward_model": {"ground_truth": "42"}}) + "\n")
    t0 = time.perf_counter()
    from megatron_mcpo.build import build_trainer
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched

    cfg = load_config("examples/configs/tiny_cpu.yaml", [
        f"model.hf_path={model_dir}", f"rollout.engine={engine}", f"rollout.n={N}", "rollout.temperature=1.0",
        f"rollout.max_response_length={NEW_TOKENS}", f"algorithm.train_batch_prompts={PROMPTS}",
        f"algorithm.mini_batch_prompts={PROMPTS}", "algorithm.name=grpo", "algorithm.entropy_coef=0.0",
        "parallel.micro_batch_size=32", f"optimizer.lr={LR}", f"data.train_files=[{path}]", "data.domains=[math]",
        "eval.before_train=false", "eval.every=0", f"run.output_dir={out_dir}", f"logging.log_dir={out_dir}/logs",
        f"run.total_steps={steps}", "rollout.gpu_memory_utilization=0.1",
    ])
    trainer = build_trainer(validate_launched(cfg))
    return trainer, time.perf_counter() - t0


def summary(step_s: list, cpu_s: list) -> dict:
    """Means over the steps after the first (its one-time warm-up excluded)."""
    later = slice(1, None) if len(step_s) > 1 else slice(None)
    mean = lambda xs: sum(xs[later]) / len(xs[later])  # noqa: E731
    return {"step_s": step_s, "cpu_s": cpu_s, "step_mean_s": mean(step_s), "cpu_mean_s": mean(cpu_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--trl-python", default=".venv-trl/bin/python")
    ap.add_argument("--out", default=None)
    ap.add_argument("--trl-worker", nargs=4, metavar=("MODEL", "PROMPTS", "GO_FD", "DONE_FD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        model, prompts, go_fd, done_fd = args.trl_worker
        trl_worker(model, prompts, args.steps, int(go_fd), int(done_fd))
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
    prompts_file = os.path.join(work, f"prompts_{args.engine}.json")
    with open(prompts_file, "w") as f:
        json.dump(prompts, f)
    load_at_start = os.getloadavg()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    proc = subprocess.Popen([args.trl_python, os.path.abspath(__file__), "--steps", str(args.steps), "--trl-worker",
                             model_dir, prompts_file, str(go_r), str(done_w)], pass_fds=(go_r, done_w))
    os.close(go_r)
    os.close(done_w)
    go, done = os.fdopen(go_w, "w", buffering=1), os.fdopen(done_r, "r")
    trl = json.loads(done.readline())
    run_dir = os.path.join(work, args.engine)  # one per engine: the two can run at once
    os.makedirs(run_dir, exist_ok=True)
    trainer, startup = build_ours(model_dir, prompts, args.engine, args.steps, run_dir)
    me = os.getpid()
    trl_steps, trl_cpu, our_steps, our_cpu, history = [], [], [], [], []
    try:
        for _ in range(args.steps):  # lock-step: TRL's step, then ours, under the same machine load
            c0 = tree_cpu_seconds(proc.pid)
            go.write("\n")
            trl_steps.append(json.loads(done.readline())["step_s"])
            trl_cpu.append(tree_cpu_seconds(proc.pid) - c0)
            c0, t0 = tree_cpu_seconds(me, exclude=proc.pid), time.perf_counter()
            history.append(trainer.rl_step())
            our_steps.append(time.perf_counter() - t0)
            our_cpu.append(tree_cpu_seconds(me, exclude=proc.pid) - c0)
        trl.update(json.loads(done.readline()))
    finally:
        trainer.close()
        go.close()
        proc.wait()
    later = history[1:] or history
    phases = sorted({k for m in later for k in m if k.startswith("time/")})
    ours = {"startup_s": startup, **summary(our_steps, our_cpu),
            "phases_mean_s": {k: sum(m.get(k, 0.0) for m in later) / len(later) for k in phases},
            "first_step_phases_s": {k: v for k, v in history[0].items() if k.startswith("time/")}}
    trl = {**trl, **summary(trl_steps, trl_cpu)}
    result = {
        "workload": {"model": "tiny qwen3, hidden 128, 2 layers, vocab 1000, fp32", "prompts": PROMPTS, "n": N,
                     "new_tokens": NEW_TOKENS, "temperature": 1.0, "lr": LR, "steps": args.steps,
                     "ours": f"grpo, token-mean, rollout.engine={args.engine}, micro-batch 32",
                     "trl": "GRPOTrainer defaults (loss_type dapo, gradient checkpointing, HF generate), beta 0"},
        "method": "lock-step: TRL's step i, then ours, alternating in one script (both see the same load); "
                  "means over steps 2..N; cpu_s: user+system seconds of each side's process tree in its step",
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "trl": trl,
        "ours": ours,
        "ours_over_trl_step": ours["step_mean_s"] / trl["step_mean_s"],
        "ours_over_trl_cpu": ours["cpu_mean_s"] / trl["cpu_mean_s"],
        "ours_over_trl_startup": ours["startup_s"] / trl["startup_s"],
    }
    print(json.dumps({k: result[k] for k in result if k.startswith("ours_over")}, indent=1))
    write_result(args.out or f"benchmarks/results/rl_step_vs_trl_{args.engine}_cpu.json", result)


if __name__ == "__main__":
    main()
