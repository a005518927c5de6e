"""`mcpo plot LOG.jsonl --out DIR`: PNG curves of a run's metrics log (matplotlib, Agg backend).

  rewards.png   train reward and accuracy per domain, held-out accuracy per domain, against step
  mcpo.png      the contrastive objective's diagnostics (the paper's Fig. 3): positive ratio, cross- and
                in-domain losses, positive/negative similarities (logits) of the projected embeddings
  mismatch.png  train/rollout mismatch: |log π_Megatron − log π_vLLM| of the sampled tokens
  time.png      seconds per phase of each step, stacked

A figure whose metrics the log does not have is not written (e.g. mcpo.png for a GRPO run).
"""
from __future__ import annotations

import os
from numbers import Number

# (metric suffix under mcpo/, panel title); the first present of a tuple of suffixes is drawn.
MCPO_PANELS = (
    (("pos_ratio",), "positive ratio"),
    (("loss_cl",), "contrastive loss (λ-free)"),
    (("loss_cross", "loss_cross_attr"), "cross-domain loss"),
    (("loss_in", "loss_in_attr"), "in-domain loss"),
    (("mean_cross_pos_logit",), "cross-domain positive similarity / τ"),
    (("mean_in_pos_logit",), "in-domain positive similarity / τ"),
    (("mean_neg_logit",), "negative similarity / τ"),
    (("mean_cross_weight",), "mean cross-domain weight"),
)


def load_log(path: str) -> list[dict]:
    """The records of a metrics JSONL; a malformed line is an error naming file and line. A run resumed
    from a checkpoint older than its last logged step (after a crash) logs those steps again: the records
    the resumed run replaced are left out (the file keeps them), so each curve is the run that went on."""
    from megatron_mcpo.data.dataset import jsonl_objects

    records = []
    for lineno, rec in jsonl_objects(path, error=ValueError):
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), Number):
            raise ValueError(f"{path}:{lineno}: a metrics record needs a numeric 'step'")
        if records and rec["step"] < records[-1]["step"]:
            records = [r for r in records if r["step"] <= rec["step"]]
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no metrics records")
    return records


def series(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the records that have a numeric `key`."""
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), Number)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _domains(records: list[dict], prefix: str, stat: str) -> list[str]:
    keys = {k for r in records for k in r}
    return sorted({k.split("/")[1] for k in keys if k.startswith(prefix + "/") and k.endswith("/" + stat)})


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'megatron_mcpo[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int):
    plt = pyplot()

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, list(axes.flat[:n])


def _save(fig, path: str) -> str:
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _curves(records: list[dict], panels: list[tuple[str, list[tuple[str, str]]]], path: str) -> tuple[str, list[str]]:
    """One axes per (title, [(key, label)]) panel; returns (path, titles)."""
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels):
        for key, label in lines:
            x, y = series(records, key)
            ax.plot(x, y, marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path), [t for t, _ in panels]


def _present(records: list[dict], key: str) -> bool:
    return any(isinstance(r.get(key), Number) for r in records)


def plot_log(log_path: str, out_dir: str) -> dict[str, list[str]]:
    """Write the PNGs of a metrics log into `out_dir`; returns {png path: its panel titles}."""
    records = load_log(log_path)
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, list[str]] = {}

    panels = []
    for prefix, stat, title in (("reward", "score", "train reward"), ("reward", "acc", "train accuracy"),
                                ("eval", "acc", "held-out accuracy")):
        doms = _domains(records, prefix, stat)
        if doms:
            panels.append((title, [(f"{prefix}/{d}/{stat}", d) for d in doms]))
    if panels:
        written.update([_curves(records, panels, os.path.join(out_dir, "rewards.png"))])

    panels = []
    for suffixes, title in MCPO_PANELS:
        key = next((f"mcpo/{s}" for s in suffixes if _present(records, f"mcpo/{s}")), None)
        if key:
            panels.append((title, [(key, key)]))
    if panels:
        written.update([_curves(records, panels, os.path.join(out_dir, "mcpo.png"))])

    lines = [(k, k.rsplit("_", 1)[-1]) for k in ("rollout/logprob_abs_diff_mean", "rollout/logprob_abs_diff_max")
             if _present(records, k)]
    if lines:
        written.update([_curves(records, [("train/rollout log-prob mismatch", lines)], os.path.join(out_dir, "mismatch.png"))])

    phases = sorted({k for r in records for k in r if k.startswith("time/") and isinstance(r[k], Number)})
    if phases:
        written.update([_time_bars(records, phases, os.path.join(out_dir, "time.png"))])
    return written


def _time_bars(records: list[dict], phases: list[str], path: str) -> tuple[str, list[str]]:
    """Seconds per phase of each logged record, stacked (eval-only records appear at their step too)."""
    fig, (ax,) = _grid(1)
    steps = [r["step"] for r in records]
    bottom = [0.0] * len(records)
    for ph in phases:
        vals = [float(r.get(ph, 0.0)) if isinstance(r.get(ph), Number) else 0.0 for r in records]
        ax.bar(range(len(records)), vals, bottom=bottom, label=ph.split("/", 1)[1])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(records)), [str(s) for s in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("seconds")
    ax.set_title("time per phase")
    ax.legend(fontsize=7)
    return _save(fig, path), ["time per phase"]
