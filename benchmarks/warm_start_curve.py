"""How far does the demo's supervised warm start get each domain, and how much is left for RL to sharpen?

The demo's warm start (demo.sft_warm_start: its own prompts, one pass at a fixed LR) with held-out
evaluations after chosen steps: accuracy per domain sampled at T=1 (4 samples per prompt,
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
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

EVALS = {"sampled_T1": dict(n=4, temperature=1.0), "greedy": dict(n=1, temperature=0.0)}


def run(args) -> list[dict]:
    from megatron_mcpo.build import build_trainer
    from megatron_mcpo.config import SamplingSpec, load_config
    from megatron_mcpo.demo import sft_warm_start
    from megatron_mcpo.evaluation import evaluate
    from megatron_mcpo.validation import validate_launched

    cfg = load_config(args.config, [f"run.seed={args.seed}", f"rollout.seed={args.seed}",
                                    f"data.seed={1000 + args.seed}", *args.set])
    trainer = build_trainer(validate_launched(cfg))
    heldout = trainer.load_prompts(cfg.eval.files, cfg.data.seed + 1, args.prompts_per_domain, "heldout")
    rows, clock = [], {"train": 0.0, "since": time.perf_counter()}

    def after_step(step: int, nll: float) -> None:
        if step not in args.steps:
            return
        clock["train"] += time.perf_counter() - clock["since"]  # evaluation time is not warm-start time
        trainer.refit()
        row = {"step": step, "nll": round(nll, 4), "train_seconds": round(clock["train"], 1)}
        for name, how in EVALS.items():
            spec = SamplingSpec(max_tokens=cfg.rollout.max_response_length, **how)
            r = evaluate(trainer.engine, trainer.scorer, heldout, spec, trainer.groups.dp, 0, 1, seed=7)
            row[name] = {k.split("/")[1]: round(v, 3) for k, v in r.items() if k.endswith("/acc")}
            if how["n"] > 1:
                row[f"{name}_pass@{how['n']}"] = {k.split("/")[1]: round(v, 3) for k, v in r.items()
                                                 if k.endswith(f"/pass@{how['n']}")}
        print(row, flush=True)
        rows.append(row)
        clock["since"] = time.perf_counter()

    try:
        sft_warm_start(trainer, max(args.steps), batch_size=args.batch, lr=args.lr, after_step=after_step,
                       abstain=args.abstain, length_window=args.length_window)
        return rows
    finally:
        trainer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="examples/configs/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 150, 200, 300, 400])
    p.add_argument("--lr", type=float, default=2e-3, help="warm-start LR (the demo's --sft-lr default)")
    p.add_argument("--batch", type=int, default=20, help="sequences per step (the demo's --sft-batch default)")
    p.add_argument("--abstain", type=float, default=0.4, help="the demo's --sft-abstain default")
    p.add_argument("--length-window", type=int, default=8, help="the demo's --sft-length-window default")
    p.add_argument("--prompts-per-domain", type=int, default=30)
    p.add_argument("--seed", type=int, default=1, help="as benchmarks/learning.py's seed")
    p.add_argument("--set", action="append", default=["rollout.engine=hf"], metavar="KEY=VALUE",
                   help="config overrides (default: the in-process HF engine, fastest to start)")
    p.add_argument("--out", default="benchmarks/results/warm_start_curve_cpu.json")
    args = p.parse_args()
    rows = run(args)
    write_result(args.out, {"benchmark": "warm_start_curve", "config": args.config, "lr": args.lr,
                            "batch": args.batch, "abstain": args.abstain,
                            "length_window": args.length_window, "seed": args.seed, "overrides": args.set,
                            "heldout_prompts_per_domain": args.prompts_per_domain, "evals": EVALS, "rows": rows})


if __name__ == "__main__":
    main()
