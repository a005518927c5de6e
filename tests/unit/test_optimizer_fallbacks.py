"""The foreach kernels that stand in for megatron's per-tensor Python fallbacks (no TE, no Apex), against
float64 and against megatron's own fallbacks: the norm to float32 rounding (1e-6 relative), the scale and
the parameter copies bit for bit, and a whole Megatron optimizer step (bf16 params, fp32 main params,
clipping on) within 1e-6 of the same step on megatron's fallbacks."""
import pytest
import torch

from dist_utils import run_distributed
from megatron_mcpo.training.optimizer_fallbacks import foreach_l2_norm, foreach_scale, inner_optimizers


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(7, 5, generator=g), torch.randn(0), torch.randn(300, generator=g) * 1e3,
            torch.randn(3, 2, generator=g).to(torch.bfloat16)]


def test_l2_norm_is_the_norm_of_all_tensors_together():
    tensors = _tensors()
    norm, per_tensor = foreach_l2_norm(2048 * 32, None, [tensors], False)
    expected = torch.cat([t.double().flatten() for t in tensors]).norm()
    assert norm.dtype == torch.float32 and norm.shape == (1,) and per_tensor is None
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)


def test_scale_in_place_copy_and_scaled_copy_are_megatrons_bit_for_bit():
    grads = _tensors()[:3]
    expected = [t * 0.37 for t in grads]
    foreach_scale(0, None, [grads, grads], 0.37)  # clipping: same lists, in place
    assert all(torch.equal(a, b) for a, b in zip(grads, expected))
    main = [torch.randn(4, 3), torch.randn(9)]
    model = [torch.empty(4, 3, dtype=torch.bfloat16), torch.empty(9, dtype=torch.bfloat16)]
    foreach_scale(0, None, [main, model], 1.0)  # fp32 main -> bf16 model parameters
    assert all(torch.equal(m, s.to(torch.bfloat16)) for m, s in zip(model, main))
    out = [torch.empty(4, 3), torch.empty(9)]
    foreach_scale(0, None, [main, out], -2.5)
    assert all(torch.equal(o, s * -2.5) for o, s in zip(out, main))


def _optimizer_step(rank, kernels):
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state

    cfg = load_config(overrides=["run.device=cpu", "model.params_dtype=bf16", "optimizer.lr=1e-2",
                                 "optimizer.clip_grad=0.5"])
    groups = init_distributed(device="cpu")
    torch.manual_seed(0)
    state = setup_train_state(cfg, tiny_hf_config("qwen3", num_layers=2), groups)
    installed = clip_grads.l2_norm_impl.__name__
    if kernels == "megatron":  # megatron's own fallbacks back in place
        clip_grads.l2_norm_impl = utils.local_multi_tensor_l2_norm
        clip_grads.multi_tensor_scale_impl = optimizer.multi_tensor_scale_impl = utils.local_multi_tensor_scale
    g = torch.Generator().manual_seed(1)
    for p in state.policy.parameters():
        p.main_grad.copy_(torch.randn(p.shape, generator=g))
    ok, grad_norm, _ = state.optimizer.step()
    return {"installed": installed, "ok": ok, "grad_norm": grad_norm,
            "main_params": [p.detach().clone() for o in inner_optimizers(state.optimizer)
                            for g in o.param_groups for p in g["params"]]}


def test_a_megatron_optimizer_step_matches_megatrons_fallbacks():
    (ours,) = run_distributed(_optimizer_step, world_size=1, timeout=300, kernels="foreach")
    (theirs,) = run_distributed(_optimizer_step, world_size=1, timeout=300, kernels="megatron")
    assert ours["installed"] == "foreach_l2_norm"  # build_optimizer installs them where TE and Apex are absent
    assert ours["ok"] and theirs["ok"] and theirs["grad_norm"] > 0.5  # so clipping scaled the gradients
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-6)
    assert len(ours["main_params"]) > 0
    for a, b in zip(ours["main_params"], theirs["main_params"]):  # fp32: bf16 rounding would hide or magnify
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _fused_adam_resume(rank, save_dir, distributed_optimizer):
    """Fused AdamW (forced on the CPU here: its per-parameter `step` lives on the parameters' device, as
    on CUDA) in a bf16 model (fp32 main parameters; every parameter bf16, torch norms included, or
    megatron's bf16 optimizer cannot save) through a checkpoint: step, save, step again; a fresh state
    loads the checkpoint and takes the same second step."""
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.checkpoint import load_checkpoint, save_checkpoint
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.optimizer_fallbacks import use_fused_adam

    cfg = load_config(overrides=["run.device=cpu", "model.params_dtype=bf16", "optimizer.lr=1e-2",
                                 f"parallel.use_distributed_optimizer={distributed_optimizer}"])
    groups = init_distributed(device="cpu")

    def fused_state(seed):
        torch.manual_seed(seed)
        state = setup_train_state(cfg, tiny_hf_config("qwen3", num_layers=2), groups)
        assert use_fused_adam(state.optimizer, device_type="cpu") > 0
        return state

    def step(state, seed):
        g = torch.Generator().manual_seed(seed)
        for p in state.policy.parameters():
            p.main_grad.copy_(torch.randn(p.shape, generator=g))
        assert state.optimizer.step()[0]
        state.step += 1
        # the inner torch optimizer's parameters: the fp32 main parameters (their shards, distributed)
        return [p.detach().clone() for o in inner_optimizers(state.optimizer)
                for g in o.param_groups for p in g["params"]]

    first = fused_state(0)
    step(first, 1)
    path = save_checkpoint(first, save_dir)
    uninterrupted = step(first, 2)
    resumed = fused_state(7)  # other initial weights: everything must come from the checkpoint
    load_checkpoint(resumed, path)
    inner = inner_optimizers(resumed.optimizer)
    steps = [float(s["step"]) for o in inner for s in o.state.values()]  # restored, before the next step
    return {"uninterrupted": uninterrupted, "resumed": step(resumed, 2),
            "fused": [g["fused"] for o in inner for g in o.param_groups], "steps": steps}


@pytest.mark.parametrize("distributed_optimizer", [False, True])
def test_fused_adam_resumes_from_a_checkpoint_exactly(tmp_path, distributed_optimizer):
    (r,) = run_distributed(_fused_adam_resume, world_size=1, timeout=300, save_dir=str(tmp_path),
                           distributed_optimizer=distributed_optimizer)
    assert r["fused"] and all(r["fused"]) and r["steps"] and set(r["steps"]) == {1.0}
    assert len(r["resumed"]) == len(r["uninterrupted"]) > 0
    for a, b in zip(r["resumed"], r["uninterrupted"]):
        assert torch.equal(a, b)
