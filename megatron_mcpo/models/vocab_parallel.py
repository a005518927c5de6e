"""Per-token log-probs and entropy from vocab-sharded logits, never gathering the full vocabulary."""
from __future__ import annotations

import torch
import torch.distributed as dist


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    """Forward: logp_t = z_{t,y_t} - lse_t and H_t = lse_t - Σ_v p_{t,v} z_{t,v}, reduced over the TP group.

    Backward (local shard only; the output layer's own backward reduces over TP):
      d logp / dz_v = 1[v = y] - p_v,  dH / dz_v = -p_v (log p_v + H).
    """

    @staticmethod
    def forward(ctx, logits, labels, vocab_start, valid_vocab, group):
        z = logits.float()
        local_v = z.shape[-1]
        # Padded-vocab rows (index >= the true vocab size) are not tokens: give them probability 0.
        col = torch.arange(vocab_start, vocab_start + local_v, device=z.device)
        pad = col >= valid_vocab
        if bool(pad.any()):
            z = z.masked_fill(pad, float("-inf"))
        m = z.max(dim=-1).values
        if group is not None:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        shifted = z - m.unsqueeze(-1)
        sumexp = shifted.exp().sum(dim=-1)
        local = (labels >= vocab_start) & (labels < vocab_start + local_v)
        idx = (labels - vocab_start).clamp(0, local_v - 1)
        target = torch.where(local, shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1), torch.zeros_like(m))
        if group is not None:
            dist.all_reduce(sumexp, group=group)
            dist.all_reduce(target, group=group)
        log_z = sumexp.log()
        p = (shifted - log_z.unsqueeze(-1)).exp()
        p_shifted = torch.where(pad, torch.zeros_like(p), p * shifted).sum(dim=-1)
        if group is not None:
            dist.all_reduce(p_shifted, group=group)
        logp = target - log_z
        entropy = log_z - p_shifted
        ctx.save_for_backward(p, shifted, log_z, entropy, idx, local)
        ctx.pad = pad
        ctx.logits_dtype = logits.dtype
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        p, shifted, log_z, entropy, idx, local = ctx.saved_tensors
        log_p = torch.where(ctx.pad, torch.zeros_like(shifted), shifted - log_z.unsqueeze(-1))
        grad = -p * (g_logp.unsqueeze(-1) + g_entropy.unsqueeze(-1) * (log_p + entropy.unsqueeze(-1)))
        onehot_g = torch.where(local, g_logp, torch.zeros_like(g_logp))
        grad.scatter_add_(-1, idx.unsqueeze(-1), onehot_g.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None, None, None, None


def vocab_parallel_logprobs_entropy(
    logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, valid_vocab: int, group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `labels` and the entropy of the softmax over the full (sharded) vocabulary.

    logits: [..., V_local], this rank's vocab shard starting at global index `vocab_start`.
    labels: [...] global token ids. valid_vocab: the true vocab size (rows beyond it are padding).
    group: the tensor-parallel group (None for an unsharded vocab). Returns fp32 ([...], [...]).
    """
    if group is not None and dist.get_world_size(group) == 1:
        group = None
    return _VocabParallelLogprobEntropy.apply(logits, labels, vocab_start, valid_vocab, group)
