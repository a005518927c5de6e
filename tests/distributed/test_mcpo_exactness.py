"""MCPO exactness (docs/mcpo.md §8): policy loss + λ·L_CL over the whole mini-batch pool.

Reference: one process computes the whole mini-batch (8 rollouts, 4 prompts, 2 domains) in ONE graph.
Each layout (DP=2 × 2 micro-batches each; TP=2 and PP=2 × 4 micro-batches) uses grad_mode=exact, i.e.
the gathered pre-pass pool and the injected surrogate gradient, and must give the same Megatron
grad norm, the same projector gradients, the same pool metrics, and (after an SGD step, which is
linear in the gradient) the same log-probs. The one-process runs share one launch, the 2-process layouts
another. Tolerances: 1e-5 relative on the grad norm, 1e-5 absolute
on projector gradients, 2e-5 on log-probs (fp32 model; the MCPO loss itself runs in fp32 too).
"""
import pytest
import torch

from dist_utils import rows_by_index, run_each

pytestmark = pytest.mark.dist

B, S, D_TINY = 8, 20, 128


def _batch():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 1000, (B, S), generator=g)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for i in range(B):
        mask[i, 5 + i % 2 : S - i % 3] = True
    return {
        "tokens": tokens,
        "response_mask": mask,
        "rewards": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
        "group_ids": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        "domain_ids": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
        "advantages": torch.tensor([0.7, -0.7, 0.0, 0.0, -0.7, 0.7, 0.7, -0.7]),
        "noise": 0.05 * torch.randn(B, S, generator=g),
    }


def _worker(rank, tp, pp, mbs, ckpt, save, overrides, warmup_probe=False, reuse_old=False, zero_adv=False):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.projection import ProjectionHead, ProjectionTrainer
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.checkpoint import load_model_weights, model_sharded_state_dict
    from megatron_mcpo.training.losses import policy_loss_from_config
    from megatron_mcpo.training.mcpo_term import make_term
    from megatron_mcpo.training.minibatch import train_minibatch
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

    cfg = load_config(overrides=[
        "run.device=cpu", f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.micro_batch_size={mbs}",
        "optimizer.optimizer=sgd", "optimizer.lr=0.5", "optimizer.clip_grad=0.0", "algorithm.name=mcpo_grpo",
        "algorithm.entropy_coef=0.0", "mcpo.cl_coef=1.0", "mcpo.warmup_batches=0", *overrides,
    ])
    groups = init_distributed(tp=tp, pp=pp, device="cpu", seed=11)
    state = setup_train_state(cfg, tiny_hf_config("qwen3"), groups)
    if save:
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(model_sharded_state_dict(state.policy.chunks), ckpt)
    else:
        set_policy_weights(state, lambda chunks: load_model_weights(chunks, ckpt))
    projector = None
    if groups.is_last_stage:
        projector = ProjectionTrainer(ProjectionHead(D_TINY, 256, 256, seed=5), lr=1e-3, weight_decay=0.0, grad_clip=0.0)
    batch = _batch()
    n = B // groups.dp_size
    local = {k: v[groups.dp_rank * n : (groups.dp_rank + 1) * n] for k, v in batch.items()}
    noise = local.pop("noise")
    if zero_adv:
        local["advantages"] = torch.zeros_like(local["advantages"])
    outs = forward_outputs(state.policy, split_microbatches(local, mbs))
    if groups.is_last_stage:
        old = concat_outputs(outs)
        local["old_logprobs"] = old.logprobs + noise * local["response_mask"]
        if reuse_old:
            local["pooled_old"] = old.pooled
    else:
        local["old_logprobs"] = torch.zeros(n, S)  # unused off the last stage
    result = {"last": groups.is_last_stage, "index": torch.arange(groups.dp_rank * n, (groups.dp_rank + 1) * n)}
    term, policy_loss = make_term(cfg, projector, groups), policy_loss_from_config(cfg)
    metrics = train_minibatch(state, term, policy_loss, local, mbs, reuse_old_pooled=reuse_old)
    result["metrics"] = metrics
    if projector is not None and cfg.algorithm.is_mcpo:
        result["proj_grad"] = torch.cat([p.grad.flatten() for p in projector.head.parameters()])
    if warmup_probe:  # a second step, now past the one-step warmup
        result["metrics2"] = train_minibatch(state, term, policy_loss, local, mbs)
    after = forward_outputs(state.policy, split_microbatches(local, mbs))
    if groups.is_last_stage:
        result["after"] = concat_outputs(after).logprobs
    return result


# One process, in this order: the reference (saves the checkpoint the others load), the same batch without
# MCPO, and the warmup probes (zero advantages, one graph and the exact pre-pass).
ONE_PROCESS = {
    "reference": dict(mbs=B, save=True, overrides=[]),
    "grpo": dict(mbs=B, save=False, overrides=["algorithm.name=grpo"]),
    **{f"warmup_{name}": dict(mbs=mbs, save=False, warmup_probe=True, zero_adv=True, overrides=["mcpo.warmup_batches=1"])
       for name, mbs in (("one_graph", B), ("exact_prepass", 2))},
}
TWO_PROCESSES = {
    "dp2_prepass": dict(tp=1, pp=1, reuse_old=False), "dp2_reuse_old_pooled": dict(tp=1, pp=1, reuse_old=True),
    "tp2": dict(tp=2, pp=1, reuse_old=False), "pp2": dict(tp=1, pp=2, reuse_old=False),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mcpo_ref"))


@pytest.fixture(scope="module")
def one_process(ckpt):
    return {name: r for name, (r,) in run_each(_worker, ONE_PROCESS, world_size=1, tp=1, pp=1, ckpt=ckpt).items()}


@pytest.fixture(scope="module")
def two_processes(one_process, ckpt):  # after the reference has saved the checkpoint
    return run_each(_worker, TWO_PROCESSES, world_size=2, mbs=2, ckpt=ckpt, save=False, overrides=[])


@pytest.mark.parametrize("layout", TWO_PROCESSES)
def test_exact_pool_matches_one_graph(one_process, two_processes, layout):
    ref, results = one_process["reference"], two_processes[layout]
    rm = _batch()["response_mask"]
    assert ref["metrics"]["mcpo/loss_cl"] > 0 and ref["metrics"]["grad_norm"] > 0
    for r in results:
        assert r["metrics"]["grad_norm"] == pytest.approx(ref["metrics"]["grad_norm"], rel=1e-5)
        for k in ("mcpo/loss_cl", "mcpo/loss_cross", "mcpo/loss_in", "mcpo/pos_ratio", "pg_loss"):
            assert r["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-5, abs=1e-7), k
        if r["last"]:
            torch.testing.assert_close(r["proj_grad"], ref["proj_grad"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows_by_index(results, "after", B)[rm], ref["after"][rm], atol=2e-5, rtol=0)


def test_contrastive_term_moves_the_backbone(one_process):
    """Same batch without MCPO: a different gradient (so the exactness test above is not vacuous)."""
    ref, grpo = one_process["reference"], one_process["grpo"]
    assert abs(grpo["metrics"]["grad_norm"] - ref["metrics"]["grad_norm"]) > 1e-3 * ref["metrics"]["grad_norm"]


@pytest.mark.parametrize("mbs", ["one_graph", "exact_prepass"])
def test_warmup_blocks_backbone_gradient_only(one_process, mbs):
    """Zero advantages: the policy loss has no gradient, so the backbone gradient is the contrastive
    term alone — exactly zero during the one-step warmup, non-zero after; the projector learns in both."""
    r = one_process[f"warmup_{mbs}"]
    assert r["metrics"]["grad_norm"] == 0.0
    assert r["metrics2"]["grad_norm"] > 1e-6
    assert r["metrics"]["mcpo/warmup_active"] == 1.0 and r["metrics2"]["mcpo/warmup_active"] == 0.0
    assert r["metrics"]["proj_grad_norm"] > 0 and r["metrics2"]["proj_grad_norm"] > 0
