"""demo --warm-start-cache: the first run warms up and saves the policy's chunks atomically; a later run loads
them instead (and refits the engine); a cache of another model layout is refused by name."""
from types import SimpleNamespace

import pytest
import torch

from megatron_mcpo.demo import cached_warm_start


def _trainer(chunks):
    refits = []
    trainer = SimpleNamespace(state=SimpleNamespace(policy=SimpleNamespace(chunks=chunks)),
                              groups=SimpleNamespace(device=torch.device("cpu"), world_rank=0),
                              refit=lambda: refits.append(1))
    return trainer, refits


def test_warm_start_is_saved_once_and_loaded_after(tmp_path):
    path = str(tmp_path / "cache" / "warm.pt")
    torch.manual_seed(0)
    warmed, _ = _trainer([torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)])

    def warm_start():
        with torch.no_grad():
            for p in warmed.state.policy.chunks[0].parameters():
                p.add_(1.0)

    assert cached_warm_start(warmed, path, warm_start) == "ran"
    assert not (tmp_path / "cache" / "warm.pt.tmp").exists()
    fresh, refits = _trainer([torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)])
    assert cached_warm_start(fresh, path, lambda: pytest.fail("the cache was not used")) == "loaded"
    for a, b in zip(warmed.state.policy.chunks, fresh.state.policy.chunks):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    assert refits == [1]  # the engine gets the loaded weights
    other, _ = _trainer([torch.nn.Linear(4, 3)])
    with pytest.raises(ValueError, match="holds 2 model chunks, this run has 1"):
        cached_warm_start(other, path, lambda: None)


def test_without_a_path_it_only_warms_up():
    trainer, refits = _trainer([torch.nn.Linear(2, 2)])
    ran = []
    assert cached_warm_start(trainer, None, lambda: ran.append(1)) == "ran" and ran == [1] and refits == []
