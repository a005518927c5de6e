"""The config's loss options, resolved when the config is built and bound once at set-up: the policy loss
(training/losses.py) and the contrastive term per grad_mode (training/mcpo_term.py). float64 where values
are compared (1e-6: the expected numbers are the docs' worked example printed to 6 decimals)."""
from types import SimpleNamespace

import pytest
import torch

from megatron_mcpo.config import AlgorithmConfig, ConfigError, MCPOConfig, load_config
from megatron_mcpo.validation import validate
from megatron_mcpo.models.projection import ProjectionHead, ProjectionTrainer
from megatron_mcpo.training.losses import policy_loss_from_config
from megatron_mcpo.training.mcpo_term import GRAD_MODES, ContrastiveTerm, StaleTerm, contrastive_kernel, make_term

F64 = torch.float64
TOL = 1e-6
# docs/mcpo.md worked example A: 6 rollouts, 3 prompts, 2 domains
U_A = [[1.0, 0.2], [-0.3, 1.0], [0.8, 0.6], [0.9, 0.3], [0.6, 0.8], [-1.0, -0.2]]
R_A = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0]
PROMPTS, DOMAINS = [0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]


def pool():
    return torch.tensor(U_A, dtype=F64), torch.tensor(R_A, dtype=F64), torch.tensor(PROMPTS), torch.tensor(DOMAINS)


def test_algorithm_defaults_resolved_when_built():
    dapo = load_config(overrides=["algorithm.name=dapo", "rollout.max_response_length=300"]).algorithm
    assert (dapo.clip_ratio_high, dapo.dynamic_sampling, dapo.overlong_buffer_enable) == (0.28, True, True)
    assert dapo.gen_batch_prompts == dapo.train_batch_prompts and dapo.loss_agg_norm_length == 300
    grpo = AlgorithmConfig(name="grpo", clip_ratio_high=0.3)
    assert (grpo.clip_ratio_high, grpo.dynamic_sampling, grpo.overlong_buffer_enable) == (0.3, False, False)
    assert grpo.gen_batch_prompts is None  # no dynamic sampling: nothing reads it
    with pytest.raises(ConfigError, match=r"algorithm\.gen_batch_prompts: only used with dynamic sampling"):
        validate(load_config(overrides=["algorithm.gen_batch_prompts=16"]), world_size=1, cuda_available=False)


def test_policy_loss_binds_the_resolved_options():
    dapo = policy_loss_from_config(load_config(overrides=["algorithm.name=dapo", "rollout.max_response_length=512"]))
    assert dapo.keywords["clip_ratio_high"] == 0.28 and dapo.keywords["loss_agg_mode"] == "token-mean"
    assert dapo.keywords["loss_agg_norm_length"] == 512
    grpo = policy_loss_from_config(load_config(overrides=["algorithm.name=grpo", "algorithm.loss_agg_norm_length=100"]))
    assert grpo.keywords["clip_ratio_high"] == 0.2 and grpo.keywords["loss_agg_norm_length"] == 100
    # ρ = 2 on every token, Â = 1: clipped at 1 + 0.28 for DAPO, 1 + 0.2 for GRPO (token mean)
    logp, old, mask = torch.zeros(1, 3, dtype=F64), torch.full((1, 3), -0.6931471805599453, dtype=F64), torch.ones(1, 3, dtype=torch.bool)
    adv = torch.ones(1, dtype=F64)
    for fn, eps in ((dapo, 0.28), (grpo, 0.2)):
        value, _ = fn(logp, old, adv, mask, global_num_tokens=3, global_num_seqs=1, entropy=torch.zeros(1, 3, dtype=F64))
        assert value.item() == pytest.approx(-(1 + eps), abs=1e-12)


def test_kernel_reads_the_mcpo_options_and_carries_no_lambda():
    u, r, p, d = pool()
    loss, m = contrastive_kernel(MCPOConfig(cl_coef=0.1))(u, r, p, d)
    assert loss.item() == pytest.approx(0.733783, abs=TOL) and "loss_total_cl" not in m
    loss, _ = contrastive_kernel(MCPOConfig(denominator="all", norm="per_anchor", weight_mode="one"))(u, r, p, d)
    assert loss.item() == pytest.approx(1.433579, abs=TOL)
    # α and γ are the config's cross_coef / in_coef: the "cross-domain only" ablation is in_coef = 0
    loss, _ = contrastive_kernel(MCPOConfig(cross_coef=1.0, in_coef=0.0))(u, r, p, d)
    assert loss.item() == pytest.approx(0.724339, abs=TOL)
    # the threshold is read too: at 0.6 rollout 3 (reward 0.5) stops being a positive
    _, m = contrastive_kernel(MCPOConfig(positive_threshold=0.6))(u, r, p, d)
    assert m["num_correct"] == 3


def test_term_per_grad_mode_and_the_lambda_metric():
    groups = SimpleNamespace(is_last_stage=True, dp=None, dp_rank=0, dp_size=1, pp=None, pp_size=1)
    assert type(make_term(load_config(overrides=["algorithm.name=grpo"]), None, groups)) is ContrastiveTerm
    for mode, cls in GRAD_MODES.items():
        assert type(make_term(load_config(overrides=[f"mcpo.grad_mode={mode}"]), None, groups)) is cls
    # stale: the pool states are the old-log-prob pass's, whatever reuse_old_pooled says
    head = ProjectionHead(2, 4, 3, seed=0)
    term = StaleTerm(MCPOConfig(cl_coef=0.25, warmup_batches=1), ProjectionTrainer(head, 1e-3, 0.0, 0.0), groups)
    u, r, p, d = pool()
    local = {"tokens": torch.zeros(6, 4, dtype=torch.long), "rewards": r, "group_ids": p, "domain_ids": d}
    state = SimpleNamespace(step=0, policy=None)  # no pre-pass: the policy is never run
    with pytest.raises(ValueError, match="'pooled_old' is missing"):
        term.prepare(state, [local, local], local, None, reuse_old_pooled=False)
    term.prepare(state, [local, local], local, u.float(), reuse_old_pooled=False)
    m = term.pool_metrics
    assert m["mcpo/loss_total_cl"] == pytest.approx(0.25 * m["mcpo/loss_cl"], rel=1e-12)
    assert m["mcpo/warmup_active"] == 1.0 and term.G is None  # warmup: φ learns, no backbone gradient
    assert all(q.grad is not None for q in head.parameters())
