"""Per-token log-probs and entropy from vocab-sharded logits, never gathering the full vocabulary and
never holding an fp32 [tokens, vocab] tensor.

For N tokens with logits x [N, V] (this rank holds the columns [v0, v0 + V_local)), targets y and a
sampling temperature T > 0, with z = x / T:
  lse_t  = log Σ_v exp z_{t,v},   logp_t = z_{t,y_t} − lse_t,   H_t = lse_t − Σ_v p_{t,v} z_{t,v}
with p = softmax(z), the sums running over the real vocabulary only (padded-vocab columns, index >=
valid_vocab, have probability 0 and get no gradient), reduced over the tensor-parallel group.

Memory. The logits arrive in the model's dtype (bf16 on GPU: 2 bytes per entry). Computing the softmax
over the whole [N, V] block in fp32 and saving p and the shifted logits for backward (the previous
implementation) holds 8 bytes per entry from forward to backward, plus ~12 more transiently in
backward: at N = 8k tokens and V = 128k that is 8 GiB saved and ~20 GiB at peak, against 2 GiB of
logits. Here every fp32 pass runs over chunks of `chunk_tokens` tokens; what survives the forward is the
input logits themselves (their own dtype, shared with the caller; the temperature is applied per fp32 chunk,
never as a scaled copy of the logits) and three fp32 numbers per token
(lse, entropy, target), and backward recomputes p chunk by chunk into the logits-dtype gradient. Peak
extra memory is therefore the gradient (the size of the logits, which any backward must produce) plus
two fp32 chunk buffers: 2 × chunk_tokens × V_local × 4 bytes (512 MiB by default).
TP costs two all-reduces per call (the row max, then [Σ e^s, Σ e^s·s, s_y] stacked), for any chunking.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

_CHUNK_ELEMENTS = 1 << 26  # fp32 entries per chunk buffer: 256 MiB


def default_chunk_tokens(local_vocab: int) -> int:
    """Tokens per chunk so that one fp32 chunk buffer holds ~2^26 entries (512 tokens at 128k)."""
    return max(1, _CHUNK_ELEMENTS // max(1, local_vocab))


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    """Forward: logp = z_y − lse and H = lse − Σ p z, chunked over tokens (see the module doc).

    Backward (local shard only; the output layer's own backward reduces over TP), per chunk from the
    saved logits and lse:  d logp / dz_v = 1[v = y] − p_v,   dH / dz_v = −p_v (log p_v + H),  and
    d/dx = (d/dz) / T.
    """

    @staticmethod
    def forward(ctx, logits, labels, vocab_start, valid_vocab, group, chunk, temperature):
        local_v = logits.shape[-1]
        z = logits.reshape(-1, local_v)  # a view for contiguous logits
        y = labels.reshape(-1)
        n = z.shape[0]
        # Columns of this shard that are real tokens (Megatron pads the vocab at its end).
        n_valid = min(max(valid_vocab - vocab_start, 0), local_v)
        local = (y >= vocab_start) & (y < vocab_start + n_valid)
        idx = (y - vocab_start).clamp(0, max(n_valid - 1, 0)).unsqueeze(-1)
        inv_t = 1.0 / temperature
        # Pass 1: the row max of x, exact in the logits' own dtype (max z = max x / T: T > 0).
        if n_valid:
            m = z[:, :n_valid].amax(dim=-1).float()
        else:
            m = torch.full((n,), float("-inf"), device=z.device)
        if group is not None:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        # Pass 2, per chunk in fp32 with s = (x − m) / T: Σ e^s, Σ e^s·s and s at the target.
        stats = torch.zeros(3, n, device=z.device)
        for a in range(0, n if n_valid else 0, chunk):
            e_ = min(a + chunk, n)
            s = z[a:e_, :n_valid].to(torch.float32, copy=True).sub_(m[a:e_].unsqueeze(-1))
            if inv_t != 1.0:
                s.mul_(inv_t)
            stats[2, a:e_] = s.gather(-1, idx[a:e_]).squeeze(-1)
            p = s.exp()
            stats[0, a:e_] = p.sum(dim=-1)
            stats[1, a:e_] = p.mul_(s).sum(dim=-1)
            del s, p
        stats[2].masked_fill_(~local, 0.0)
        if group is not None:
            dist.all_reduce(stats, group=group)
        log_z = stats[0].log()
        logp = stats[2] - log_z
        entropy = log_z - stats[1] / stats[0]
        lse = m * inv_t + log_z
        ctx.save_for_backward(logits, idx, local, lse, entropy)
        ctx.meta = (n_valid, chunk, inv_t)
        shape = labels.shape
        return logp.view(shape), entropy.view(shape)

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        logits, idx, local, lse, entropy = ctx.saved_tensors
        n_valid, chunk, inv_t = ctx.meta
        local_v = logits.shape[-1]
        z = logits.reshape(-1, local_v)
        g_logp, g_entropy = g_logp.reshape(-1).float(), g_entropy.reshape(-1).float()
        grad = torch.empty_like(z, memory_format=torch.contiguous_format)
        grad[:, n_valid:] = 0
        g_target = torch.where(local, g_logp, torch.zeros_like(g_logp)).unsqueeze(-1)
        for a in range(0, z.shape[0] if n_valid else 0, chunk):
            e_ = min(a + chunk, z.shape[0])
            log_p = z[a:e_, :n_valid].to(torch.float32, copy=True)
            if inv_t != 1.0:
                log_p.mul_(inv_t)
            log_p.sub_(lse[a:e_].unsqueeze(-1))
            p = log_p.exp()
            # −p (g_logp + g_H (log p + H)), in place in log_p
            g = log_p.add_(entropy[a:e_].unsqueeze(-1)).mul_(g_entropy[a:e_].unsqueeze(-1))
            g = g.add_(g_logp[a:e_].unsqueeze(-1)).mul_(p).neg_()
            del p
            g.scatter_add_(-1, idx[a:e_], g_target[a:e_])
            if inv_t != 1.0:
                g.mul_(inv_t)
            grad[a:e_, :n_valid] = g
            del g, log_p
        return grad.view(logits.shape), None, None, None, None, None, None


def vocab_parallel_logprobs_entropy(
    logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, valid_vocab: int, group=None,
    chunk_tokens: Optional[int] = None, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `labels` and the entropy of the softmax over the full (sharded) vocabulary.

    logits: [..., V_local], this rank's vocab shard starting at global index `vocab_start`; pass them
    contiguous (a strided slice such as logits[:, :-1] is copied once, in the logits' dtype).
    labels: [...] global token ids. valid_vocab: the true vocab size (columns beyond it are padding).
    group: the tensor-parallel group (None for an unsharded vocab). chunk_tokens: tokens per fp32 pass
    (default: `default_chunk_tokens`). temperature: T of softmax(logits / T) (> 0). Returns fp32 ([...], [...]).
    """
    if group is not None and dist.get_world_size(group) == 1:
        group = None
    chunk = chunk_tokens if chunk_tokens is not None else default_chunk_tokens(logits.shape[-1])
    if chunk < 1:
        raise ValueError(f"vocab_parallel_logprobs_entropy: chunk_tokens must be >= 1, got {chunk}")
    if not temperature > 0:
        raise ValueError(f"vocab_parallel_logprobs_entropy: temperature must be > 0, got {temperature}")
    return _VocabParallelLogprobEntropy.apply(logits, labels, vocab_start, valid_vocab, group, chunk, float(temperature))
