"""DAPO dynamic-sampling filter and overlong penalty (docs/mcpo.md §2.3), and the domain enumeration."""
import pytest
import torch

from megatron_mcpo.algorithms.dapo import (
    dynamic_sampling_filter,
    dynamic_sampling_status,
    overlong_penalty,
    replica_share,
    usable_groups,
)
from megatron_mcpo.domains import DOMAINS, domain_id, domain_name

F64 = torch.float64


def test_dynamic_sampling_keeps_mixed_groups():
    # groups: 7 all correct, 3 all wrong, 5 mixed, 9 mixed (interleaved), 4 single correct
    acc = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=F64)
    prompts = torch.tensor([7, 7, 3, 3, 5, 5, 9, 9, 9, 4])
    keep, m = dynamic_sampling_filter(acc, prompts, "acc")
    assert keep.tolist() == [False, False, False, False, True, True, True, True, True, False]
    assert m == {"num_groups": 5, "num_kept_groups": 2, "frac_groups_all_correct": 0.4, "frac_groups_all_wrong": 0.2}


def test_dynamic_sampling_reward_metric_drops_all_equal_groups():
    # shaped rewards: group 0 all 0.5 (kept by 'acc', which only drops all-0 / all-1), group 1 unequal
    values = torch.tensor([0.5, 0.5, 1.0, 0.75], dtype=F64)
    prompts = torch.tensor([0, 0, 1, 1])
    assert dynamic_sampling_filter(values, prompts, "reward")[0].tolist() == [False, False, True, True]
    assert dynamic_sampling_filter(values, prompts, "acc")[0].tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="metric"):
        dynamic_sampling_filter(values, prompts, "std")


def test_overlong_penalty_verl_formula():
    # L_max = 20, L_buf = 4: free up to 16 tokens, then linear to −factor at 20
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=F64)
    lengths = torch.tensor([10, 16, 18, 19, 20])
    shaped, penalty = overlong_penalty(scores, lengths, max_response_length=20, buffer_len=4, penalty_factor=1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0], dtype=F64), atol=1e-15, rtol=0)
    torch.testing.assert_close(shaped, torch.tensor([1.0, 1.0, -0.5, 0.25, 0.0], dtype=F64), atol=1e-15, rtol=0)
    _, penalty = overlong_penalty(scores, lengths, max_response_length=20, buffer_len=4, penalty_factor=0.5)
    assert penalty[3].item() == pytest.approx(-0.375, abs=1e-15)
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(scores, lengths, max_response_length=20, buffer_len=21, penalty_factor=1.0)


def test_domain_enumeration():
    assert DOMAINS == ("math", "code", "science", "tooluse", "safety")
    assert [domain_id(d) for d in DOMAINS] == [0, 1, 2, 3, 4]
    assert domain_name(3) == "tooluse"
    with pytest.raises(ValueError, match="unknown domain 'chemistry'.*math, code"):
        domain_id("chemistry")
    with pytest.raises(ValueError, match="unknown domain id 5"):
        domain_name(5)


def test_dynamic_sampling_status_bookkeeping():
    assert dynamic_sampling_status(8, 8, rounds=1, max_rounds=3) == "enough"
    assert dynamic_sampling_status(11, 8, rounds=3, max_rounds=3) == "enough"
    assert dynamic_sampling_status(5, 8, rounds=2, max_rounds=3) == "continue"
    with pytest.raises(RuntimeError, match="kept 5 of the 8 prompt groups.*3 generation rounds"):
        dynamic_sampling_status(5, 8, rounds=3, max_rounds=3)  # verl's recipe stops here by default
    assert dynamic_sampling_status(5, 8, rounds=3, max_rounds=3, on_exhausted="continue") == "exhausted"
    with pytest.raises(ValueError, match="max_rounds"):
        dynamic_sampling_status(0, 8, rounds=1, max_rounds=0)
    with pytest.raises(ValueError, match="on_exhausted"):
        dynamic_sampling_status(0, 8, rounds=1, max_rounds=1, on_exhausted="warn")


def test_usable_groups_and_replica_shares():
    assert usable_groups(11, 8, 4) == 8  # never more than the batch
    assert usable_groups(7, 8, 4) == 4 and usable_groups(3, 8, 4) == 0  # whole mini-batches only
    groups = list("abcdefghij")
    assert [replica_share(groups, 8, r, 4) for r in range(4)] == [list("ab"), list("cd"), list("ef"), list("gh")]
    with pytest.raises(ValueError, match="cannot be split"):
        replica_share(groups, 6, 0, 4)
