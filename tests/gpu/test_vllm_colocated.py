"""GPU-only rollout paths (skipped without CUDA and CUDA vLLM; unverified until run on a GPU machine):
a colocated engine (external_launcher, in-process refit transport) with sleep/wake, and rollout TP=2."""
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def vllm_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return pytest.importorskip("vllm")


def test_colocated_sleep_wake_keeps_weights(vllm_cuda, tiny_dirs):
    from megatron_mcpo.rollout.engine import SamplingSpec
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(tiny_dirs["qwen3"], dtype="fp32", colocated=True, gpu_memory_utilization=0.2)
    try:
        seq = eng.prompt_ids("hello world") + [5, 6, 7]
        before = eng.score([seq])[0]
        eng.sleep(level=1)
        eng.wake_up()
        torch.testing.assert_close(torch.tensor(eng.score([seq])[0]), torch.tensor(before), atol=1e-5, rtol=0)
        out = eng.generate(["hello"], SamplingSpec(n=2, max_tokens=8))
        assert len(out[0]) == 2 and all(1 <= len(s.token_ids) <= 8 for s in out[0])
    finally:
        eng.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_rollout_tp2_scores_like_tp1(vllm_cuda, tiny_dirs):
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    scores = []
    for tp in (1, 2):
        eng = VLLMEngine(tiny_dirs["qwen3"], dtype="fp32", tensor_parallel_size=tp, gpu_memory_utilization=0.2)
        try:
            scores.append(torch.tensor(eng.score([eng.prompt_ids("the quick brown fox") + [7, 8]])[0]))
        finally:
            eng.shutdown()
    torch.testing.assert_close(scores[1], scores[0], atol=1e-4, rtol=0)
