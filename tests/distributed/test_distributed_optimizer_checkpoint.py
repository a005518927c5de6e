"""The distributed optimizer's checkpoint (bf16 parameters, fp32 main-parameter and Adam shards, no TE/Apex)
reshards across data parallelism: saved by 2 data-parallel ranks after one step, loaded by 1, whose next
step equals the 2-rank run's next step bit for bit (elementwise Adam on the same values; clipping off, so
no norm summed in another order enters)."""
import torch

from dist_utils import run_distributed


def _state(seed: int):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state

    cfg = load_config(overrides=["run.device=cpu", "model.params_dtype=bf16", "optimizer.lr=1e-2",
                                 "optimizer.clip_grad=0", "parallel.use_distributed_optimizer=true"])
    groups = init_distributed(device="cpu")
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


def _save_on_two(rank, save_dir):
    from megatron_mcpo.training.checkpoint import save_checkpoint

    state = _state(0)
    _step(state, 1)
    path = save_checkpoint(state, save_dir)
    return path, _step(state, 2)


def _resume_on_one(rank, path):
    from megatron_mcpo.training.checkpoint import load_checkpoint

    state = _state(7)  # other initial weights: everything comes from the checkpoint
    load_checkpoint(state, path)
    return _step(state, 2)


def test_distributed_optimizer_checkpoint_reshards_across_data_parallelism(tmp_path):
    (path, two), _ = run_distributed(_save_on_two, world_size=2, timeout=300, save_dir=str(tmp_path))
    (one,) = run_distributed(_resume_on_one, world_size=1, timeout=300, path=path)
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        assert torch.equal(a, b)
