"""PromptSampler: epoch coverage, per-domain shares, resume, unique prompt indices."""
import pytest

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate
from megatron_mcpo.data.dataset import PromptSampler, record_domain


def _records(counts: dict) -> list[dict]:
    return [{"prompt": f"{d}-{i}", "data_source": d, "reward_model": {"ground_truth": "x"}}
            for d, n in counts.items() for i in range(n)]


def test_unweighted_epochs_cover_every_record_once_and_resume_continues():
    recs = _records({"math": 4, "code": 3})
    s = PromptSampler(recs, seed=0)
    first = [r["prompt"] for _, r in s.next_batch(7)]
    second = [r["prompt"] for _, r in s.next_batch(7)]
    assert sorted(first) == sorted(second) == sorted(r["prompt"] for r in recs) and first != second
    state = s.state_dict()
    want = s.next_batch(5)
    resumed = PromptSampler(recs, seed=0)
    resumed.load_state_dict(state)
    assert resumed.next_batch(5) == want


def test_weighted_batches_follow_the_shares_without_drift():
    recs = _records({"math": 10, "code": 3, "science": 5, "safety": 4})
    w = {"math": 2.0, "code": 1.0, "science": 1.0, "safety": 0.0}
    s = PromptSampler(recs, seed=1, domain_weights=w)
    batch = [record_domain(r) for _, r in s.next_batch(8)]
    assert {d: batch.count(d) for d in ("math", "code", "science", "safety")} == {"math": 4, "code": 2, "science": 2, "safety": 0}
    drawn = {"math": 0, "code": 0, "science": 0}
    for k in range(1, 50):  # batches of 5 do not divide the shares; the running totals stay within one prompt
        if (k - 1) % 5 == 0:
            batch = s.next_batch(5)
        drawn[record_domain(batch[(k - 1) % 5][1])] += 1
        for d, share in (("math", 0.5), ("code", 0.25), ("science", 0.25)):
            assert abs(drawn[d] - share * k) < 1 + 1e-9, (k, drawn)


def test_weighted_indices_unique_when_a_domain_wraps_inside_a_batch():
    recs = _records({"math": 2, "code": 5})
    s = PromptSampler(recs, seed=0, domain_weights={"math": 1.0, "code": 1.0})
    batch = s.next_batch(10)  # math's 2 records are drawn over three epochs here
    assert len({i for i, _ in batch}) == 10
    assert sum(record_domain(r) == "math" for _, r in batch) == 5


def test_weighted_resume_and_mismatched_state():
    recs = _records({"math": 6, "code": 6})
    w = {"math": 3.0, "code": 1.0}
    s = PromptSampler(recs, seed=3, domain_weights=w)
    s.next_batch(3)
    state = s.state_dict()
    want = s.next_batch(6)
    resumed = PromptSampler(recs, seed=3, domain_weights=w)
    resumed.load_state_dict(state)
    assert resumed.next_batch(6) == want
    with pytest.raises(ValueError, match="does not match data.domain_weights"):
        PromptSampler(recs, seed=3).load_state_dict(state)


def test_weight_for_a_domain_without_records_is_an_error():
    with pytest.raises(ValueError, match=r"no prompt records for domain\(s\) \['tooluse'\]"):
        PromptSampler(_records({"math": 2}), seed=0, domain_weights={"math": 1.0, "tooluse": 1.0})


def test_config_weights_must_align_with_domains():
    cfg = load_config(overrides=["data.domains=[math,code]", "data.domain_weights=[1.0]", "run.device=cpu"])
    with pytest.raises(ConfigError, match="1 weights for 2 data.domains"):
        validate(cfg, cuda_available=False)
    cfg = load_config(overrides=["data.domains=[math,code]", "data.domain_weights=[0,0]", "run.device=cpu"])
    with pytest.raises(ConfigError, match="positive sum"):
        validate(cfg, cuda_available=False)
