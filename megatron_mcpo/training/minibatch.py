"""One PPO mini-batch = one optimizer step: the GRPO/DAPO policy loss plus λ·L_CL (MCPO).

This rank's share of the mini-batch is a dict of tensors (leading dim n = its rollouts):
  tokens [n, s], response_mask [n, s] bool, optional old_logprobs [n, s], advantages [n], rewards [n],
  prompt_ids [n], domain_ids [n]; optional ref_logprobs [n, s]; optional is_weights [n, s] (rollout
  mismatch correction, algorithms/rollout_correction.py); optional pooled_old [n, d] (the pooled states
  of the old-log-prob pass, on the last pipeline stage).
Gradient modes for the contrastive term (docs/mcpo.md §8; `mcpo.grad_mode`):
  exact        gradient cache over the gathered pool (one graph when the local mini-batch is one
               micro-batch); the pre-pass is skipped when `reuse_old_pooled` (θ = rollout policy).
  local_anchor each micro-batch's anchors with grad against the detached pool (approximate).
  stale        exact's surrogate, but G computed at the old-log-prob pass states (approximate).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.mcpo import (
    mcpo_anchor_subset_loss,
    mcpo_contrastive_loss,
    mcpo_kernel_kwargs,
    mcpo_pool_normalizers,
)
from megatron_mcpo.algorithms.policy_loss import policy_loss_kwargs, ppo_policy_loss
from megatron_mcpo.config import Config
from megatron_mcpo.distributed import all_gather_with_grad, broadcast_object
from megatron_mcpo.models.projection import ProjectionTrainer
from megatron_mcpo.training.pool import PoolMeta, gather_meta, gather_rows, pool_gradient, surrogate
from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches, train_step


def global_counts(local: dict, group) -> tuple[float, float]:
    """(valid response tokens, sequences with at least one) over the whole mini-batch (all DP ranks)."""
    m = local["response_mask"]
    c = torch.stack([m.sum(), (m.sum(-1) > 0).sum()]).to(torch.float64)  # on the mask's device (NCCL)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(c, group=group)
    return float(c[0]), float(c[1])


def train_minibatch(
    state, projector: Optional[ProjectionTrainer], local: dict, cfg: Config, reuse_old_pooled: bool = False,
    on_logprobs: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
) -> dict:
    """Run one optimizer step on this rank's share of a PPO mini-batch; returns reduced metrics.

    Without `old_logprobs` in `local`, π_old is the policy being trained (the batch's only update, θ_old =
    θ): the loss takes log π_old = log π detached (ratio 1, gradient A·∇log π; TRL's num_iterations=1).
    `on_logprobs(logprobs [b, s], rows [b])` receives each micro-batch's detached log-probs."""
    g = state.policy.groups
    n = local["tokens"].shape[0]
    local = {**local, "row": torch.arange(n, device=local["tokens"].device)}
    pooled_old = local.pop("pooled_old", None)
    microbatches = split_microbatches(local, cfg.parallel.micro_batch_size)
    num_tokens, num_seqs = global_counts(local, g.dp)
    pl_kwargs = policy_loss_kwargs(cfg.algorithm, cfg.rollout.max_response_length)
    mc = cfg.mcpo
    use_mcpo = cfg.algorithm.is_mcpo
    warm = state.step < mc.warmup_batches
    mode = mc.grad_mode
    single_graph = use_mcpo and mode == "exact" and len(microbatches) == 1
    meta = PoolMeta(local["rewards"].float(), local["prompt_ids"].long(), local["domain_ids"].long())

    # The pool's states, where the mode needs them before the training passes.
    pool_states = None
    if use_mcpo and not single_graph:
        reuse = reuse_old_pooled or mode == "stale"
        outs = None if reuse else forward_outputs(state.policy, microbatches)  # collective over PP
        if g.is_last_stage:
            if reuse and pooled_old is None:
                raise ValueError("train_minibatch: reuse of old pooled states requested but 'pooled_old' is missing")
            pool_states = pooled_old if reuse else concat_outputs(outs).pooled

    pool_metrics: dict = {}
    G = anchor_ctx = None
    if use_mcpo and g.is_last_stage and pool_states is not None:
        projector.zero_grad()
        if mode in ("exact", "stale"):
            G, pool_metrics = pool_gradient(pool_states, meta, projector, mc, g.dp, g.dp_rank, backbone_grad=not warm)
        else:
            anchor_ctx = _local_anchor_context(pool_states, meta, projector, mc, g)
            pool_metrics = anchor_ctx.pop("metrics")
    elif use_mcpo and g.is_last_stage:
        projector.zero_grad()

    def loss_fn(out, mb):
        current = out.logprobs.detach()
        if on_logprobs is not None:
            on_logprobs(current, mb["row"])
        loss, metrics = ppo_policy_loss(
            out.logprobs, mb.get("old_logprobs", current), mb["advantages"], mb["response_mask"],
            global_num_tokens=num_tokens, global_num_seqs=num_seqs, entropy=out.entropy,
            ref_logprobs=mb.get("ref_logprobs"), is_weights=mb.get("is_weights"), **pl_kwargs,
        )
        if use_mcpo:  # docs/mcpo.md §10 num_pos_per_microbatch: summed here, averaged over micro-batches below
            metrics["mcpo/num_pos_per_microbatch"] = (mb["rewards"] >= mc.positive_threshold).sum().double()
        if G is not None:
            loss = loss + surrogate(out.pooled, G[mb["row"]])
        elif anchor_ctx is not None:
            cl, parts = _local_anchor_loss(out.pooled, mb["row"], anchor_ctx, projector, mc, g, warm)
            loss = loss + mc.cl_coef * cl
            metrics.update({f"mcpo/{k}": v for k, v in parts.items()})
        elif single_graph:
            h = out.pooled.detach() if warm else out.pooled
            H = all_gather_with_grad(h, g.dp) if not warm else gather_rows(h, g.dp)
            full = gather_meta(meta, g.dp)
            cl, m = mcpo_contrastive_loss(projector.head(H), full.rewards, full.prompt_ids, full.domain_ids, mc)
            # Every DP rank computes the whole pool's loss: each carries 1/dp of it.
            loss = loss + mc.cl_coef * cl / g.dp_size
            pool_metrics.update({f"mcpo/{k}": float(v) for k, v in m.items()}, **{"mcpo/warmup_active": float(warm)})
        return loss, metrics

    def projector_step() -> dict:
        if anchor_ctx is not None and g.dp_size > 1:
            # Each rank holds dp × its anchors' share (megatron's loss scaling): the mean over ranks is the sum.
            for p in projector.head.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG, group=g.dp)
        return projector.step()

    use_proj = use_mcpo and g.is_last_stage
    metrics = train_step(state, microbatches, loss_fn, extra_step=projector_step if use_proj else None)
    if use_mcpo:
        metrics["mcpo/num_pos_per_microbatch"] /= len(microbatches) * g.dp_size
    metrics.update(broadcast_object(pool_metrics, g.pp, src=g.pp_size - 1))
    return metrics


def _local_anchor_context(pool_states, meta, projector, mc, g) -> dict:
    """Detached pool keys, their metadata and the pool-level normalisers for the local-anchor mode."""
    with torch.no_grad():
        H = gather_rows(pool_states.float(), g.dp)
        full = gather_meta(meta, g.dp)
        u_pool = projector.head(H)
        kw = mcpo_kernel_kwargs(mc)
        normalizers = mcpo_pool_normalizers(
            u_pool, full.rewards, full.prompt_ids, full.domain_ids,
            positive_threshold=kw["positive_threshold"], norm=kw["norm"], weight_mode=kw["weight_mode"],
        )
        _, pool_metrics = mcpo_contrastive_loss(u_pool, full.rewards, full.prompt_ids, full.domain_ids, mc)
    metrics = {f"mcpo/{k}": float(v) for k, v in pool_metrics.items() if k not in ("loss_cross", "loss_in")}
    return {"u_pool": u_pool, "full": full, "normalizers": normalizers, "offset": g.dp_rank * pool_states.shape[0],
            "metrics": metrics}


def _local_anchor_loss(pooled, rows, ctx, projector, mc, g, warm):
    """This micro-batch's anchors (with grad) against the detached pool; pool-level normalisers."""
    h = pooled.detach() if warm else pooled
    global_rows = ctx["offset"] + rows
    u = ctx["u_pool"].index_put((global_rows,), projector.head(h))
    full = ctx["full"]
    return mcpo_anchor_subset_loss(
        u, full.rewards, full.prompt_ids, full.domain_ids, global_rows, ctx["normalizers"], **mcpo_kernel_kwargs(mc)
    )
