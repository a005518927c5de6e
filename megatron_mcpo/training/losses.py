"""The policy loss with the run's options bound, built once at set-up (the math in algorithms/ takes
plain arguments, never a config)."""
from __future__ import annotations

from functools import partial

from megatron_mcpo.algorithms.policy_loss import policy_loss_kwargs, ppo_policy_loss
from megatron_mcpo.config import Config


def policy_loss_from_config(cfg: Config):
    """`ppo_policy_loss` with the options `cfg.algorithm` selects bound; the caller passes the tensors and
    the global token/sequence counts."""
    return partial(ppo_policy_loss, **policy_loss_kwargs(cfg.algorithm, cfg.rollout.max_response_length))
