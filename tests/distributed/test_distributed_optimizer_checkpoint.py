"""The distributed optimizer's checkpoint (bf16 parameters, fp32 main-parameter and Adam shards, no TE/Apex;
or fp32 parameters, whose main parameters are views of the model's) reshards across data parallelism:
saved by 2 data-parallel ranks after one step, loaded by 1, whose next step equals the 2-rank run's next
step bit for bit (elementwise Adam on the same values; clipping off, so no norm summed in another order
enters). Saved as fully_reshardable, across TP and PP too."""
import pytest
import torch

from dist_utils import run_distributed


def _state(seed: int, tp: int = 1, pp: int = 1, dtype: str = "bf16"):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state

    cfg = load_config(overrides=["run.device=cpu", f"model.params_dtype={dtype}", "optimizer.lr=1e-2",
                                 "optimizer.clip_grad=0", "parallel.use_distributed_optimizer=true",
                                 f"parallel.tp={tp}", f"parallel.pp={pp}"])
    groups = init_distributed(device="cpu", tp=tp, pp=pp)
    torch.manual_seed(seed)
    return setup_train_state(cfg, tiny_hf_config("qwen3", num_layers=2), groups)


def _step(state, seed: int) -> list:
    """One optimizer step on the same full gradient on every rank (what the DP reduction would leave)."""
    g = torch.Generator().manual_seed(seed)
    for p in state.policy.parameters():
        p.main_grad.copy_(torch.randn(p.shape, generator=g))
    assert state.optimizer.step()[0]
    state.step += 1
    return [p.detach().clone() for p in state.policy.parameters()]


def _save_on_two(rank, save_dir, dtype):
    from megatron_mcpo.training.checkpoint import save_checkpoint

    state = _state(0, dtype=dtype)
    _step(state, 1)
    path = save_checkpoint(state, save_dir)
    return path, _step(state, 2)


def _resume_on_one(rank, path, dtype):
    from megatron_mcpo.training.checkpoint import load_checkpoint

    state = _state(7, dtype=dtype)  # other initial weights: everything comes from the checkpoint
    load_checkpoint(state, path)
    return _step(state, 2)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_distributed_optimizer_checkpoint_reshards_across_data_parallelism(tmp_path, dtype):
    """fp32: megatron's loader copies into those views outside no_grad (autograd refused it: every fp32 run
    with the distributed optimizer failed to resume)."""
    (path, two), _ = run_distributed(_save_on_two, world_size=2, timeout=300, save_dir=str(tmp_path), dtype=dtype)
    (one,) = run_distributed(_resume_on_one, world_size=1, timeout=300, path=path, dtype=dtype)
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def _elementwise_step(state) -> None:
    """One optimizer step on a gradient that is a function of each weight's value, so every layout gives
    each element the same gradient (what a DP reduction of equal gradients would leave)."""
    for p in state.policy.parameters():
        p.main_grad.copy_(torch.sin(p.detach().float() * 1000))
    assert state.optimizer.step()[0]
    state.step += 1


def _steps(rank, tp, pp, load, out_dir):
    """A fresh run at tp/pp (saving after each of two steps), or one resumed from `load` (one step, saved):
    the checkpoint paths."""
    from megatron_mcpo.training.checkpoint import load_checkpoint, save_checkpoint

    state = _state(0 if load is None else 7, tp, pp)  # a resumed run starts from other weights
    if load is not None:
        load_checkpoint(state, load)
    paths = []
    for _ in range(1 if load is not None else 2):
        _elementwise_step(state)
        paths.append(save_checkpoint(state, out_dir, optimizer_format="fully_reshardable"))
    return paths


def test_fully_reshardable_optimizer_checkpoint_resumes_at_another_tp_and_pp(tmp_path):
    """Saved at DP2 after one step; resumed at TP2 and at PP2 (each a layout the dp_reshardable format is
    refused at), whose next step equals the DP2 run's own second step bit for bit: the weights, Adam
    moments and step count (its bias correction) came back whole, whatever the layout."""
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.weights.dist_ckpt import read_checkpoint_tensors
    from megatron_mcpo.weights.hf_mapping import family_mapping

    ((first, second), _) = run_distributed(_steps, world_size=2, timeout=300, tp=1, pp=1, load=None,
                                           out_dir=str(tmp_path / "dp2"))
    mapping = family_mapping(tiny_hf_config("qwen3", num_layers=2))
    before, expected = (dict(read_checkpoint_tensors(p, mapping)) for p in (first, second))
    for name, (tp, pp) in {"tp2": (2, 1), "pp2": (1, 2)}.items():
        ((path,), _) = run_distributed(_steps, world_size=2, timeout=300, tp=tp, pp=pp, load=first,
                                       out_dir=str(tmp_path / name))
        resumed = dict(read_checkpoint_tensors(path, mapping))
        assert resumed.keys() == expected.keys()
        for k in expected:
            assert torch.equal(resumed[k], expected[k]), (name, k)
            assert not torch.equal(resumed[k], before[k]), (name, k)  # the step moved every weight
