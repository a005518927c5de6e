"""demo --warm-start-cache: the first run warms up and saves the policy's chunks atomically; a later run loads
them instead (and refits the engine); a cache of another model layout is refused by name. The KL reference
starts from the warmed-up policy, also on resume (from the cache: the training checkpoint does not hold it),
and a resumed run keeps its checkpoint's policy. Under TP each model-parallel rank caches its own shard,
and the cache is used only when every rank has its file."""
import os
from types import SimpleNamespace

import pytest
import torch

from megatron_mcpo.demo import cached_warm_start
from megatron_mcpo.training.ckpt_files import CheckpointError


def _chunks(*sizes):
    return [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]


def _trainer(chunks, reference=None, rl_steps=0):
    """A trainer's parts cached_warm_start uses; `refits` records its calls: the optimizer's reload of the
    loaded weights into its main parameters, then the refit."""
    refits = []
    optimizer = SimpleNamespace(reload_model_params=lambda: refits.append("reload"))
    trainer = SimpleNamespace(state=SimpleNamespace(policy=SimpleNamespace(chunks=chunks), optimizer=optimizer),
                              reference=reference and SimpleNamespace(policy=SimpleNamespace(chunks=reference)),
                              groups=SimpleNamespace(device=torch.device("cpu"), dp_rank=0, tp_size=1, pp_size=1),
                              refit=lambda: refits.append("refit"), rl_steps=rl_steps)
    return trainer, refits


def _equal(a_chunks, b_chunks) -> bool:
    return all(torch.equal(x, y) for a, b in zip(a_chunks, b_chunks) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _warm(trainer):
    def warm_start():
        with torch.no_grad():
            for p in trainer.state.policy.chunks[0].parameters():
                p.add_(1.0)
    return warm_start


def test_warm_start_is_saved_once_and_loaded_after(tmp_path):
    path = str(tmp_path / "cache" / "warm.pt")
    torch.manual_seed(0)
    warmed, _ = _trainer(_chunks(4, 3, 2))
    assert cached_warm_start(warmed, path, _warm(warmed)) == "ran"
    assert not (tmp_path / "cache" / "warm.pt.tmp").exists()
    fresh, refits = _trainer(_chunks(4, 3, 2), reference=_chunks(4, 3, 2))
    assert cached_warm_start(fresh, path, lambda: pytest.fail("the cache was not used")) == "loaded"
    assert _equal(warmed.state.policy.chunks, fresh.state.policy.chunks)
    assert _equal(warmed.state.policy.chunks, fresh.reference.policy.chunks)  # KL toward the warm start
    assert refits == ["reload", "refit"]  # the optimizer (bf16 main parameters) and the engine get them
    other, _ = _trainer(_chunks(4, 3))
    with pytest.raises(CheckpointError, match="holds 2 model chunks, this run has 1"):
        cached_warm_start(other, path, lambda: None)
    wider, _ = _trainer(_chunks(4, 5, 2))
    with pytest.raises(CheckpointError, match="is not a warm start of this model"):
        cached_warm_start(wider, path, lambda: None)


def test_resumed_run_keeps_its_policy_and_takes_the_reference_from_the_cache(tmp_path):
    path = str(tmp_path / "warm.pt")
    warmed, _ = _trainer(_chunks(4, 3, 2))
    cached_warm_start(warmed, path, _warm(warmed))
    policy = _chunks(4, 3, 2)
    before = [{k: v.clone() for k, v in c.state_dict().items()} for c in policy]
    resumed, refits = _trainer(policy, reference=_chunks(4, 3, 2), rl_steps=3)
    assert cached_warm_start(resumed, path, lambda: pytest.fail("a resumed run warmed up again")) == "resumed"
    assert all(torch.equal(c.state_dict()[k], v) for c, b in zip(policy, before) for k, v in b.items())
    assert _equal(warmed.state.policy.chunks, resumed.reference.policy.chunks) and refits == []
    no_cache, _ = _trainer(_chunks(4, 3, 2), reference=_chunks(4, 3, 2), rl_steps=3)
    with pytest.raises(CheckpointError, match="kl_coef > 0 needs the first run's --warm-start-cache"):
        cached_warm_start(no_cache, None, lambda: pytest.fail("a resumed run warmed up again"))
    no_kl, _ = _trainer(_chunks(4, 3, 2), rl_steps=3)
    assert cached_warm_start(no_kl, None, lambda: pytest.fail("a resumed run warmed up again")) == "resumed"


def test_without_a_path_it_only_warms_up():
    trainer, refits = _trainer(_chunks(2, 2))
    ran = []
    assert cached_warm_start(trainer, None, lambda: ran.append(1)) == "ran" and ran == [1] and refits == []


def _tp2_rank(rank, path):
    import torch.distributed as dist

    dist.init_process_group("gloo")

    def trainer(seed):
        torch.manual_seed(seed)
        t, _ = _trainer(_chunks(4, 3))
        t.groups.tp_size, t.groups.tp_rank, t.groups.pp_rank = 2, rank, 0
        return t

    warmed = trainer(10 + rank)  # each TP rank holds a different shard
    assert cached_warm_start(warmed, path, _warm(warmed)) == "ran"
    dist.barrier()
    fresh = trainer(20 + rank)
    loaded = cached_warm_start(fresh, path, lambda: pytest.fail("the cache was not used"))
    same = _equal(warmed.state.policy.chunks, fresh.state.policy.chunks)
    if rank == 1:
        os.remove(f"{path}.tp1-pp0")
    dist.barrier()
    ran = []
    partial = cached_warm_start(trainer(30 + rank), path, lambda: ran.append(1))
    return loaded, same, partial, ran


def test_tp_ranks_cache_their_own_shards_and_use_them_only_all_together(tmp_path):
    from dist_utils import run_distributed

    path = str(tmp_path / "warm.pt")
    for rank_result in run_distributed(_tp2_rank, world_size=2, timeout=120, path=path):
        assert rank_result == ("loaded", True, "ran", [1])
    assert sorted(os.listdir(tmp_path)) == ["warm.pt.tp0-pp0", "warm.pt.tp1-pp0"]
