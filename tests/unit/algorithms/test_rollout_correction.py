"""Rollout–training mismatch correction (TIS, masked sequence IS, ICEPOP) against hand-computed values,
the identity when both log-probs agree, and DP2 = one process. float64, tolerance 1e-12."""
import math

import pytest
import torch

from megatron_mcpo.algorithms.rollout_correction import reduce_correction_metrics, rollout_correction

F64 = torch.float64
# Two sequences; r = π_train/π_rollout per token: seq 0 = (3, 0.5, 1) + padding, seq 1 = (0.25, 1.5)
R = [[3.0, 0.5, 1.0, 7.0], [0.25, 1.5, 9.0, 9.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
VALID_R = [3.0, 0.5, 1.0, 0.25, 1.5]


def run(**knobs):
    rollout = torch.full((2, 4), -2.0, dtype=F64)
    old = rollout + torch.tensor(R, dtype=F64).log()
    w, m = rollout_correction(old, rollout, MASK, global_num_tokens=5, global_num_seqs=2, **knobs)
    return w, {k: v.item() for k, v in m.items()}


def test_identity_when_engine_and_megatron_agree():
    lp = -torch.rand(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0)) * 4
    for knobs in ({}, {"tis_cap": 2.0}, {"seq_mask_c": 1.01}, {"token_mask_low": 0.99, "token_mask_high": 1.01},
                  {"tis_cap": 1.0, "seq_mask_c": 1.0, "token_mask_low": 0.0, "token_mask_high": 1.0 + 1e-9}):
        w, m = rollout_correction(lp, lp.clone(), MASK, global_num_tokens=5, global_num_seqs=2, **knobs)
        assert torch.equal(w, MASK.to(F64)), knobs
        assert m["rollout_corr/mismatch_kl_k3"].item() == 0 and m["rollout_corr/mismatch_kl_k1"].item() == 0
        assert m["rollout_corr/ratio_mean"].item() == pytest.approx(1.0, abs=1e-12)
        assert m["rollout_corr/ratio_max"].item() == 1.0 and m["rollout_corr/weight_mean"].item() == pytest.approx(1.0)
        assert m["rollout_corr/token_masked_frac"].item() == 0 and m["rollout_corr/seq_masked_frac"].item() == 0


def test_metrics_without_correction():
    w, m = run()
    assert torch.equal(w, MASK.to(F64))
    assert m["rollout_corr/mismatch_kl_k3"] == pytest.approx(sum(r - math.log(r) - 1 for r in VALID_R) / 5, abs=1e-12)
    assert m["rollout_corr/mismatch_kl_k1"] == pytest.approx(-sum(math.log(r) for r in VALID_R) / 5, abs=1e-12)
    assert m["rollout_corr/ratio_mean"] == pytest.approx(6.25 / 5, abs=1e-12)
    assert m["rollout_corr/ratio_max"] == pytest.approx(3.0, abs=1e-12)  # padding's 7 and 9 never count


def test_tis_truncates_each_token_weight_at_the_cap():
    w, m = run(tis_cap=2.0)
    expected = torch.tensor([[2.0, 0.5, 1.0, 0.0], [0.25, 1.5, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=0)
    assert m["rollout_corr/tis_clipped_frac"] == pytest.approx(1 / 5, abs=1e-12)
    assert m["rollout_corr/weight_mean"] == pytest.approx(5.25 / 5, abs=1e-12)
    assert m["rollout_corr/token_masked_frac"] == 0 and m["rollout_corr/seq_masked_frac"] == 0


def test_sequence_mask_on_the_geometric_mean_ratio():
    # geometric means: seq 0 (3·0.5·1)^(1/3) = 1.1447, seq 1 (0.25·1.5)^(1/2) = 0.6124
    w, m = run(seq_mask_c=2.0)  # [0.5, 2]: both kept
    torch.testing.assert_close(w, MASK.to(F64))
    w, m = run(seq_mask_c=1.5)  # [0.667, 1.5]: seq 1 dropped
    torch.testing.assert_close(w, torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]], dtype=F64))
    assert m["rollout_corr/seq_masked_frac"] == pytest.approx(0.5) and m["rollout_corr/token_masked_frac"] == pytest.approx(0.4)
    w, m = run(seq_mask_c=1.1)  # [0.909, 1.1]: both dropped
    assert not w.any() and m["rollout_corr/seq_masked_frac"] == pytest.approx(1.0)


def test_icepop_token_mask_and_combination_with_tis():
    w, m = run(token_mask_low=0.45, token_mask_high=2.0)  # r = 3 and 0.25 outside [0.45, 2]
    torch.testing.assert_close(w, torch.tensor([[0.0, 1, 1, 0], [0, 1, 0, 0]], dtype=F64))
    assert m["rollout_corr/token_masked_frac"] == pytest.approx(2 / 5) and m["rollout_corr/seq_masked_frac"] == 0
    w, m = run(tis_cap=1.2, token_mask_low=0.4, token_mask_high=2.5)  # masks 3 and 0.25, caps 1.5 at 1.2
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.5, 1, 0], [0, 1.2, 0, 0]], dtype=F64), atol=1e-12, rtol=0)
    assert m["rollout_corr/weight_mean"] == pytest.approx(2.7 / 5, abs=1e-12)


def test_bad_input():
    lp = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="token_mask_high"):
        rollout_correction(lp, lp, MASK, global_num_tokens=5, global_num_seqs=2, token_mask_low=0.5)
    with pytest.raises(ValueError, match="tis_cap"):
        rollout_correction(lp, lp, MASK, global_num_tokens=5, global_num_seqs=2, tis_cap=0.5)
    with pytest.raises(ValueError, match="shape"):
        rollout_correction(lp, lp[:, :3], MASK, global_num_tokens=5, global_num_seqs=2)


def _batch():
    g = torch.Generator().manual_seed(3)
    rollout = -torch.rand(6, 9, generator=g, dtype=F64) * 3
    old = rollout + torch.randn(6, 9, generator=g, dtype=F64) * 0.6
    mask = torch.rand(6, 9, generator=g) < 0.8
    mask[2] = False  # a sequence without response tokens
    return old, rollout, mask


KNOBS = dict(tis_cap=1.5, seq_mask_c=1.3, token_mask_low=0.3, token_mask_high=3.0)


def _rank_fn(rank):
    import torch.distributed as dist

    from megatron_mcpo.training.minibatch import global_counts

    dist.init_process_group("gloo")
    old, rollout, mask = _batch()
    rows = slice(0, 4) if rank == 0 else slice(4, 6)  # unequal shares
    tokens, seqs = global_counts({"response_mask": mask[rows]}, dist.group.WORLD)
    w, m = rollout_correction(old[rows], rollout[rows], mask[rows], global_num_tokens=tokens, global_num_seqs=seqs, **KNOBS)
    return {"w": w, "metrics": reduce_correction_metrics(m, dist.group.WORLD)}


def test_dp2_equals_one_process():
    from dist_utils import run_distributed

    old, rollout, mask = _batch()
    w, m = rollout_correction(old, rollout, mask, global_num_tokens=float(mask.sum()),
                              global_num_seqs=float(mask.any(1).sum()), **KNOBS)
    single = reduce_correction_metrics(m, None)
    assert 0 < single["rollout_corr/token_masked_frac"] < 1 and single["rollout_corr/tis_clipped_frac"] > 0
    r0, r1 = run_distributed(_rank_fn, world_size=2, timeout=300)
    torch.testing.assert_close(torch.cat([r0["w"], r1["w"]]), w, atol=1e-12, rtol=0)
    for r in (r0, r1):
        assert r["metrics"].keys() == single.keys()
        for k, v in single.items():
            assert r["metrics"][k] == pytest.approx(v, abs=1e-12), k
