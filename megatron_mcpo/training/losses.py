"""The config's loss options bound once at set-up: the math in algorithms/ takes plain arguments, never a
config (the MCPO term's kernel is bound in training/mcpo_term.py)."""
from __future__ import annotations

from functools import partial

from megatron_mcpo.algorithms.policy_loss import ppo_policy_loss
from megatron_mcpo.config import Config, RolloutCorrectionConfig


def policy_loss_from_config(cfg: Config):
    """`ppo_policy_loss` with the options `cfg.algorithm` selects bound; the caller passes the tensors and
    the global token/sequence counts. (L_const of seq-mean-token-sum-norm defaults to
    rollout.max_response_length, resolved when the config is built; docs/mcpo.md §2.2.)"""
    a = cfg.algorithm
    return partial(ppo_policy_loss, clip_ratio_low=a.clip_ratio_low, clip_ratio_high=a.clip_ratio_high,
                   clip_ratio_c=a.clip_ratio_c, ratio_log_clamp=a.ratio_log_clamp, loss_agg_mode=a.loss_agg_mode,
                   loss_agg_norm_length=a.loss_agg_norm_length, entropy_coef=a.entropy_coef, kl_coef=a.kl_coef,
                   kl_estimator=a.kl_estimator)


def correction_knobs(rc: RolloutCorrectionConfig) -> dict:
    """The `rollout_correction` keyword arguments algorithm.rollout_correction selects (None: off)."""
    return dict(tis_cap=rc.tis_cap, seq_mask_c=rc.seq_mask_c, token_mask_low=rc.token_mask_low,
                token_mask_high=rc.token_mask_high)
