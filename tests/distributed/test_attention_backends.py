"""The SDPA core attention reproduces megatron's local DotProductAttention in the whole model (fp32, gloo).

Each layout (TP1 in one process; TP2 and PP2 one after another in one 2-process launch) builds the tiny
Qwen3 (GQA: 4 heads, 2 KV heads; at TP2 one KV head per rank) twice in the same process, once per
`model.attention_backend`, with the local model's weights copied into the SDPA one, and runs the same
micro-batches of very different lengths padded (causal, no mask) and packed (local: a dense
block-diagonal mask; SDPA: one call per segment), forward and one train step (SGD, lr 0). Log-probs,
entropy, pooled states, loss, grad norm and every gradient must agree.
Tolerance: 1e-5 absolute on per-token values, pooled states and gradients, 1e-5 relative on loss and
grad norm (fp32; the kernels sum in different orders).
"""
import pytest
import torch

from dist_utils import rows_by_index, run_distributed, run_each
from test_packing_invariance import B, _batch
from test_parallel_invariance import _loss_fn

pytestmark = pytest.mark.dist

ATOL = 1e-5
BACKENDS = ("local", "sdpa")


def _worker(rank, tp, pp):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.policy import unwrap
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches, train_step

    groups = init_distributed(tp=tp, pp=pp, device="cpu", seed=7)
    states = {}
    for backend in BACKENDS:
        cfg = load_config(overrides=["run.device=cpu", "optimizer.optimizer=sgd", "optimizer.lr=0",
                                     f"model.attention_backend={backend}"])
        cfg.parallel.tp, cfg.parallel.pp = tp, pp
        states[backend] = setup_train_state(cfg, tiny_hf_config("qwen3"), groups)
    for src, dst in zip(states["local"].policy.chunks, states["sdpa"].policy.chunks):
        unwrap(dst).load_state_dict(unwrap(src).state_dict())
    batch = _batch()
    mbs = split_microbatches(batch, 2)
    loss_fn = _loss_fn(batch["response_mask"].sum())
    result = {"last": groups.is_last_stage, "index": batch["index"]}
    for backend, state in states.items():
        result[backend] = {"segments": state.policy.packed_segments, "thd": state.policy.packed_thd}
        for layout, packing in (("padded", False), ("packed", True)):
            state.policy.sequence_packing = packing
            outs = forward_outputs(state.policy, mbs)
            metrics = train_step(state, mbs, loss_fn)
            grads = torch.cat([p.main_grad.detach().flatten().clone() for p in state.policy.parameters()])
            r = {"metrics": metrics, "grads": grads}
            if groups.is_last_stage:
                out = concat_outputs(outs)
                r.update(logprobs=out.logprobs, entropy=out.entropy, pooled=out.pooled)
            result[backend][layout] = r
    return result


LAYOUTS = {"tp2": dict(tp=2, pp=1), "pp2": dict(tp=1, pp=2)}


@pytest.fixture(scope="module")
def two_process_layouts():
    return run_each(_worker, LAYOUTS, world_size=2)


def test_sdpa_matches_local_attention_tp1():
    _check(run_distributed(_worker, world_size=1, timeout=300, tp=1, pp=1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sdpa_matches_local_attention(two_process_layouts, layout):
    _check(two_process_layouts[layout])


def _check(results):
    for r in results:
        assert (r["local"]["segments"], r["local"]["thd"]) == (False, False)  # dense block mask
        assert (r["sdpa"]["segments"], r["sdpa"]["thd"]) == (True, False)
    for layout in ("padded", "packed"):
        per = {b: [{**r, **r[b][layout]} for r in results] for b in BACKENDS}
        for key in ("logprobs", "entropy", "pooled"):
            local, sdpa = (rows_by_index(per[b], key, B) for b in BACKENDS)
            assert local.abs().sum() > 0
            torch.testing.assert_close(sdpa, local, atol=ATOL, rtol=0, msg=f"{layout} {key}")
        for r in results:
            ref, new = r["local"][layout], r["sdpa"][layout]
            for name in ("loss", "nll", "grad_norm"):
                assert new["metrics"][name] == pytest.approx(ref["metrics"][name], rel=1e-5), (layout, name)
            assert ref["metrics"]["grad_norm"] > 0
            torch.testing.assert_close(new["grads"], ref["grads"], atol=ATOL, rtol=0, msg=f"{layout} grads")
