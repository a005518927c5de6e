"""Clipped policy-gradient loss of GRPO / DAPO (docs/mcpo.md §2.1–§2.3; verl 0.6 `compute_policy_loss_vanilla`).

Every aggregate divides a *local* sum by a *global* count passed in (valid tokens or sequences of the
whole mini-batch across micro-batches and data-parallel ranks). The loss and every metric are therefore
additive: summing the values returned for the pieces of a mini-batch gives the whole mini-batch's value,
however it was split.
"""
from __future__ import annotations

from typing import Optional

import torch

from megatron_mcpo.algorithms._checks import check_choice, check_dtype

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_LOG_RATIO_CLAMP = 20.0  # verl's `kl_penalty` clamps log π_ref − log π_θ to ±20 before exp
KL_ESTIMATORS = ("k1", "k3")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    global_num_tokens: float,
    global_num_seqs: float,
    norm_length: Optional[float] = None,
) -> torch.Tensor:
    """Aggregate per-token values (B, T) under mask (B, T) into a scalar (verl `agg_loss`, global form).

      token-mean:              Σ_{i,t} m·x / global_num_tokens
      seq-mean-token-mean:     Σ_i (Σ_t m·x / max(Σ_t m, 1)) / global_num_seqs
      seq-mean-token-sum:      Σ_{i,t} m·x / global_num_seqs              (verl: token sum per sequence, seq mean)
      seq-mean-token-sum-norm: Σ_{i,t} m·x / (global_num_seqs · norm_length)   (Dr.GRPO, L_const = norm_length)
    global_num_seqs counts the mini-batch's sequences with at least one valid token.
    """
    check_choice("loss_agg_mode", mode, AGG_MODES)
    m = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * m).sum() / _positive("global_num_tokens", global_num_tokens)
    seqs = _positive("global_num_seqs", global_num_seqs)
    if mode == "seq-mean-token-mean":
        return ((values * m).sum(-1) / m.sum(-1).clamp_min(1)).sum() / seqs
    if mode == "seq-mean-token-sum":
        return (values * m).sum() / seqs
    if norm_length is None:
        raise ValueError("loss_agg_mode='seq-mean-token-sum-norm' needs norm_length "
                         "(L_const, e.g. the max response length)")
    return (values * m).sum() / (seqs * _positive("norm_length", norm_length))


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(π_θ‖π_ref) estimate, same shape as the inputs (verl `kl_penalty`).

      k1: log π_θ − log π_ref
      k3: ρ − log ρ − 1 with log ρ = clamp(log π_ref − log π_θ, ±20) and the result clamped to [−10, 10],
          as verl's `low_var_kl` does (without the first clamp exp overflows and the gradient is NaN).
    """
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    if estimator == "k1":
        return logprobs - ref_logprobs
    log_ratio = (ref_logprobs - logprobs).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
    loss_agg_mode: str,
    global_num_tokens: float,
    global_num_seqs: float,
    loss_agg_norm_length: Optional[float] = None,
    ratio_log_clamp: float = 20.0,
    entropy: Optional[torch.Tensor] = None,
    entropy_coef: float = 0.0,
    ref_logprobs: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    is_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss with asymmetric (DAPO clip-higher) and dual clip, entropy bonus and optional KL.

    Shapes: logprobs, old_logprobs, response_mask, entropy, ref_logprobs, is_weights (B, T); advantages (B,)
    or (B, T).
      ρ      = exp(clamp(logπ_θ − logπ_old, −ratio_log_clamp, ratio_log_clamp))
      ℓ_clip = max(−Âρ, −Â·clip(ρ, 1−ε_low, 1+ε_high))
      ℓ      = min(ℓ_clip, −c·Â) where Â < 0 (dual clip), else ℓ_clip
      ℓ     ← w·ℓ with w = is_weights (constants) when given: the rollout-mismatch correction
               (`rollout_correction`), 0 on masked tokens; denominators are unchanged
      loss   = agg(ℓ) − entropy_coef·agg(H) + kl_coef·agg(KL)        (agg = `aggregate` with loss_agg_mode)
    Returns (loss, metrics); metrics are detached scalars, each a local sum over a global count (additive):
    pg_loss, pg_clipfrac (upper/lower PPO clip active), pg_clipfrac_lower (dual clip active), ppo_kl
    (token mean of logπ_old − logπ_θ), entropy (token mean, when given), kl_loss (when ref_logprobs given).
    """
    shape = logprobs.shape
    for name, t in (("old_logprobs", old_logprobs), ("response_mask", response_mask), ("entropy", entropy),
                    ("ref_logprobs", ref_logprobs), ("is_weights", is_weights)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} like logprobs")
    check_dtype("logprobs", logprobs, "float")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (batch, tokens), got shape {tuple(shape)}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.shape not in ((shape[0], 1), shape):
        raise ValueError(f"advantages must be (B,) or (B, T) for logprobs of shape {tuple(shape)}, "
                         f"got {tuple(advantages.shape)}")
    if clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    if entropy_coef != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs the per-token entropy")
    if kl_coef != 0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")

    def agg(x: torch.Tensor, mode: str = loss_agg_mode) -> torch.Tensor:
        return aggregate(x, response_mask, mode, global_num_tokens=global_num_tokens,
                         global_num_seqs=global_num_seqs, norm_length=loss_agg_norm_length)

    log_ratio = (logprobs - old_logprobs).clamp(-ratio_log_clamp, ratio_log_clamp)
    ratio = log_ratio.exp()
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    loss_dual = -advantages * clip_ratio_c
    negative = advantages < 0
    per_token = torch.where(negative, torch.minimum(loss_ppo, loss_dual), loss_ppo)
    if is_weights is not None:
        per_token = per_token * is_weights.detach().to(per_token.dtype)

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return agg(x.detach().to(logprobs.dtype), "token-mean")

    pg_loss = agg(per_token)
    loss = pg_loss
    with torch.no_grad():
        metrics = {
            "pg_loss": pg_loss.detach(),
            "pg_clipfrac": token_mean(loss_clipped > loss_unclipped),
            "pg_clipfrac_lower": token_mean(negative & (loss_ppo > loss_dual)),
            "ppo_kl": token_mean(-log_ratio),
        }
    if entropy is not None:
        loss = loss - entropy_coef * agg(entropy)
        metrics["entropy"] = token_mean(entropy)
    if ref_logprobs is not None:
        kl_loss = agg(kl_penalty(logprobs, ref_logprobs, kl_estimator))
        loss = loss + kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
    return loss, metrics


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
