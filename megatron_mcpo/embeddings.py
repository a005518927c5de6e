"""`mcpo embed`: the paper's Fig. 4, a 2-D t-SNE of held-out responses' embeddings.

The policy (a checkpoint: `--set checkpoint.load_dir=...`) answers the held-out prompts (eval.files or
the synthetic suite) with the rollout settings; the verifiers mark each answer correct or not; one
forward pass gives the pooled response states h (what MCPO contrasts) and the projection head gives
u = g_φ(h). Both are embedded with t-SNE, coloured by domain and marked by correctness.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from megatron_mcpo.config import ConfigError
from megatron_mcpo.domains import DOMAINS

EXACT_TSNE_MAX = 3000


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, d] -> [N, 2] t-SNE (scikit-learn), perplexity capped below N/3 so small sets work."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError("mcpo embed needs scikit-learn: pip install 'megatron_mcpo[plot]'") from None

    n = x.shape[0]
    if n < 4:
        raise ValueError(f"embed: t-SNE needs at least 4 responses, got {n}")
    # Exact t-SNE up to a few thousand points (O(N^2), no approximation); Barnes-Hut's OpenMP threads spin
    # on a busy host (measured on 2 shared cores: 36 points took 113 s Barnes-Hut, 2.4 s exact).
    method = "exact" if n <= EXACT_TSNE_MAX else "barnes_hut"
    return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed,
                method=method).fit_transform(x)


def embedding_figure(panels: dict[str, np.ndarray], domains: list[str], correct: np.ndarray, path: str,
                     seed: int = 0) -> tuple[str, list[str]]:
    """One t-SNE scatter per {title: embeddings [N, d]}: colour = domain, ● correct / ✕ wrong.
    Returns (path, panel titles)."""
    from megatron_mcpo.plots import pyplot

    plt = pyplot()
    correct = np.asarray(correct, dtype=bool)
    dom = np.asarray(domains)
    colours = {d: plt.get_cmap("tab10")(i) for i, d in enumerate(DOMAINS)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (title, x) in zip(axes[0], panels.items()):
        xy = tsne_2d(np.asarray(x, dtype=np.float64), seed)
        for d in [d for d in DOMAINS if d in set(domains)]:
            for ok, marker in ((True, "o"), (False, "x")):
                sel = (dom == d) & (correct == ok)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], c=[colours[d]], marker=marker, s=18,
                               label=f"{d} ({'correct' if ok else 'wrong'})")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path, list(panels)


def held_out_embeddings(trainer) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(pooled states [N, d], domains, correctness [N]) of the rollouts of the held-out prompts (each
    data-parallel replica answers its share), gathered over the replicas. Collective over all ranks; pp=1."""
    import torch.distributed as dist

    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

    cfg, g = trainer.cfg, trainer.groups
    records = trainer.load_prompts(cfg.eval.files, cfg.data.seed + 1, cfg.eval.prompts_per_domain, "heldout")
    mine = list(enumerate(records))[g.dp_rank :: g.dp_size]
    rollouts, _ = trainer._replica_rollouts(mine, 0)
    batch = trainer.make_train_batch(rollouts)
    outs = forward_outputs(trainer.state.policy, split_microbatches(batch, cfg.parallel.micro_batch_size))
    local = (concat_outputs(outs).pooled.float().cpu().numpy(), [r.domain for r in rollouts],
             np.array([r.acc > 0 for r in rollouts]))  # pp=1 (embed_command): every rank has the outputs
    gathered = [None] * g.dp_size
    dist.all_gather_object(gathered, local, group=g.dp)
    return (np.concatenate([p[0] for p in gathered]), [d for p in gathered for d in p[1]],
            np.concatenate([p[2] for p in gathered]))


def embed_command(trainer, out_dir: str) -> str:
    """Draw <out_dir>/embeddings_<run.name>.png for the trainer's (resumed) policy; returns its path."""
    if trainer.groups.pp_size > 1:
        raise ConfigError("parallel.pp: mcpo embed runs with pp=1 (the pooled states live on the last stage)")
    if trainer.cfg.checkpoint.load_dir is None:
        print("embed: no checkpoint.load_dir: drawing the initial weights", flush=True)
    result = held_out_embeddings(trainer)
    path = os.path.join(out_dir, f"embeddings_{trainer.cfg.run.name}.png")
    if trainer.groups.world_rank == 0:
        pooled, domains, correct = result
        panels = {"pooled h (policy)": pooled}
        if trainer.projector is not None:
            with torch.no_grad():
                panels["projected u = g(h)"] = trainer.projector.head(torch.from_numpy(pooled)).numpy()
        os.makedirs(out_dir, exist_ok=True)
        embedding_figure(panels, domains, correct, path, seed=trainer.cfg.run.seed)
    return path
