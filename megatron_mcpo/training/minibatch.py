"""One PPO mini-batch = one optimizer step: the GRPO/DAPO policy loss plus the contrastive term (MCPO).

This rank's share of the mini-batch is a dict of tensors (leading dim n = its rollouts):
  tokens [n, s], response_mask [n, s] bool, optional old_logprobs [n, s], advantages [n], rewards [n],
  group_ids [n], domain_ids [n]; optional ref_logprobs [n, s]; optional is_weights [n, s] (rollout
  mismatch correction, algorithms/rollout_correction.py); optional pooled_old [n, d] (the pooled states
  of the old-log-prob pass, on the last pipeline stage).
The contrastive term is one object per `mcpo.grad_mode` (training/mcpo_term.py); the policy loss is
`ppo_policy_loss` with the run's options bound (training/losses.py).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from megatron_mcpo.training.mcpo_term import ContrastiveTerm
from megatron_mcpo.training.train_step import split_microbatches, train_step


def global_counts(local: dict, group) -> tuple[float, float]:
    """(valid response tokens, sequences with at least one) over the whole mini-batch (all DP ranks)."""
    m = local["response_mask"]
    c = torch.stack([m.sum(), (m.sum(-1) > 0).sum()]).to(torch.float64)  # on the mask's device (NCCL)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(c, group=group)
    return float(c[0]), float(c[1])


def train_minibatch(state, term: ContrastiveTerm, policy_loss: Callable, local: dict, micro_batch_size: int,
                    reuse_old_pooled: bool = False,
                    on_logprobs: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None) -> dict:
    """Run one optimizer step on this rank's share of a PPO mini-batch; returns reduced metrics.
    `reuse_old_pooled`: θ still equals the rollout policy, so the term may use `local["pooled_old"]`.

    Without `old_logprobs` in `local`, π_old is the policy being trained (the batch's only update, θ_old =
    θ): the loss takes log π_old = log π detached (ratio 1, gradient A·∇log π; TRL's num_iterations=1).
    `on_logprobs(logprobs [b, s], rows [b])` receives each micro-batch's detached log-probs."""
    n = local["tokens"].shape[0]
    local = {**local, "row": torch.arange(n, device=local["tokens"].device)}
    pooled_old = local.pop("pooled_old", None)
    microbatches = split_microbatches(local, micro_batch_size)
    num_tokens, num_seqs = global_counts(local, state.policy.groups.dp)
    term.prepare(state, microbatches, local, pooled_old, reuse_old_pooled)

    def loss_fn(out, mb):
        current = out.logprobs.detach()
        if on_logprobs is not None:
            on_logprobs(current, mb["row"])
        loss, metrics = policy_loss(
            out.logprobs, mb.get("old_logprobs", current), mb["advantages"], mb["response_mask"],
            global_num_tokens=num_tokens, global_num_seqs=num_seqs, entropy=out.entropy,
            ref_logprobs=mb.get("ref_logprobs"), is_weights=mb.get("is_weights"),
        )
        extra, term_metrics = term.loss(out, mb)
        metrics.update(term_metrics)
        return (loss if extra is None else loss + extra), metrics

    metrics = train_step(state, microbatches, loss_fn, extra_step=term.step_projector)
    return term.finish(metrics, len(microbatches))
