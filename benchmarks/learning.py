"""Does it learn? GRPO vs MCPO-GRPO (optionally DAPO vs MCPO-DAPO) on the embedded suite, seeded.

Each (algorithm, seed) run is `mcpo demo` in its own process: the tiny model's supervised warm start,
a held-out evaluation (the suite's held-out split, disjoint from training), the RL steps with periodic
evaluations, and a last evaluation. Reported: held-out accuracy per domain after RL as mean ± sd over
seeds in a Table-1-style markdown table, the change from the post-warm-start evaluation, the MCPO
metrics over training, and a PNG of the curves. A benchmark, never a test: ~5–10 min per run on 2 cores.

  python benchmarks/learning.py                       # grpo, mcpo_grpo × seeds 1 2 3
  python benchmarks/learning.py --algorithms grpo mcpo_grpo dapo mcpo_dapo --seeds 1 2 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

from megatron_mcpo.demo import held_out_change  # noqa: E402

MCPO_CURVES = ("mcpo/pos_ratio", "mcpo/loss_cross", "mcpo/loss_in", "mcpo/mean_cross_weight", "mcpo/pos_neg_margin")


def run_one(algorithm: str, seed: int, args, out_dir: str) -> list[dict]:
    name = f"{algorithm}_seed{seed}"
    log = os.path.join(out_dir, f"{name}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    cmd = [sys.executable, "-m", "megatron_mcpo", "demo", "--sft-steps", str(args.sft_steps),
           "--set", f"algorithm.name={algorithm}", "--set", f"run.name={name}", "--set", f"run.seed={seed}",
           "--set", f"rollout.seed={seed}", "--set", f"data.seed={1000 + seed}",
           "--set", f"run.total_steps={args.steps}", "--set", f"eval.every={args.eval_every}",
           "--set", f"eval.prompts_per_domain={args.eval_prompts}", "--set", "eval.before_train=true",
           "--set", f"logging.log_dir={out_dir}", "--set", f"run.output_dir={out_dir}",
           *[x for kv in args.set for x in ("--set", kv)]]
    tic = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"{name}: {time.perf_counter() - tic:.0f} s", flush=True)
    with open(log) as f:
        return [json.loads(line) for line in f]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[str, list[list[dict]]]) -> dict:
    """Per algorithm and domain: held-out accuracy before/after RL and the change, mean ± sd over seeds."""
    table = {}
    for algorithm, histories in runs.items():
        changes = [held_out_change(h) for h in histories]
        table[algorithm] = {
            d: {"before": mean_sd([c[d][0] for c in changes]), "after": mean_sd([c[d][1] for c in changes]),
                "change": mean_sd([c[d][1] - c[d][0] for c in changes])}
            for d in changes[0]
        }
    return table


def markdown(table: dict) -> str:
    domains = list(next(iter(table.values())))
    rows = ["| algorithm | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for algorithm, per in table.items():
        cells = [f"{per[d]['after'][0]:.3f} ± {per[d]['after'][1]:.3f} ({per[d]['change'][0]:+.3f})" for d in domains]
        rows.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\nheld-out accuracy after RL, mean ± sd over seeds (change from the post-warm-start evaluation)"


def plot(runs: dict[str, list[list[dict]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("eval/all/acc", "reward/all/acc", *MCPO_CURVES)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        for algorithm, histories in runs.items():
            for i, h in enumerate(histories):
                pts = [(m["step"], m[key]) for m in h if key in m]
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=f"C{list(runs).index(algorithm)}", alpha=0.7,
                            label=algorithm if i == 0 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", nargs="+", default=["grpo", "mcpo_grpo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-prompts", type=int, default=40, help="held-out prompts per domain")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override for every run")
    ap.add_argument("--work-dir", default="outputs/learning")
    ap.add_argument("--out", default="benchmarks/results/learning_cpu.json")
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    tic = time.perf_counter()
    runs = {a: [run_one(a, s, args, args.work_dir) for s in args.seeds] for a in args.algorithms}
    table = summarize(runs)
    print(markdown(table))
    png = os.path.splitext(args.out)[0] + ".png"
    plot(runs, png)
    curves = {a: [{k: [m[k] for m in h if k in m] for k in MCPO_CURVES} for h in hs] for a, hs in runs.items()}
    write_result(args.out, {
        "benchmark": "learning", "settings": vars(args), "seconds": round(time.perf_counter() - tic),
        "held_out": table, "markdown": markdown(table), "mcpo_metrics": curves, "png": png,
    })


if __name__ == "__main__":
    main()
