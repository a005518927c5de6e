"""Does it learn? GRPO vs MCPO-GRPO (optionally DAPO vs MCPO-DAPO) on the embedded suite, seeded.

Each (algorithm, seed) run is `mcpo demo` in its own process: the tiny model's supervised warm start
(run once per seed and shared by the algorithms through --warm-start-cache),
a held-out evaluation (the suite's held-out split, disjoint from training), the RL steps with periodic
evaluations, and a last evaluation. Reported: held-out accuracy per domain after RL as mean ± sd over
seeds in a Table-1-style markdown table, the change from the post-warm-start evaluation, the MCPO
metrics over training, and a PNG of the curves. A benchmark, never a test: on 2 cores (Intel Xeon, load
~3 from the runs themselves) a run took ~7 min (~3.7 of them the warm start, which the other algorithms of
a seed load from cache: GRPO ~4 min, DAPO ~5 min with its extra generation rounds); the default
2 algorithms × 3 seeds take ~33 min, all four ~63 min.

  python benchmarks/learning.py                       # grpo, mcpo_grpo × seeds 1 2 3
  python benchmarks/learning.py --algorithms grpo mcpo_grpo dapo mcpo_dapo --seeds 1 2 3
  python benchmarks/learning.py --set run.total_steps=24          # any demo setting, for every run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, write_result  # noqa: E402

from megatron_mcpo.demo import held_out_change  # noqa: E402

MCPO_CURVES = ("mcpo/pos_ratio", "mcpo/loss_cross", "mcpo/loss_in", "mcpo/mean_cross_weight", "mcpo/pos_neg_margin")


def run_one(algorithm: str, seed: int, args, out_dir: str) -> tuple[list[dict], dict]:
    """One `mcpo demo` run (the demo config's settings unless overridden); its metric history and timing.
    With --reuse, a finished run's log (and timing) in out_dir is read instead of running it again."""
    name = f"{algorithm}_seed{seed}"
    log, timing_path = os.path.join(out_dir, f"{name}.jsonl"), os.path.join(out_dir, f"{name}.timing.json")
    if args.reuse and os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
    else:
        if os.path.exists(log):
            os.remove(log)
        # one warm start per seed, shared by the algorithms (a paired comparison, and half the warm-up time);
        # keyed by everything that shapes it, so changed settings never meet a stale cache
        key = zlib.crc32(repr((seed, args.sft_steps, sorted(args.set))).encode())
        cmd = [sys.executable, "-m", "megatron_mcpo", "demo", "--quiet",
               *(["--sft-steps", str(args.sft_steps)] if args.sft_steps is not None else []),
               "--warm-start-cache", os.path.join(out_dir, f"warm_start_seed{seed}_{key:08x}.pt"),
               "--set", f"algorithm.name={algorithm}", "--set", f"run.name={name}", "--set", f"run.seed={seed}",
               "--set", f"rollout.seed={seed}", "--set", f"data.seed={1000 + seed}",
               "--set", f"logging.log_dir={out_dir}", "--set", f"run.output_dir={os.path.join(out_dir, name)}",
               *[x for kv in args.set for x in ("--set", kv)]]
        load = os.getloadavg()[0]
        tic = time.perf_counter()
        subprocess.run(cmd, check=True)
        timing = {"seconds": round(time.perf_counter() - tic, 1), "loadavg_1min_before": round(load, 2),
                  "loadavg_1min_after": round(os.getloadavg()[0], 2)}
        with open(timing_path, "w") as f:
            json.dump(timing, f)
    print(f"{name}: {timing}", flush=True)
    with open(log) as f:
        return [json.loads(line) for line in f], timing


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


def markdown(table: dict, runs: dict[str, list[list[dict]]], seeds: list[int]) -> str:
    """Held-out accuracy per domain before/after RL (mean ± sd over seeds), each seed's change per domain
    with the count of domains that gained ≥ 10 points, and the MCPO metrics averaged over each run's steps
    (mean ± sd over seeds)."""
    domains = list(next(iter(table.values())))
    rows = ["| algorithm | | " + " | ".join(domains) + " |", "|---" * (len(domains) + 2) + "|"]
    for algorithm, per in table.items():
        for when in ("before", "after"):
            cells = [f"{per[d][when][0]:.3f} ± {per[d][when][1]:.3f}" for d in domains]
            rows.append(f"| {algorithm} | {when} RL | " + " | ".join(cells) + " |")
        cells = [f"{per[d]['change'][0]:+.3f} ± {per[d]['change'][1]:.3f}" for d in domains]
        rows.append(f"| {algorithm} | change | " + " | ".join(cells) + " |")
    out = ["held-out accuracy per domain, mean ± sd over seeds (before: after the supervised warm start)", "",
           *rows, "", "change per seed (overall: before → after RL):", "",
           "| algorithm | seed | " + " | ".join(domains) + " | domains ≥ +0.10 |", "|---" * (len(domains) + 3) + "|"]
    for algorithm, histories in runs.items():
        for seed, h in zip(seeds, histories):
            change = held_out_change(h)
            gains = [change[d][1] - change[d][0] for d in domains if d != "all"]
            gained = sum(g >= 0.1 - 1e-9 for g in gains)
            out.append(f"| {algorithm} | {seed} | " + " | ".join(f"{g:+.3f}" for g in gains) + f" | "
                       f"{change['all'][0]:.3f} → {change['all'][1]:.3f} | {gained} of {len(gains)} |")
    mcpo = {a: hs for a, hs in runs.items() if any(k in m for h in hs for m in h for k in MCPO_CURVES)}
    if mcpo:
        out += ["", "MCPO metrics, mean over a run's RL steps, mean ± sd over seeds:", "",
                "| algorithm | " + " | ".join(MCPO_CURVES) + " |", "|---" * (len(MCPO_CURVES) + 1) + "|"]
        for algorithm, histories in mcpo.items():
            cells = []
            for key in MCPO_CURVES:
                per_run = [statistics.fmean(v) for v in ([m[key] for m in h if key in m] for h in histories) if v]
                cells.append("{:.3f} ± {:.3f}".format(*mean_sd(per_run)) if per_run else "—")
            out.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return "\n".join(out)


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
    ap.add_argument("--sft-steps", type=int, default=None, help="warm-start steps (default: the demo's)")
    ap.add_argument("--reuse", action="store_true", help="read finished runs' logs from --work-dir instead of rerunning")
    ap.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override for every run")
    ap.add_argument("--work-dir", default="outputs/learning")
    ap.add_argument("--out", default="benchmarks/results/learning_cpu.json")
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    tic = time.perf_counter()
    done = {a: [run_one(a, s, args, args.work_dir) for s in args.seeds] for a in args.algorithms}
    runs = {a: [h for h, _ in rs] for a, rs in done.items()}
    timings = {a: [t for _, t in rs] for a, rs in done.items()}
    table = summarize(runs)
    text = markdown(table, runs, args.seeds)
    print(text)
    png = os.path.splitext(args.out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    plot(runs, png)
    curves = {a: [{k: [m[k] for m in h if k in m] for k in MCPO_CURVES} for h in hs] for a, hs in runs.items()}
    write_result(args.out, {
        "benchmark": "learning", "settings": vars(args), "seconds": round(time.perf_counter() - tic),
        "run_timings": timings, "held_out": table, "markdown": text, "mcpo_metrics": curves, "png": png,
    })
    machine = machine_info()
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"# Held-out learning: {' vs '.join(args.algorithms)}, seeds {args.seeds}\n\n"
                f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; torch "
                f"{machine['torch']}, {machine['torch_threads']} threads. Shared machine: 1-min load average per run "
                f"(before/after) and wall seconds: {json.dumps(timings)}\n\n{text}\n\n![curves]({os.path.basename(png)})\n")

if __name__ == "__main__":
    main()
