"""Sequence packing reproduces the padded forward and train step (fp32, gloo, local spec: the packed
row runs with a block-diagonal causal mask).

Each layout (TP1 in one process; TP2, PP2 and PP2 with VPP2 one after another in one 2-process launch)
runs the same micro-batches of very different lengths (a length-1 response, a row without any response, full-length rows) padded and then
packed, on the same weights (SGD with lr 0, so the steps leave them unchanged), and compares log-probs,
entropy, pooled states, the loss, the grad norm and every gradient.
Tolerance: 1e-5 absolute on per-token values, pooled states and gradients, 1e-5 relative on loss, grad
norm and the gradient vector's norm (fp32; the packed row applies RoPE at running positions, equal up
to rounding).
tests/gpu/test_gpu_packing.py reuses `_worker` and `check_packed_matches_padded` for the THD path.
"""
import pytest
import torch

from dist_utils import rows_by_index, run_distributed, run_each
from test_parallel_invariance import _loss_fn

pytestmark = pytest.mark.dist

B, S = 8, 24
ATOL = 1e-5
# (prompt length, response length) per row; right padding after.
ROWS = [(3, 21), (4, 1), (2, 11), (5, 0), (6, 18), (1, 1), (7, 2), (3, 9)]


def _batch():
    tokens = torch.randint(0, 1000, (B, S), generator=torch.Generator().manual_seed(3))
    response_mask = torch.zeros(B, S, dtype=torch.bool)
    for i, (p, r) in enumerate(ROWS):
        response_mask[i, p : p + r] = True
    return {"tokens": tokens, "response_mask": response_mask, "index": torch.arange(B)}


def _worker(rank, tp, pp, vpp=None, device="cpu", overrides=()):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches, train_step

    # SGD with lr 0: both steps see the same weights.
    cfg = load_config(overrides=[f"run.device={device}", "optimizer.optimizer=sgd", "optimizer.lr=0", *overrides])
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp = tp, pp, vpp
    groups = init_distributed(tp=tp, pp=pp, vpp=vpp, device=device, seed=7)
    state = setup_train_state(cfg, tiny_hf_config("qwen3"), groups)
    batch = {k: v.to(groups.device) for k, v in _batch().items()}
    mbs = split_microbatches(batch, 2)
    loss_fn = _loss_fn(batch["response_mask"].sum())
    result = {"last": groups.is_last_stage, "index": batch["index"].cpu(), "thd": state.policy.packed_thd}
    for name, packing in (("padded", False), ("packed", True)):
        state.policy.sequence_packing = packing
        outs = forward_outputs(state.policy, mbs)
        metrics = train_step(state, mbs, loss_fn)
        grads = torch.cat([p.main_grad.detach().float().flatten().cpu() for p in state.policy.parameters()])
        result[name] = {"metrics": metrics, "grads": grads}
        if groups.is_last_stage:
            out = concat_outputs(outs)
            result[name].update(logprobs=out.logprobs.cpu(), entropy=out.entropy.cpu(), pooled=out.pooled.cpu())
    return result


def check_packed_matches_padded(results: list, atol: float, rel: float) -> None:
    response = _batch()["response_mask"]
    lengths = torch.tensor([p + r if r else 1 for p, r in ROWS])
    beyond = torch.arange(S).unsqueeze(0) >= lengths.unsqueeze(1)
    padded, packed = (
        {k: rows_by_index([{**r, **r[name]} for r in results], k, B) for k in ("logprobs", "entropy", "pooled")}
        for name in ("padded", "packed")
    )
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(packed[key][response], padded[key][response], atol=atol, rtol=0)
        # the packed path really ran: nothing is computed beyond a sequence, padding is scored unpacked
        assert packed[key][beyond].eq(0).all() and padded[key][beyond].ne(0).any()
        assert packed[key][:, 0].eq(0).all()
    torch.testing.assert_close(packed["pooled"], padded["pooled"], atol=atol, rtol=0)
    assert packed["pooled"][3].eq(0).all()  # the row without a response token
    for r in results:
        for name in ("loss", "nll", "grad_norm"):
            assert r["packed"]["metrics"][name] == pytest.approx(r["padded"]["metrics"][name], rel=rel), name
        assert r["padded"]["metrics"]["grad_norm"] > 0
        g_packed, g_padded = r["packed"]["grads"], r["padded"]["grads"]
        torch.testing.assert_close(g_packed, g_padded, atol=atol, rtol=0)
        assert (g_packed - g_padded).norm() <= rel * g_padded.norm()


LAYOUTS = {"tp2": dict(tp=2, pp=1, vpp=None), "pp2": dict(tp=1, pp=2, vpp=None), "pp2_vpp2": dict(tp=1, pp=2, vpp=2)}


@pytest.fixture(scope="module")
def two_process_layouts():
    return run_each(_worker, LAYOUTS, world_size=2)


def _check(results):
    # under PP the micro-batches' packed rows (T = 32, 16, 32, 24) are padded to one length
    assert not any(r["thd"] for r in results)  # the local spec: block-diagonal mask
    check_packed_matches_padded(results, atol=ATOL, rel=1e-5)


def test_packed_matches_padded_tp1():
    _check(run_distributed(_worker, world_size=1, timeout=300, tp=1, pp=1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_matches_padded(two_process_layouts, layout):
    _check(two_process_layouts[layout])
