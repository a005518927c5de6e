"""π_old without its own forward pass (Trainer.old_is_current): when a batch gets exactly one optimizer
update, the training pass's detached log-probs are π_old's, so train_minibatch without `old_logprobs`
must give the update of the recomputed path (a no-grad forward at the same weights).

Both paths run from the same weights on the same batch (clipped ratios included: non-zero advantages,
both signs): the same policy loss (float64 metric; 1e-9 relative), grad norm and every main gradient
(fp32, 1e-6), MCPO terms included; and the log-probs handed to `on_logprobs` equal the recomputed ones
(fp32, 1e-6). DP=2 checks the rows each rank reports are its own.
"""
import pytest
import torch

from dist_utils import run_distributed

pytestmark = pytest.mark.dist

B, S = 8, 20


def _batch():
    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for i in range(B):
        mask[i, 6 + i % 3 : S - i % 2] = True
    return {
        "tokens": torch.randint(0, 1000, (B, S), generator=g),
        "response_mask": mask,
        "rewards": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
        "group_ids": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        "domain_ids": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
        "advantages": torch.tensor([0.7, -0.7, 0.0, 0.0, -0.7, 0.7, 0.7, -0.7]),
    }


def _worker(rank, algorithm):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.projection import ProjectionHead, ProjectionTrainer
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.losses import policy_loss_from_config
    from megatron_mcpo.training.mcpo_term import make_term
    from megatron_mcpo.training.minibatch import train_minibatch
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

    cfg = load_config(overrides=[
        "run.device=cpu", "parallel.micro_batch_size=4", "optimizer.optimizer=sgd", "optimizer.lr=0.5",
        f"algorithm.name={algorithm}", "algorithm.entropy_coef=0.01", "mcpo.warmup_batches=0",
    ])
    groups = init_distributed(device="cpu", seed=11)
    state = setup_train_state(cfg, tiny_hf_config("qwen3"), groups)
    n = B // groups.dp_size
    local = {k: v[groups.dp_rank * n : (groups.dp_rank + 1) * n] for k, v in _batch().items()}
    params = list(state.policy.parameters())
    start = [p.detach().clone() for p in params]

    def run(with_old: bool):
        for p, p0 in zip(params, start):
            p.data.copy_(p0)
        projector = None
        if cfg.algorithm.is_mcpo:
            projector = ProjectionTrainer(ProjectionHead(128, 64, 64, seed=5), lr=1e-3, weight_decay=0.0, grad_clip=0.0)
        mb, seen = dict(local), {}
        if with_old:
            mb["old_logprobs"] = concat_outputs(forward_outputs(state.policy, split_microbatches(local, 4))).logprobs
        term, policy_loss = make_term(cfg, projector, groups), policy_loss_from_config(cfg)
        metrics = train_minibatch(state, term, policy_loss, mb, 4, reuse_old_pooled=False,
                                  on_logprobs=lambda lp, rows: seen.update(zip(rows.tolist(), lp.clone())))
        grads = torch.cat([p.main_grad.flatten().clone() for p in params])
        return metrics, grads, torch.stack([seen[i] for i in range(n)]), mb.get("old_logprobs")

    m_old, g_old, _, recomputed = run(with_old=True)
    m_cur, g_cur, seen, _ = run(with_old=False)
    return {"old": m_old, "current": m_cur, "grads": (g_old, g_cur), "seen": seen, "recomputed": recomputed,
            "mask": local["response_mask"]}


@pytest.mark.parametrize("algorithm,world", [("grpo", 1), ("mcpo_grpo", 1), ("grpo", 2)])
def test_training_pass_logprobs_stand_in_for_old(algorithm, world):
    for r in run_distributed(_worker, world_size=world, algorithm=algorithm):
        old, cur = r["old"], r["current"]
        assert old["grad_norm"] > 0 and old["pg_loss"] != 0
        assert cur["pg_loss"] == pytest.approx(old["pg_loss"], rel=1e-9, abs=1e-12)
        assert cur["grad_norm"] == pytest.approx(old["grad_norm"], rel=1e-6)
        for k in ("entropy", "mcpo/loss_cl"):
            if k in old:
                assert cur[k] == pytest.approx(old[k], rel=1e-6), k
        assert (algorithm == "mcpo_grpo") == ("mcpo/loss_cl" in old)
        torch.testing.assert_close(r["grads"][1], r["grads"][0], atol=1e-6, rtol=1e-6)
        m = r["mask"]
        torch.testing.assert_close(r["seen"][m], r["recomputed"][m], atol=1e-6, rtol=0)
