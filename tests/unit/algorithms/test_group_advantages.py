"""GRPO / Dr.GRPO / RLOO advantages (docs/mcpo.md §2.1–§2.2)."""
import math

import pytest
import torch

from megatron_mcpo.algorithms.advantages import group_advantages

F64 = torch.float64
R_A = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 0.0], dtype=F64)
P_A = torch.tensor([0, 0, 1, 1, 2, 2])


def test_grpo_example_a():
    adv = group_advantages(R_A, P_A, "grpo", eps=1e-6)
    spec = torch.tensor([0.707106, -0.707106, 0.707105, -0.707105, 0.707106, -0.707106], dtype=F64)
    torch.testing.assert_close(adv, spec, atol=1e-6, rtol=0)
    # exact form: group {1, 0}: ±0.5 / (std √0.5 + eps); group {1, 0.5}: ±0.25 / (√0.125 + eps)
    a, b = 0.5 / (math.sqrt(0.5) + 1e-6), 0.25 / (math.sqrt(0.125) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -a, b, -b, a, -a], dtype=F64), atol=1e-15, rtol=0)


def test_hand_values_with_unequal_groups_and_a_singleton():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.7, 2.0, 4.0], dtype=F64)
    prompts = torch.tensor([5, 5, 5, 9, 3, 3])  # groups {1,0,0}, singleton {0.7}, {2,4}; ids not sorted
    sd3 = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of {1,0,0}
    grpo = [(2 / 3) / (sd3 + 1e-6), -(1 / 3) / (sd3 + 1e-6), -(1 / 3) / (sd3 + 1e-6),
            0.7 / (1 + 1e-6),  # singleton: mean 0, std 1
            -1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)]
    drgrpo = [2 / 3, -1 / 3, -1 / 3, 0.7, -1.0, 1.0]
    rloo = [1.0, -0.5, -0.5, 0.7, -2.0, 2.0]  # r_i minus the mean of the other members
    for estimator, expected in (("grpo", grpo), ("drgrpo", drgrpo), ("rloo", rloo)):
        torch.testing.assert_close(group_advantages(rewards, prompts, estimator),
                                   torch.tensor(expected, dtype=F64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_order_and_split_independent_bitwise(estimator):
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(64, generator=g, dtype=F64).round(decimals=1)
    prompts = torch.randint(0, 9, (64,), generator=g) * 1000 + 17  # large, sparse ids
    base = group_advantages(rewards, prompts, estimator)
    perm = torch.randperm(64, generator=g)
    shuffled = group_advantages(rewards[perm], prompts[perm], estimator)
    assert torch.equal(shuffled, base[perm])


def test_bad_input():
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(R_A, P_A, "ppo")
    with pytest.raises(TypeError, match="group_ids must be an integer"):
        group_advantages(R_A, P_A.double())
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([float("nan"), 1.0], dtype=F64), P_A[:2])



def _adv_metrics(rank, parts):
    import torch.distributed as dist

    from megatron_mcpo.algorithms.advantages import advantage_metrics

    dist.init_process_group("gloo")
    return advantage_metrics(torch.tensor(parts[rank]), dist.group.WORLD)


def test_advantage_metrics_over_data_parallel_ranks_equal_one_process():
    from dist_utils import run_distributed
    from megatron_mcpo.algorithms.advantages import advantage_metrics

    parts = [[1.5, -0.5, 0.0], [-2.0, 1.0]]
    one = advantage_metrics(torch.tensor(parts[0] + parts[1]))
    assert one == pytest.approx({"adv/mean": 0.0, "adv/abs_mean": 1.0, "adv/max": 1.5, "adv/min": -2.0})
    a, b = run_distributed(_adv_metrics, world_size=2, timeout=120, parts=parts)
    assert a == b == pytest.approx(one)
    c, d = run_distributed(_adv_metrics, world_size=2, timeout=120, parts=[[], [0.25, -0.25]])  # an empty rank
    assert c == d == pytest.approx({"adv/mean": 0.0, "adv/abs_mean": 0.25, "adv/max": 0.25, "adv/min": -0.25})
    assert advantage_metrics(torch.zeros(0)) == {}
