"""RL algorithms as pure tensor functions: advantages, policy loss, DAPO pieces, the MCPO contrastive loss.

Algorithm names (`algorithm.name`) and what each one switches on:

* ``grpo``: GRPO advantages (per-prompt mean/std, docs/mcpo.md §2.1), PPO-clip policy loss with ε_low = ε_high =
  0.2 and dual clip c = 3, token-mean aggregation, entropy bonus.
* ``dapo``: full DAPO (arXiv 2503.14476, docs/mcpo.md §2.3): clip-higher (ε_high = 0.28), dynamic sampling
  (`dapo.dynamic_sampling_filter`, drop groups whose accuracy is all 0 or all 1), token-mean, and overlong
  reward shaping (`dapo.overlong_penalty`).
* ``mcpo_grpo`` / ``mcpo_dapo``: the above plus λ·L_CL, the MCPO multi-domain contrastive loss
  (`mcpo.mcpo_loss`, docs/mcpo.md §3–§7) on one pool per PPO mini-batch.
The math takes plain arguments; the run's options are bound once at set-up (training/losses.py,
training/mcpo_term.py).

Two meanings of "DAPO". The MCPO paper's own DAPO baseline (Appendix A.1.1) keeps the GRPO pipeline and
only switches verl's reward manager to `dapo`, i.e. adds the overlong penalty: here that is ``grpo`` with
`algorithm.overlong_buffer_enable=true`, and it is the setting that reproduces the paper's tables. Its
§5.1 describes DAPO by all its components; that is ``dapo`` here.

Modules: `advantages` (GRPO / Dr.GRPO / RLOO), `policy_loss`, `dapo`, `mcpo`,
`rollout_correction` (TIS / masked IS / ICEPOP weights against the engine's sampling log-probs).
Task domains have one enumeration, `megatron_mcpo.domains.DOMAINS`.
"""
from megatron_mcpo.algorithms.advantages import group_advantages
from megatron_mcpo.algorithms.dapo import (
    dynamic_sampling_filter,
    dynamic_sampling_status,
    overlong_penalty,
    replica_share,
    usable_groups,
)
from megatron_mcpo.algorithms.mcpo import (
    PoolNormalizers,
    mcpo_anchor_subset_loss,
    mcpo_loss,
    mcpo_pool_normalizers,
)
from megatron_mcpo.algorithms.policy_loss import aggregate, kl_penalty, ppo_policy_loss
from megatron_mcpo.algorithms.rollout_correction import reduce_correction_metrics, rollout_correction

__all__ = [
    "PoolNormalizers",
    "aggregate",
    "dynamic_sampling_filter",
    "dynamic_sampling_status",
    "group_advantages",
    "kl_penalty",
    "mcpo_anchor_subset_loss",
    "mcpo_loss",
    "mcpo_pool_normalizers",
    "overlong_penalty",
    "ppo_policy_loss",
    "reduce_correction_metrics",
    "replica_share",
    "rollout_correction",
    "usable_groups",
]
