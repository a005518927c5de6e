"""DAPO dynamic sampling over 2 data-parallel replicas (gloo): kept groups are counted globally (one
replica keeping nothing does not stall the loop), the shares are equal and their concatenation equals the
one-process result; running out of rounds is an error by default, or trains on whole mini-batches."""
from dataclasses import dataclass

import pytest
import torch

N = 2  # rollouts per prompt


@dataclass
class FakeRollout:
    prompt_uid: int
    acc: float


def _round(rank: int, rnd: int) -> list:
    """Two prompts of one replica in one round: replica 0's groups are mixed (kept), replica 1's all wrong."""
    accs = (1.0, 0.0) if rank == 0 else (0.0, 0.0)
    return [FakeRollout(1000 * rnd + 10 * rank + p, a) for p in range(2) for a in accs]


def _collect(rank, dp_size, max_rounds, on_exhausted, group):
    from megatron_mcpo.training.dynamic_sampling import dynamic_sampling_rounds

    counter = iter(range(1, 100))

    def generate_round():
        rnd = next(counter)
        # one process stands for both replicas: their rollouts in replica order
        rollouts = _round(rank, rnd) if dp_size > 1 else _round(0, rnd) + _round(1, rnd)
        return rollouts, [a.acc for a in rollouts]

    return dynamic_sampling_rounds(
        generate_round, lambda rs: torch.tensor([r.acc for r in rs], dtype=torch.float64),
        n=N, train_batch_prompts=4, mini_batch_prompts=2, max_rounds=max_rounds, metric="acc",
        on_exhausted=on_exhausted, dp_group=group, dp_rank=rank if dp_size > 1 else 0, dp_size=dp_size,
    )


def _rank_fn(rank):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = {}
    res = _collect(rank, 2, max_rounds=5, on_exhausted="error", group=dist.group.WORLD)
    out["full"] = ([r.prompt_uid for r in res.rollouts], res.groups_kept, res.rounds, res.exhausted, len(res.results))
    res = _collect(rank, 2, max_rounds=1, on_exhausted="continue", group=dist.group.WORLD)
    out["partial"] = ([r.prompt_uid for r in res.rollouts], res.groups_kept, res.rounds, res.exhausted)
    try:
        _collect(rank, 2, max_rounds=1, on_exhausted="error", group=dist.group.WORLD)
        out["error"] = None
    except RuntimeError as e:  # raised on every replica together: none is left waiting in a collective
        out["error"] = str(e)
    return out


def test_dp2_counts_kept_groups_globally_and_matches_one_process():
    from dist_utils import run_distributed

    r0, r1 = run_distributed(_rank_fn, world_size=2, timeout=300)
    one = _collect(0, 1, max_rounds=5, on_exhausted="error", group=None)
    # 2 groups kept per round (replica 0's), 4 needed: done after 2 rounds; a per-replica minimum never would be
    assert one.groups_kept == 4 and one.rounds == 2 and not one.exhausted
    uids0, kept0, rounds0, exhausted0, results0 = r0["full"]
    uids1, kept1, rounds1, _, _ = r1["full"]
    assert kept0 == kept1 == 4 and rounds0 == rounds1 == 2 and not exhausted0
    assert results0 == 2 * 2 * N  # each replica's own rollouts of 2 rounds, for the reward metrics
    assert len(uids0) == len(uids1) == 2 * N  # equal shares of whole groups
    assert uids0 + uids1 == [r.prompt_uid for r in one.rollouts]
    assert uids0 == [1000, 1000, 1001, 1001] and uids1 == [2000, 2000, 2001, 2001]
    # out of rounds with on_exhausted=continue: the 2 kept groups are one whole mini-batch, one group each
    for r, uids in ((r0, [1000, 1000]), (r1, [1001, 1001])):
        assert r["partial"] == (uids, 2, 1, True)
        assert "kept 2 of the 4 prompt groups" in r["error"]


def test_not_one_mini_batch_kept_is_an_error():
    from megatron_mcpo.training.dynamic_sampling import dynamic_sampling_rounds

    def all_wrong():
        rollouts = _round(1, 1)
        return rollouts, []

    with pytest.raises(RuntimeError, match="not one mini-batch"):
        dynamic_sampling_rounds(all_wrong, lambda rs: torch.tensor([r.acc for r in rs], dtype=torch.float64), n=N,
                                train_batch_prompts=4, mini_batch_prompts=2, max_rounds=2, metric="acc",
                                on_exhausted="continue", dp_group=None, dp_rank=0, dp_size=1)
