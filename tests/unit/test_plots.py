"""`mcpo plot` draws the expected figures and panels from a metrics log; the t-SNE figure of embeddings."""
import json

import numpy as np
import pytest

from megatron_mcpo.plots import load_log, plot_log, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _log(tmp_path, records):
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _mcpo_run():
    recs = [{"step": 0, "eval/all/acc": 0.1, "eval/math/acc": 0.2, "eval/code/acc": 0.0, "time/eval": 3.0}]
    for s in range(1, 4):
        recs.append({
            "step": s, "reward/math/score": 0.1 * s, "reward/math/acc": 0.1 * s, "reward/code/score": 0.05 * s,
            "reward/code/acc": 0.0, "reward/all/acc": 0.07 * s, "mcpo/pos_ratio": 0.2 + 0.1 * s, "mcpo/loss_cl": 1.0 / s,
            "mcpo/loss_cross": 0.5 / s, "mcpo/loss_in": 0.4 / s, "mcpo/mean_cross_pos_logit": 2.0, "mcpo/mean_in_pos_logit": 3.0,
            "mcpo/mean_neg_logit": -1.0, "rollout/logprob_abs_diff_mean": 1e-4, "rollout/logprob_abs_diff_max": 1e-3,
            "time/rollout": 5.0, "time/old_logprob": 1.0, "time/train": 4.0, "time/refit": 0.5,
            "samples": [{"prompt": "p", "response": "r", "score": 1.0}],
        })
    recs[-1].update({"eval/all/acc": 0.3, "eval/math/acc": 0.5, "eval/code/acc": 0.1, "time/eval": 2.5})
    return recs


def test_plots_of_an_mcpo_run(tmp_path):
    written = plot_log(_log(tmp_path, _mcpo_run()), str(tmp_path / "png"))
    names = {p.rsplit("/", 1)[1]: titles for p, titles in written.items()}
    assert names == {
        "rewards.png": ["train reward", "train accuracy", "held-out accuracy"],
        "mcpo.png": ["positive ratio", "contrastive loss (λ-free)", "cross-domain loss", "in-domain loss",
                     "cross-domain positive similarity / τ", "in-domain positive similarity / τ", "negative similarity / τ"],
        "mismatch.png": ["train/rollout log-prob mismatch"],
        "time.png": ["time per phase"],
    }
    sizes = {n: _png_size(p) for n, p in zip(names, written)}
    assert sizes["rewards.png"] == (1350, 324) and sizes["mcpo.png"] == (1350, 972)  # 3 columns x rows at 90 dpi


def test_grpo_run_has_no_mcpo_figure_and_local_anchor_keys_fall_back(tmp_path):
    recs = [{k: v for k, v in r.items() if not k.startswith("mcpo/")} for r in _mcpo_run()]
    assert "mcpo.png" not in {p.rsplit("/", 1)[1] for p in plot_log(_log(tmp_path, recs), str(tmp_path / "a"))}
    recs = [dict(r, **{"mcpo/loss_cross_attr": 0.3}) for r in recs]  # grad_mode=local_anchor logs the attr terms
    (titles,) = [t for p, t in plot_log(_log(tmp_path, recs), str(tmp_path / "b")).items() if p.endswith("mcpo.png")]
    assert titles == ["cross-domain loss"]


def test_bad_log_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_log(str(path))
    path.write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: a metrics record needs a numeric 'step'"):
        load_log(str(path))


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    """Crashed after step 4, resumed from the checkpoint of step 2 (its eval-before-train at step 2 again):
    the curves follow the resumed run; steps before the checkpoint stay."""
    first = [{"step": 0, "eval/all/acc": 0.1}] + [{"step": s, "pg_loss": float(s)} for s in (1, 2, 3, 4)]
    resumed = [{"step": 2, "eval/all/acc": 0.3}] + [{"step": s, "pg_loss": -float(s)} for s in (3, 4, 5)]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in first + resumed))
    records = load_log(str(path))
    assert series(records, "pg_loss") == ([1, 2, 3, 4, 5], [1.0, 2.0, -3.0, -4.0, -5.0])
    assert series(records, "eval/all/acc") == ([0, 2], [0.1, 0.3])
    assert len(path.read_text().splitlines()) == 9  # the file keeps every record


def test_cli_plot(tmp_path, capsys):
    from megatron_mcpo.cli import main

    assert main(["plot", _log(tmp_path, _mcpo_run()), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in out) == ["mcpo.png", "mismatch.png", "rewards.png", "time.png"]


def test_embedding_figure_separates_clusters(tmp_path):
    from megatron_mcpo.embeddings import embedding_figure, tsne_2d

    rng = np.random.default_rng(0)
    centres = {"math": 0.0, "code": 10.0, "safety": -10.0}
    domains = [d for d in centres for _ in range(12)]
    x = np.stack([rng.normal(centres[d], 0.5, size=16) for d in domains])
    xy = tsne_2d(x, seed=0)
    means = {d: xy[[i for i, e in enumerate(domains) if e == d]].mean(0) for d in centres}
    spread = max(np.linalg.norm(xy[i] - means[d]) for i, d in enumerate(domains))
    assert min(np.linalg.norm(means[a] - means[b]) for a in centres for b in centres if a < b) > spread  # 3 clear clusters
    correct = np.arange(len(domains)) % 2 == 0
    path, titles = embedding_figure({"pooled h": x, "projected u": x[:, :8]}, domains, correct, str(tmp_path / "e.png"))
    assert titles == ["pooled h", "projected u"] and _png_size(path) == (990, 450)
    with pytest.raises(ValueError, match="at least 4 responses"):
        tsne_2d(x[:3])
