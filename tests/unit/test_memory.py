"""Colocated memory on CPU: the storage offload round trip is bit-exact and keeps every view valid, on
plain tensors and on a real Megatron train state (gradient buffers, Adam moments); the hand-over calls
the engine's sleep/wake in vLLM's order and reports nothing on CPU (no CUDA allocator to measure); a
checkpoint saved between steps, while the optimizer state is offloaded, holds that state."""
import pytest
import torch

from megatron_mcpo.rollout.memory import ColocatedMemory, StorageOffload, grad_buffer_tensors, optimizer_state_tensors
from megatron_mcpo.training.optimizer_fallbacks import inner_optimizers


def test_storage_offload_round_trip_keeps_views():
    base = torch.randn(64, generator=torch.Generator().manual_seed(0))
    view = base[8:24].view(4, 4)  # shares base's storage: offloaded once, still a view afterwards
    other = torch.arange(10, dtype=torch.int64)
    want = (base.clone(), other.clone())
    off = StorageOffload([base, view, other])
    assert off.nbytes == 64 * 4 + 10 * 8
    off.offload(keep=True)
    assert base.untyped_storage().nbytes() == 0 and other.untyped_storage().nbytes() == 0 and off.offloaded
    with pytest.raises(RuntimeError, match="already offloaded"):
        off.offload()
    off.reload()
    assert torch.equal(base, want[0]) and torch.equal(other, want[1])
    view.fill_(1.5)  # the view still writes into base's (re-allocated) storage
    assert torch.equal(base[8:24], torch.full((16,), 1.5))
    off.offload(keep=False)  # discard: same size back, contents not kept
    off.reload()
    assert base.untyped_storage().nbytes() == 64 * 4


def _megatron_round_trip(rank, hf_dir):
    from weights.refit_helpers import fixed_tokens, sgd_steps, train_state

    state, _ = train_state(hf_dir)
    sgd_steps(state, fixed_tokens(seed=3), steps=2)
    chunks = state.policy.chunks
    grads = grad_buffer_tensors(chunks)
    opt = optimizer_state_tensors(state.optimizer, chunks)
    assert grads and any(t.numel() > 1 for t in opt)  # Adam's moments (fp32 training: no main copies)
    model = {p.untyped_storage().data_ptr() for c in chunks for p in c.parameters()}
    assert not any(t.untyped_storage().data_ptr() in model for t in opt)  # the weights themselves stay
    before = [t.clone() for t in grads + opt]
    main_grad = next(p for p in chunks[0].parameters()).main_grad
    off = StorageOffload(grads + opt)
    off.offload()
    assert all(t.untyped_storage().nbytes() == 0 for t in grads + opt)
    off.reload()
    assert all(torch.equal(a, b) for a, b in zip(grads + opt, before))  # bit-exact
    assert main_grad.untyped_storage().data_ptr() == grads[0].untyped_storage().data_ptr()
    sgd_steps(state, fixed_tokens(seed=4), steps=1)  # training goes on over the restored state
    return len(grads), len(opt)


def test_megatron_grad_buffers_and_optimizer_states_round_trip(tiny_dirs):
    from dist_utils import run_distributed

    (counts,) = run_distributed(_megatron_round_trip, world_size=1, timeout=300, hf_dir=tiny_dirs["qwen3"])
    assert counts[0] >= 1 and counts[1] >= 2


class _Engine:
    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))


class _State:
    class policy:
        chunks = []

    optimizer = None


def test_hand_over_order_and_no_metrics_on_cpu():
    eng = _Engine()
    mem = ColocatedMemory(eng, _State(), sleep_level=2, offload_grads=False, offload_optimizer=False,
                          device=torch.device("cpu"))
    assert mem.to_training() == {} and mem.before_refit() == {} and mem.after_refit() == {}
    assert eng.calls == [("sleep", 2), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]


def _adam_state(optimizer) -> dict:
    """{(optimizer, group, parameter, key): tensor} of the Megatron optimizer's torch optimizers."""
    return {(i, g, j, k): v for i, o in enumerate(inner_optimizers(optimizer))
            for g, group in enumerate(o.param_groups) for j, p in enumerate(group["params"])
            for k, v in o.state[p].items()}


def _save_while_offloaded(rank, hf_dir, save_dir, recipe):
    from weights.refit_helpers import fixed_tokens, sgd_steps, train_state

    from megatron_mcpo.training.checkpoint import load_checkpoint, save_checkpoint

    state, _ = train_state(hf_dir, recipe=recipe)
    sgd_steps(state, fixed_tokens(seed=3), steps=2)
    eng = _Engine()
    mem = ColocatedMemory(eng, state, sleep_level=2, offload_grads=True, offload_optimizer=True,
                          device=torch.device("cpu"))
    adam = {k: v.clone() for k, v in _adam_state(state.optimizer).items()}
    mem.before_refit()  # the step's end: optimizer state offloaded (reading it now would crash)
    mem.after_refit()
    with mem.training_state_resident():  # what Trainer.save does
        path = save_checkpoint(state, save_dir)
    offloaded = all(v.untyped_storage().nbytes() == 0 for v in _adam_state(state.optimizer).values())
    resumed, _ = train_state(hf_dir, recipe=recipe)
    load_checkpoint(resumed, path)
    loaded = _adam_state(resumed.optimizer)
    out = {"calls": list(eng.calls), "offloaded_after": offloaded, "keys": sorted(adam) == sorted(loaded),
           "equal": [torch.equal(v, loaded[k]) for k, v in adam.items()]}
    mem.to_training()  # the next step's: the state back from host memory
    for s in (state, resumed):
        sgd_steps(s, fixed_tokens(seed=4), steps=1)
    out["next_step_equal"] = [torch.equal(a, b) for a, b in zip(state.policy.parameters(), resumed.policy.parameters())]
    return out


@pytest.mark.parametrize("recipe", [False, True], ids=["fp32", "bf16_distributed_optimizer"])
def test_a_checkpoint_saved_while_offloaded_holds_the_optimizer_state(tiny_dirs, tmp_path, recipe):
    """Offloaded optimizer state (with the recipe: fp32 main-parameter and Adam shards of megatron's
    distributed optimizer) is saved whole, and after it comes back from host memory the next step
    equals the step of a run resumed from that checkpoint, bit for bit."""
    from dist_utils import run_distributed

    (r,) = run_distributed(_save_while_offloaded, world_size=1, timeout=300, hf_dir=tiny_dirs["qwen3"],
                           save_dir=str(tmp_path), recipe=recipe)
    assert r["keys"] and r["equal"] and all(r["equal"]) and r["offloaded_after"]
    assert r["next_step_equal"] and all(r["next_step_equal"])
    # the engine sleeps at level 1 for the save (its weights kept: no refit) and wakes whole after it
    assert r["calls"][-2:] == [("sleep", 1), ("wake_up", ("weights", "kv_cache"))]
