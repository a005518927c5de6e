"""GPU tests (skipped without CUDA; see README 'GPU status' for when they last ran).

Single-rank GPU vs CPU parity of the policy forward, the loss and the gradients of one train step (local
spec, fp32, TF32 off; the same HF weights on both), the same step with full activation recompute, and a
Transformer Engine / FP8 train step where TE is installed. Tolerances: 1e-4 absolute on log-probs/pooled states/gradients, 1e-4 relative on loss and grad
norm (fp32 kernels differ between devices only in summation order).
"""
import pytest
import torch

from dist_utils import run_distributed

pytestmark = pytest.mark.gpu


def _step(rank, device, hf_dir, overrides, tp=1):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches, train_step
    from megatron_mcpo.weights.loader import load_hf_weights
    from megatron_mcpo.config import read_hf_config

    cfg = load_config(overrides=[f"run.device={device}", "optimizer.optimizer=sgd", "optimizer.lr=0.1", *overrides])
    groups = init_distributed(tp=tp, device=device)
    state = setup_train_state(cfg, read_hf_config(hf_dir), groups)
    set_policy_weights(state, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    dev = groups.device
    g = torch.Generator().manual_seed(0)
    batch = {"tokens": torch.randint(0, 1000, (4, 32), generator=g).to(dev),
             "response_mask": torch.ones(4, 32, dtype=torch.bool, device=dev)}
    mbs = split_microbatches(batch, 2)
    before = concat_outputs(forward_outputs(state.policy, mbs))

    def loss_fn(out, mb):
        loss = -(out.logprobs * mb["response_mask"]).sum() / 128
        return loss, {"loss": loss.detach()}

    metrics = train_step(state, mbs, loss_fn)
    # DDP's main_grad buffers keep this step's (reduced) gradients until the next step zeroes them.
    grads = {i: p.main_grad.detach().float().cpu() for i, p in enumerate(state.policy.parameters())}
    placed = {str(p.device) for p in state.policy.parameters()} | {str(v.device) for v in (before.logprobs, before.pooled)}
    return {"logprobs": before.logprobs.cpu(), "pooled": before.pooled.cpu(), "grad_norm": metrics["grad_norm"],
            "loss": metrics["loss"], "grads": grads, "devices": placed}


@pytest.fixture(scope="module")
def gpu(tiny_dirs):
    (r,) = run_distributed(_step, world_size=1, device="cuda", hf_dir=tiny_dirs["qwen3"],
                           overrides=["model.transformer_impl=local"])
    return r


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_single_gpu_matches_cpu(tiny_dirs, gpu):
    (cpu,) = run_distributed(_step, world_size=1, device="cpu", hf_dir=tiny_dirs["qwen3"], overrides=[])
    assert cpu["devices"] == {"cpu"} and gpu["devices"] == {"cuda:0"}
    torch.testing.assert_close(gpu["logprobs"], cpu["logprobs"], atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu["pooled"], cpu["pooled"], atol=1e-4, rtol=0)
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-4)
    assert gpu["grad_norm"] == pytest.approx(cpu["grad_norm"], rel=1e-4) and cpu["grad_norm"] > 0
    assert gpu["grads"].keys() == cpu["grads"].keys()
    for i in cpu["grads"]:
        torch.testing.assert_close(gpu["grads"][i], cpu["grads"][i], atol=1e-4, rtol=0, msg=f"parameter {i}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_activation_recompute_on_gpu_changes_nothing(tiny_dirs, gpu):
    """The example configs' recompute (CPU: tests/distributed/test_parallel_invariance.py) on the GPU kernels."""
    (r,) = run_distributed(_step, world_size=1, device="cuda", hf_dir=tiny_dirs["qwen3"],
                           overrides=["model.transformer_impl=local", "model.recompute_granularity=full"])
    assert r["loss"] == pytest.approx(gpu["loss"], rel=1e-5) and r["grad_norm"] == pytest.approx(gpu["grad_norm"], rel=1e-5)
    for i in gpu["grads"]:
        torch.testing.assert_close(r["grads"][i], gpu["grads"][i], atol=1e-5, rtol=0, msg=f"parameter {i}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transformer_engine_fp8_step(tiny_dirs):
    pytest.importorskip("transformer_engine")
    (r,) = run_distributed(_step, world_size=1, device="cuda", hf_dir=tiny_dirs["qwen3"],
                           overrides=["model.transformer_impl=transformer_engine", "model.params_dtype=bf16",
                                      "model.fp8=hybrid", "model.fp8_recipe=delayed"])
    assert torch.isfinite(r["logprobs"]).all() and r["grad_norm"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_tp2_matches_cpu(tiny_dirs):
    (cpu,) = run_distributed(_step, world_size=1, device="cpu", hf_dir=tiny_dirs["qwen3"], overrides=[])
    results = run_distributed(_step, world_size=2, device="cuda", hf_dir=tiny_dirs["qwen3"], tp=2,
                              overrides=["model.transformer_impl=local", "parallel.tp=2"])
    for r in results:
        torch.testing.assert_close(r["logprobs"], cpu["logprobs"], atol=1e-4, rtol=0)
        assert r["grad_norm"] == pytest.approx(cpu["grad_norm"], rel=1e-4)
