"""The one summary file of benchmarks/gpu_checks.sh: OUT/summary.md from what the checks left in OUT.

Reads OUT/checks.tsv (name, status, seconds, note per check), OUT/env.txt, OUT/gpu_tests.xml (pytest's
JUnit report: every GPU-marked test's outcome), OUT/rl/rl_loop.json, OUT/train_step_gpu_*.json and
OUT/mcpo_overhead_*.json, whichever exist.

    python benchmarks/gpu_checks_summary.py OUT
"""
from __future__ import annotations

import glob
import json
import os
import sys
import xml.etree.ElementTree as ET


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def checks_table(out: str) -> list[str]:
    lines = ["| check | status | seconds | note / log |", "|---|---|---|---|"]
    path = os.path.join(out, "checks.tsv")
    if os.path.exists(path):
        for row in _read(path).splitlines():
            name, status, seconds, note = (row.split("\t") + ["", "", ""])[:4]
            lines.append(f"| {name} | {status} | {seconds} | {note or name + '.log'} |")
    return lines


def gpu_tests(out: str) -> list[str]:
    path = os.path.join(out, "gpu_tests.xml")
    if not os.path.exists(path):
        return ["(no JUnit report)"]
    lines = ["| test | outcome |", "|---|---|"]
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = f"{tag}: {(node.get('message') or '').splitlines()[0][:150] if node.get('message') else ''}"
                break
        lines.append(f"| {case.get('classname')}::{case.get('name')} | {outcome} |")
    return lines


def train_step(out: str) -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "train_step_gpu_*.json"))):
        r = json.loads(_read(path))
        lines += [f"`{os.path.basename(path)}` ({r['model']['preset']}, seq {r['setup']['seq_len']}, "
                  f"{r['setup']['micro_batches_per_step']} micro-batches/step; matmul {r['matmul_tflops_per_s_same_run']} TFLOP/s "
                  f"measured):", "",
                  "| system | micro-batch | tokens/s | peak GiB | saved for backward MiB | MFU vs 989 | MFU vs matmul |",
                  "|---|---|---|---|---|---|---|"]
        for system, runs in r["runs"].items():
            for key, m in runs.items():
                cells = [m.get(k, "-") for k in ("tokens_per_s", "peak_memory_gib", "mfu_vs_989_tflops", "mfu_vs_measured_matmul")]
                cells.insert(2, m.get("saved_for_backward", {}).get("mib", "-"))
                if "error" in m:
                    cells[0] = m["error"]
                lines.append(f"| {system} | {key.split('_')[-1]} | " + " | ".join(map(str, cells)) + " |")
        if not r.get("complete", True):
            lines += ["", "(cut short: the systems above are all that ran)"]
        lines += ["", "Ratios (ours / peer): `" + json.dumps(r["ratios"]) + "`", "",
                  "Systems: `" + json.dumps({k: {f: v[f] for f in ("precision", "layer_spec", "core_attention") if f in v}
                                             for k, v in r["systems"].items()}) + "`", ""]
    return lines


def mcpo_overhead(out: str) -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "mcpo_overhead_*.json"))):
        sections = json.loads(_read(path))["sections"]
        for name, sec in sections.items():
            lines.append(f"- `{os.path.basename(path)}` {name}: `{json.dumps(sec['rows'])}`")
    return lines


def rl_loop(out: str) -> list[str]:
    path = os.path.join(out, "rl", "rl_loop.json")
    if not os.path.exists(path):
        return ["(did not complete)"]
    r = json.loads(_read(path))
    keys = ("step", "optimizer_steps", "pg_loss", "kl_loss", "mcpo/loss_cl", "grad_norm", "reward/all/acc",
            "rollout/logprob_abs_diff_max", "time/rollout", "time/train", "eval/all/count")
    lines = [f"engine {r['engine']}, device {r['device']}, {r.get('dtype', 'fp32')}, domains {r['domains']}, {r['seconds']} s; export: {r['export']['model_type']}",
             "", "| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += _rows(r["steps"], keys)
    memory = sorted({k for m in r["steps"].values() for k in m if k.startswith("memory/")})
    if memory:  # colocated on a GPU: what each step freed and re-took
        lines += ["", "| run | " + " | ".join(memory) + " |", "|---" * (len(memory) + 1) + "|", *_rows(r["steps"], memory)]
    return lines


def _rows(steps: dict, keys) -> list[str]:
    return [f"| {run} | " + " | ".join(f"{m[k]:.4g}" if isinstance(m.get(k), float) else str(m.get(k, "-")) for k in keys) + " |"
            for run, m in steps.items()]


def main() -> None:
    out = sys.argv[1]
    env = _read(os.path.join(out, "env.txt")).strip() if os.path.exists(os.path.join(out, "env.txt")) else "?"
    parts = ["# GPU checks", "", "```", env, "```", "", "## Checks", "", *checks_table(out), "",
             "## GPU-marked tests", "", *gpu_tests(out), "", "## RL loop (HF engine)", "", *rl_loop(out), "",
             "## Train step vs HF transformers", "", *train_step(out), "## MCPO overhead", "", *mcpo_overhead(out), ""]
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
