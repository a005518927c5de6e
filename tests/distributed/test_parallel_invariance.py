"""TP=2, PP=2 (+VPP) and DP=2 reproduce the single-process forward and train step (fp32, gloo), and so
do TP=2 with full activation recompute and PP=2 with selective (core attention) recompute, the example
configs' setting (each recomputed block counted, so the recompute is known to run). At DP=2 megatron's
distributed optimizer's Adam step equals the plain optimizer's, with its reduce-scatter overlapped with
the backward pass (parallel.overlap_grad_reduce) or not.

One reference process saves its randomly initialised tiny Qwen3 (tied embeddings, QK-norm) as a
dist_checkpointing checkpoint and computes log-probs, entropy, pooled hidden states, loss, grad norm
and post-step log-probs on the whole mini-batch as ONE micro-batch; each 2-process layout loads that
checkpoint (resharding on load), runs 2 micro-batches per rank and must match (the four layouts one after
another in one 2-process launch).
Tolerance: 2e-5 absolute on per-token values, 1e-5 relative on loss and grad norm (fp32 reduction order).
"""
import pytest
import torch

from dist_utils import rows_by_index, run_distributed, run_each

pytestmark = pytest.mark.dist

B, S = 8, 20
ATOL = 2e-5


def _batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1000, (B, S), generator=g)
    response_mask = torch.zeros(B, S, dtype=torch.bool)
    for i in range(B):  # varied prompt/response lengths, right padding
        start, end = 4 + i % 3, S - (i % 4)
        response_mask[i, start:end] = True
    return {"tokens": tokens, "response_mask": response_mask, "index": torch.arange(B)}


def _loss_fn(total_tokens):
    def loss_fn(out, mb):
        m = mb["response_mask"].float()
        nll = -(out.logprobs * m).sum() / total_tokens
        ent = (out.entropy * m).sum() / total_tokens
        pooled = out.pooled.pow(2).sum() / B  # a sequence-level term, like the contrastive loss
        loss = nll - 0.01 * ent + 0.1 * pooled
        return loss, {"loss": loss.detach(), "nll": nll.detach()}

    return loss_fn


def _worker(rank, tp, pp, vpp, ckpt, save, mbs, recompute=None, optimizer="sgd", distributed_optimizer=False,
            overlap_grad_reduce=False):
    from megatron_mcpo.config import Config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.checkpoint import load_model_weights, model_sharded_state_dict
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches, train_step

    cfg = Config()
    cfg.run.device = "cpu"
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp = tp, pp, vpp
    # Adam's first step is ~sign(g): it amplifies fp32 noise (used only where both sides reduce alike)
    cfg.optimizer.optimizer, cfg.optimizer.lr = optimizer, 0.5 if optimizer == "sgd" else 1e-3
    cfg.model.recompute_granularity = recompute
    cfg.parallel.use_distributed_optimizer = distributed_optimizer
    cfg.parallel.overlap_grad_reduce = overlap_grad_reduce
    groups = init_distributed(tp=tp, pp=pp, vpp=vpp, device="cpu", seed=7)
    hf = tiny_hf_config("qwen3")
    state = setup_train_state(cfg, hf, groups)
    if save:
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(model_sharded_state_dict(state.policy.chunks), ckpt)
    else:
        set_policy_weights(state, lambda chunks: load_model_weights(chunks, ckpt))
    batch = _batch()
    n = B // groups.dp_size
    local = {k: v[groups.dp_rank * n : (groups.dp_rank + 1) * n] for k, v in batch.items()}
    total_tokens = batch["response_mask"].sum()
    mb_list = split_microbatches(local, mbs)
    before = forward_outputs(state.policy, mb_list)
    from megatron.core import tensor_parallel

    checkpoint, recomputed = tensor_parallel.checkpoint, []  # megatron's recompute wraps blocks in it
    tensor_parallel.checkpoint = lambda *a, **k: recomputed.append(1) or checkpoint(*a, **k)
    try:
        metrics = train_step(state, mb_list, _loss_fn(total_tokens))
    finally:
        tensor_parallel.checkpoint = checkpoint
    after = forward_outputs(state.policy, mb_list)
    result = {"metrics": metrics, "index": local["index"], "last": groups.is_last_stage, "recomputed": len(recomputed),
              "overlap": state.policy.chunks[0].ddp_config.overlap_grad_reduce}
    if groups.is_last_stage:
        b, a = concat_outputs(before), concat_outputs(after)
        result.update(logprobs=b.logprobs, entropy=b.entropy, pooled=b.pooled, after=a.logprobs)
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("ref_ckpt"))
    (ref,) = run_distributed(_worker, world_size=1, tp=1, pp=1, vpp=None, ckpt=ckpt, save=True, mbs=B)
    return ckpt, ref


LAYOUTS = {"tp2": dict(tp=2, pp=1, vpp=None), "pp2": dict(tp=1, pp=2, vpp=None),
           "pp2_vpp2": dict(tp=1, pp=2, vpp=2), "dp2": dict(tp=1, pp=1, vpp=None),

           "tp2_recompute_full": dict(tp=2, pp=1, vpp=None, recompute="full"),
           "pp2_recompute_selective": dict(tp=1, pp=2, vpp=None, recompute="selective")}
# checkpointed blocks per rank in the train step: one per layer of the stage (recompute_num_layers=1 for
# full, the core attention for selective) per micro-batch; the tiny Qwen3 has 4 layers, and these layouts
# (DP1) run the 8 rows as 4 micro-batches of 2
RECOMPUTED = {"tp2_recompute_full": 4 * 4, "pp2_recompute_selective": 2 * 4}


# The distributed optimizer (ZeRO-1: gradients reduce-scattered, each rank updates its shard of the fp32
# state, parameters all-gathered) takes Adam only: compared with the plain optimizer at the same DP size,
# where the same reduced gradients reach Adam.
ADAM_AT_DP2 = {"dp2_adam": dict(tp=1, pp=1, vpp=None, optimizer="adam"),
               "dp2_adam_distributed_optimizer": dict(tp=1, pp=1, vpp=None, optimizer="adam",
                                                      distributed_optimizer=True),
               # its reduce-scatter launched per bucket during the backward pass
               "dp2_adam_distributed_optimizer_overlap": dict(tp=1, pp=1, vpp=None, optimizer="adam",
                                                              distributed_optimizer=True, overlap_grad_reduce=True)}


@pytest.fixture(scope="module")
def layouts(reference):
    ckpt, _ = reference
    return run_each(_worker, {**LAYOUTS, **ADAM_AT_DP2}, world_size=2, ckpt=ckpt, save=False, mbs=2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_process(reference, layouts, layout):
    _, ref = reference
    results = layouts[layout]
    response = _batch()["response_mask"]
    for key in ("logprobs", "entropy", "after"):
        got = rows_by_index(results, key, B)
        torch.testing.assert_close(got[response], ref[key][response], atol=ATOL, rtol=0)
    torch.testing.assert_close(rows_by_index(results, "pooled", B), ref["pooled"], atol=ATOL, rtol=0)
    for r in results:  # every rank (every PP stage too) reports the same reduced metrics
        for name in ("loss", "nll", "grad_norm"):
            assert r["metrics"][name] == pytest.approx(ref["metrics"][name], rel=1e-5), name
    assert ref["metrics"]["grad_norm"] > 0
    assert [r["recomputed"] for r in results] == [RECOMPUTED.get(layout, 0)] * 2 and ref["recomputed"] == 0
    # the step really changed the weights
    assert (ref["after"][response] - ref["logprobs"][response]).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["dp2_adam_distributed_optimizer", "dp2_adam_distributed_optimizer_overlap"])
def test_distributed_optimizer_step_equals_the_plain_optimizers(layouts, layout):
    plain, sharded = layouts["dp2_adam"], layouts[layout]
    assert [r["overlap"] for r in sharded] == [layout.endswith("_overlap")] * 2  # megatron's DDP took the setting
    response = _batch()["response_mask"]
    before, after = (rows_by_index(plain, k, B)[response] for k in ("logprobs", "after"))
    assert (after - before).abs().max() > 1e-3  # the step moved the policy
    torch.testing.assert_close(rows_by_index(sharded, "after", B)[response], after, atol=1e-6, rtol=0)
    for p, s in zip(plain, sharded):
        assert s["metrics"]["grad_norm"] == pytest.approx(p["metrics"]["grad_norm"], rel=1e-6)
