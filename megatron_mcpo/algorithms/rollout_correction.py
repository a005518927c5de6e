"""Rollout–training mismatch correction (TIS, sequence-level masked IS, ICEPOP token masking).

The engine samples from π_rollout (vLLM's kernels, its precision); the loss's π_old is Megatron's
re-computation at the same weights. They differ (kernels, bf16, FP8, a stale refit), which makes the
update off-policy. Per response token, with both log-probs at the sampling temperature,

  log r_t = clamp(log π_old(y_t) − log π_rollout(y_t), ±20),   r_t = π_train / π_rollout

and the per-token policy-gradient term is multiplied by a constant weight w_t (policy_loss.ppo_policy_loss,
`is_weights`):

  TIS (token-level truncated IS, cap C):     w_t ← min(r_t, C)
  masked sequence IS (threshold c):          w_t ← 0 for every token of sequence i when
                                             g_i = exp(mean_t log r_t) ∉ [1/c, c]
  ICEPOP token masking (low α, high β):      w_t ← 0 where r_t ∉ [α, β]

Off knobs leave w at 1; on knobs multiply. Masked tokens keep their place in the loss's denominators, as
in ICEPOP's objective (1/Σ|o_i| Σ_i Σ_t M(r_t)·ℓ_t).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


LOG_RATIO_CLAMP = 20.0
MAX_KEYS = ("rollout_corr/ratio_max",)  # reduced with MAX across ranks; every other metric is a partial sum


def rollout_correction(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    global_num_tokens: float,
    global_num_seqs: float,
    tis_cap: Optional[float] = None,
    seq_mask_c: Optional[float] = None,
    token_mask_low: Optional[float] = None,
    token_mask_high: Optional[float] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weights w (B, T) (0 off the response) and metrics, from old_logprobs/rollout_logprobs (B, T) and
    response_mask (B, T) bool. Formulas in the module docstring.

    Metrics are local sums over the global counts passed in (so summing them over ranks gives the global
    value), except rollout_corr/ratio_max (reduce with MAX; `reduce_correction_metrics` does both):
      mismatch_kl_k3   token mean of r − log r − 1 (k3 estimate of KL(π_rollout ‖ π_train))
      mismatch_kl_k1   token mean of log π_rollout − log π_train
      ratio_mean/max   of r_t over response tokens
      weight_mean      token mean of the applied w (masked tokens count as 0)
      tis_clipped_frac tokens whose r_t exceeded the TIS cap
      token_masked_frac, seq_masked_frac   tokens with w = 0 by either mask; sequences dropped by the
                                           sequence mask
    """
    shape = old_logprobs.shape
    if rollout_logprobs.shape != shape or response_mask.shape != shape or old_logprobs.dim() != 2:
        raise ValueError(f"old_logprobs, rollout_logprobs and response_mask must share one (B, T) shape, got "
                         f"{tuple(shape)}, {tuple(rollout_logprobs.shape)}, {tuple(response_mask.shape)}")
    if tis_cap is not None and tis_cap < 1:
        raise ValueError(f"tis_cap must be >= 1, got {tis_cap}")
    if seq_mask_c is not None and seq_mask_c < 1:
        raise ValueError(f"seq_mask_c must be >= 1, got {seq_mask_c}")
    if (token_mask_low is None) != (token_mask_high is None):
        raise ValueError("token_mask_low and token_mask_high go together")
    if token_mask_low is not None and not 0 <= token_mask_low < 1 < token_mask_high:
        raise ValueError(f"need 0 <= token_mask_low < 1 < token_mask_high, got {token_mask_low}, {token_mask_high}")
    for name, v in (("global_num_tokens", global_num_tokens), ("global_num_seqs", global_num_seqs)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")

    # float64 inside: the metrics resolve mismatches of 1e-7 (k3 ≈ log²r/2 underflows in fp32)
    m = response_mask.to(torch.float64)
    log_r = ((old_logprobs.double() - rollout_logprobs.double()) * m).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).detach()
    r = log_r.exp()
    w = m.clone()
    if tis_cap is not None:
        w = w * r.clamp(max=tis_cap)
    token_keep = torch.ones(shape, dtype=torch.bool, device=old_logprobs.device)
    if token_mask_low is not None:
        token_keep = (r >= token_mask_low) & (r <= token_mask_high)
    lengths = m.sum(-1)
    has_tokens = lengths > 0
    seq_keep = torch.ones_like(has_tokens)
    if seq_mask_c is not None:
        geo = (log_r.sum(-1) / lengths.clamp_min(1)).exp()
        seq_keep = ((geo >= 1.0 / seq_mask_c) & (geo <= seq_mask_c)) | ~has_tokens
    keep = token_keep & seq_keep[:, None]
    w = w * keep.to(w.dtype)

    def token_sum(x: torch.Tensor) -> torch.Tensor:
        return (x * m).sum() / global_num_tokens

    valid = response_mask.bool()
    metrics = {
        "rollout_corr/mismatch_kl_k3": token_sum(r - log_r - 1),
        "rollout_corr/mismatch_kl_k1": token_sum(-log_r),
        "rollout_corr/ratio_mean": token_sum(r),
        "rollout_corr/ratio_max": r[valid].max() if bool(valid.any()) else r.new_zeros(()),
        "rollout_corr/weight_mean": token_sum(w),
        "rollout_corr/tis_clipped_frac": token_sum((r > tis_cap).to(m.dtype)) if tis_cap is not None else m.new_zeros(()),
        "rollout_corr/token_masked_frac": token_sum((~keep).to(m.dtype)),
        "rollout_corr/seq_masked_frac": ((~seq_keep) & has_tokens).sum().to(m.dtype) / global_num_seqs,
    }
    return w.to(old_logprobs.dtype), {k: v.detach() for k, v in metrics.items()}


def reduce_correction_metrics(metrics: dict[str, torch.Tensor], group) -> dict[str, float]:
    """Global values over the ranks of `group` (None: one process): partial sums summed, maxima maxed."""
    sums = sorted(k for k in metrics if k not in MAX_KEYS)
    maxes = sorted(k for k in metrics if k in MAX_KEYS)
    # on the metrics' device: NCCL reduces device tensors only (a CPU tensor fails there at DP > 1)
    s = torch.stack([metrics[k].double() for k in sums])
    mx = torch.stack([metrics[k].double() for k in maxes])
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(s, group=group)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
    return {**{k: float(v) for k, v in zip(sums, s)}, **{k: float(v) for k, v in zip(maxes, mx)}}
