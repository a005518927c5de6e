"""How far does the demo's supervised warm start get each domain, and how much is left for RL to sharpen?

The demo's warm start (demo.sft_warm_start's batches, its own prompts, one pass at a fixed LR) with
held-out evaluations at chosen step counts: accuracy per domain sampled at T=1 (4 samples per prompt,
with pass@4) and greedy. RL can only raise a domain whose samples are unevenly right: sampled accuracy
well below greedy or pass@4. A domain at zero on all three has not learned the skill (the samples show
which); one at chance on all three (science: 0.25, safety: 0.5) has learned only the format.
A benchmark, never a test (2 CPU cores: ~1 s per warm-start step, ~20 s per evaluation).

  python benchmarks/warm_start_curve.py --steps 100 200 300 400
  python benchmarks/warm_start_curve.py --lr 5e-3 --set rollout.engine=vllm
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

EVALS = {"sampled_T1": dict(n=4, temperature=1.0), "greedy": dict(n=1, temperature=0.0)}


def run(args) -> list[dict]:
    from transformers import AutoTokenizer

    from megatron_mcpo.build import build_trainer
    from megatron_mcpo.config import SamplingSpec, load_config
    from megatron_mcpo.demo import _sft_batch
    from megatron_mcpo.evaluation import evaluate
    from megatron_mcpo.training.train_step import split_microbatches, train_step
    from megatron_mcpo.validation import validate_launched

    cfg = load_config(args.config, [f"run.seed={args.seed}", f"rollout.seed={args.seed}",
                                    f"data.seed={1000 + args.seed}", *args.set])
    trainer = build_trainer(validate_launched(cfg))
    try:
        state, d = trainer.state, cfg.data
        tokenizer = AutoTokenizer.from_pretrained(trainer.hf_dir)
        steps = max(args.steps)
        pool = trainer.load_prompts(d.train_files, d.seed + 2, -(-steps * args.batch // len(d.domains)), "train")
        order = random.Random(0).sample(pool, len(pool))  # one pass, as the demo's warm start
        heldout = trainer.load_prompts(cfg.eval.files, d.seed + 1, args.prompts_per_domain, "heldout")
        state.policy.temperature = 1.0
        rows, tic = [], time.perf_counter()
        for i in range(1, steps + 1):
            batch = _sft_batch(tokenizer, order[(i - 1) * args.batch : i * args.batch])
            total = float(batch["response_mask"].sum())

            def nll(out, mb):
                loss = -(out.logprobs * mb["response_mask"]).sum() / total
                return loss, {"nll": loss.detach()}

            for group in state.optimizer.param_groups:  # the scheduler resets it each step
                group["lr"] = args.lr
            m = train_step(state, split_microbatches(batch, args.batch), nll)
            if i not in args.steps:
                continue
            train_seconds = time.perf_counter() - tic
            trainer.refit()
            row = {"step": i, "nll": round(float(m["nll"]), 4), "train_seconds": round(train_seconds, 1)}
            for name, how in EVALS.items():
                spec = SamplingSpec(max_tokens=cfg.rollout.max_response_length, **how)
                r = evaluate(trainer.engine, trainer.scorer, heldout, spec, trainer.groups.dp, 0, 1, seed=7)
                row[name] = {k.split("/")[1]: round(v, 3) for k, v in r.items() if k.endswith("/acc")}
                if how["n"] > 1:
                    row[f"{name}_pass@{how['n']}"] = {k.split("/")[1]: round(v, 3) for k, v in r.items()
                                                     if k.endswith(f"/pass@{how['n']}")}
            print(row, flush=True)
            rows.append(row)
            tic = time.perf_counter() - train_seconds  # evaluation time is not warm-start time
        return rows
    finally:
        trainer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="examples/configs/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 150, 200, 300, 400])
    p.add_argument("--lr", type=float, default=2e-3, help="warm-start LR (the demo's --sft-lr default)")
    p.add_argument("--batch", type=int, default=20, help="sequences per step (the demo's --sft-batch default)")
    p.add_argument("--prompts-per-domain", type=int, default=30)
    p.add_argument("--seed", type=int, default=1, help="as benchmarks/learning.py's seed")
    p.add_argument("--set", action="append", default=["rollout.engine=hf"], metavar="KEY=VALUE",
                   help="config overrides (default: the in-process HF engine, fastest to start)")
    p.add_argument("--out", default="benchmarks/results/warm_start_curve_cpu.json")
    args = p.parse_args()
    rows = run(args)
    write_result(args.out, {"benchmark": "warm_start_curve", "config": args.config, "lr": args.lr,
                            "batch": args.batch, "seed": args.seed, "overrides": args.set,
                            "heldout_prompts_per_domain": args.prompts_per_domain, "evals": EVALS, "rows": rows})


if __name__ == "__main__":
    main()
