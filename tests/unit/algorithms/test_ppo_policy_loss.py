"""PPO-clip / DAPO policy loss (docs/mcpo.md §2.1–§2.3) against hand-computed values, and its invariance to how a
mini-batch is split into micro-batches and ranks. float64."""
import math

import pytest
import torch

from megatron_mcpo.algorithms.policy_loss import aggregate, kl_penalty, ppo_policy_loss

F64 = torch.float64
CLIP = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)

# Two sequences of 4 tokens; sequence 0's last token is padding. Ratios ρ = exp(logp − old):
#   seq 0, Â = +1: ρ = 1.5 (clipped to 1.28 → −1.28), 0.5 (unclipped → −0.5), 1.1 (→ −1.1)
#   seq 1, Â = −1: ρ = 0.5 (clipped to 0.8 → 0.8), 5 (PPO gives 5, dual clip caps at 3), 1 (→ 1), 2 (→ 2)
RATIOS = [[1.5, 0.5, 1.1, 3.0], [0.5, 5.0, 1.0, 2.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
ADV = torch.tensor([1.0, -1.0], dtype=F64)
TOKEN_LOSS = [[-1.28, -0.5, -1.1], [0.8, 3.0, 1.0, 2.0]]


def inputs():
    old = torch.full((2, 4), -1.0, dtype=F64)
    return old + torch.tensor(RATIOS, dtype=F64).log(), old


def loss(mode="token-mean", **kw):
    logp, old = inputs()
    args = dict(CLIP, loss_agg_mode=mode, global_num_tokens=7, global_num_seqs=2, loss_agg_norm_length=8)
    args.update(kw)
    return ppo_policy_loss(logp, old, ADV, MASK, **args)


def test_clip_higher_dual_clip_and_each_aggregation():
    total = sum(map(sum, TOKEN_LOSS))  # 3.92
    value, m = loss("token-mean")
    assert value.item() == pytest.approx(total / 7, abs=1e-12)
    value, _ = loss("seq-mean-token-mean")
    assert value.item() == pytest.approx((sum(TOKEN_LOSS[0]) / 3 + sum(TOKEN_LOSS[1]) / 4) / 2, abs=1e-12)
    value, _ = loss("seq-mean-token-sum-norm")
    assert value.item() == pytest.approx(total / (2 * 8), abs=1e-12)
    # verl's seq-mean-token-sum: each sequence's token sum (−2.88 and 6.8), then the mean over the 2 sequences
    value, _ = loss("seq-mean-token-sum")
    assert value.item() == pytest.approx((-2.88 + 6.8) / 2, abs=1e-12)
    # metrics: upper/lower PPO clip on seq 0 token 0 and seq 1 token 0; dual clip on seq 1 token 1
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 7, abs=1e-12)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 7, abs=1e-12)
    assert m["ppo_kl"].item() == pytest.approx(-math.log(1.5 * 0.5 * 1.1 * 0.5 * 5 * 1 * 2) / 7, abs=1e-12)
    assert m["pg_loss"].item() == pytest.approx(total / 7, abs=1e-12)


def test_symmetric_clip_changes_only_the_upper_clipped_token():
    value, _ = loss(clip_ratio_high=0.2)
    # seq 0 token 0 now clips at 1.2; seq 1 token 1 (PPO branch 1.2 < 5) is still capped by the dual clip
    assert value.item() == pytest.approx((3.92 + 1.28 - 1.2) / 7, abs=1e-12)


def test_clipped_tokens_get_no_gradient():
    logp, old = inputs()
    logp.requires_grad_()
    ppo_policy_loss(logp, old, ADV, MASK, **CLIP, loss_agg_mode="token-mean", global_num_tokens=7,
                    global_num_seqs=2)[0].backward()
    g = logp.grad
    assert g[0, 0] == 0 and g[1, 0] == 0 and g[1, 1] == 0 and g[0, 3] == 0  # clipped, dual-clipped, padding
    assert g[0, 1].item() == pytest.approx(-0.5 / 7, abs=1e-12)  # −Â·ρ / tokens
    assert g[1, 3].item() == pytest.approx(2.0 / 7, abs=1e-12)


def test_ratio_clamp():
    logp = torch.tensor([[-31.0]], dtype=F64)
    old = torch.tensor([[-1.0]], dtype=F64)
    one = torch.ones(1, 1, dtype=torch.bool)
    kw = dict(CLIP, loss_agg_mode="token-mean", global_num_tokens=1, global_num_seqs=1)
    value, m = ppo_policy_loss(logp, old, torch.ones(1, dtype=F64), one, **kw)  # log ρ = −30 → −20
    assert value.item() == pytest.approx(-math.exp(-20), rel=1e-12)
    assert m["ppo_kl"].item() == pytest.approx(20.0, abs=1e-12)
    value, _ = ppo_policy_loss(logp, old, torch.ones(1, dtype=F64), one, **kw | {"ratio_log_clamp": 40.0})
    assert value.item() == pytest.approx(-math.exp(-30), rel=1e-12)


def test_entropy_bonus_and_kl_estimators():
    entropy = torch.tensor([[0.5, 1.0, 1.5, 9.0], [2.0, 2.0, 2.0, 2.0]], dtype=F64)
    value, m = loss(entropy=entropy, entropy_coef=0.01)
    assert m["entropy"].item() == pytest.approx(11 / 7, abs=1e-12)
    assert value.item() == pytest.approx(3.92 / 7 - 0.01 * 11 / 7, abs=1e-12)

    logp, _ = inputs()
    delta = torch.tensor([[0.1, -0.2, 0.0, 5.0], [0.3, 0.0, -0.1, 0.2]], dtype=F64)  # log π_ref − log π_θ
    ref = logp + delta
    valid = [0.1, -0.2, 0.0, 0.3, 0.0, -0.1, 0.2]
    k1 = sum(-d for d in valid) / 7
    k3 = sum(math.exp(d) - d - 1 for d in valid) / 7
    for estimator, expected in (("k1", k1), ("k3", k3)):
        value, m = loss(ref_logprobs=ref, kl_coef=0.5, kl_estimator=estimator)
        assert m["kl_loss"].item() == pytest.approx(expected, abs=1e-12)
        assert value.item() == pytest.approx(3.92 / 7 + 0.5 * expected, abs=1e-12)
    assert kl_penalty(torch.zeros(1, dtype=F64), torch.tensor([50.0], dtype=F64), "k3").item() == 10.0  # verl clamp


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batch_and_rank_splits_sum_to_the_whole_batch(mode):
    g = torch.Generator().manual_seed(0)
    b, t = 6, 7
    logp = -torch.rand(b, t, generator=g, dtype=F64) * 3
    old = logp + (torch.rand(b, t, generator=g, dtype=F64) - 0.5) * 0.8
    ref = logp + (torch.rand(b, t, generator=g, dtype=F64) - 0.5)
    entropy = torch.rand(b, t, generator=g, dtype=F64)
    adv = torch.randn(b, generator=g, dtype=F64)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[4] = False  # a sequence without valid tokens counts for nothing
    tokens, seqs = int(mask.sum()), int(mask.any(1).sum())
    kw = dict(CLIP, loss_agg_mode=mode, global_num_tokens=tokens, global_num_seqs=seqs, loss_agg_norm_length=t,
              entropy_coef=0.01, kl_coef=0.1, kl_estimator="k3")

    def run(rows, cols=slice(None)):
        return ppo_policy_loss(logp[rows, cols], old[rows, cols], adv[rows], mask[rows, cols],
                               entropy=entropy[rows, cols], ref_logprobs=ref[rows, cols], **kw)

    whole, whole_m = run(slice(None))
    splits = [run(slice(0, 2)), run(slice(2, 5)), run(slice(5, 6))]  # e.g. micro-batches over 2 ranks
    assert sum(s[0] for s in splits).item() == pytest.approx(whole.item(), abs=1e-12)
    for name, value in whole_m.items():
        assert sum(s[1][name] for s in splits).item() == pytest.approx(value.item(), abs=1e-12), name
    if mode != "seq-mean-token-mean":  # token-level splits (e.g. context parallel) also add up
        cols = [run(slice(None), slice(0, 3)), run(slice(None), slice(3, t))]
        assert sum(c[0] for c in cols).item() == pytest.approx(whole.item(), abs=1e-12)


def test_seq_mean_token_sum_uses_the_global_sequence_count():
    """Each piece divides by the whole mini-batch's sequence count (not its own): a micro-batch holding one
    of 4 sequences contributes its token sum / 4, and a sequence without tokens is not counted."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [7.0, 7.0, 0.0], [5.0, 5.0, 5.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    whole = aggregate(x, m, "seq-mean-token-sum", global_num_tokens=6, global_num_seqs=3)
    assert whole.item() == pytest.approx((6 + 4 + 14) / 3, abs=1e-12)
    pieces = [aggregate(x[i : i + 1], m[i : i + 1], "seq-mean-token-sum", global_num_tokens=6, global_num_seqs=3)
              for i in range(4)]
    assert [p.item() for p in pieces] == pytest.approx([2.0, 4 / 3, 14 / 3, 0.0], abs=1e-12)


def test_k3_kl_is_finite_at_extreme_log_ratios():
    """log π − log π_ref = −95 (ρ = π_ref/π = e^95): verl clamps log ρ to 20 before exp, so the value is
    the [−10, 10] clamp's 10 and the gradient finite (0: both clamps are active). Without the log-ratio
    clamp exp(95)·grad overflows to inf − inf = NaN in float32."""
    for dtype in (torch.float32, F64):
        logp = torch.tensor([-100.0, -5.0, -3.0], dtype=dtype, requires_grad=True)
        ref = torch.tensor([-5.0, -100.0, -3.5], dtype=dtype)  # log ratios +95, −95, −0.5
        kl = kl_penalty(logp, ref, "k3")
        kl.sum().backward()
        assert torch.isfinite(kl).all() and torch.isfinite(logp.grad).all(), dtype
        assert kl[0].item() == 10.0 and kl[1].item() == 10.0  # e^20 − 21 and e^−20 + 19, both clamped to 10
        assert kl[2].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1, rel=1e-6)
        # d/dlogπ of e^{log ρ} − log ρ − 1 with log ρ = logπ_ref − logπ: 1 − e^{log ρ}
        assert logp.grad[2].item() == pytest.approx(1 - math.exp(-0.5), rel=1e-6)
        assert logp.grad[0].item() == 0.0 and logp.grad[1].item() == 0.0  # the value clamp is active


def test_is_weights_scale_each_tokens_policy_term_only():
    w = torch.tensor([[2.0, 0.0, 1.0, 5.0], [1.0, 1.0, 0.5, 0.0]], dtype=F64)  # 5.0 sits on padding
    entropy = torch.ones(2, 4, dtype=F64)
    value, m = loss(is_weights=w, entropy=entropy, entropy_coef=0.1)
    weighted = 2 * -1.28 + 0 + 1.1 * -1 + 0.8 + 3.0 + 0.5 * 1.0 + 0
    assert value.item() == pytest.approx(weighted / 7 - 0.1, abs=1e-12)  # same denominator, entropy unweighted
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 7, abs=1e-12)  # metrics see the unweighted ratios
    logp, old = inputs()
    logp.requires_grad_()
    ppo_policy_loss(logp, old, ADV, MASK, **CLIP, loss_agg_mode="token-mean", global_num_tokens=7,
                    global_num_seqs=2, is_weights=w)[0].backward()
    assert logp.grad[0, 1] == 0  # masked token: no gradient
    assert logp.grad[1, 3].item() == 0.0 and logp.grad[1, 2].item() == pytest.approx(0.5 * 1.0 / 7, abs=1e-12)


def test_aggregate_and_bad_input():
    x = torch.ones(2, 3, dtype=F64)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert aggregate(x, m, "token-mean", global_num_tokens=6, global_num_seqs=2).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(x, m, "seq-mean-token-sum-norm", global_num_tokens=3, global_num_seqs=2)
    with pytest.raises(ValueError, match="global_num_tokens"):
        aggregate(x, m, "token-mean", global_num_tokens=0, global_num_seqs=2)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        loss("seq-sum")
    with pytest.raises(ValueError, match="entropy_coef"):
        loss(entropy_coef=0.01)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        logp, old = inputs()
        ppo_policy_loss(logp, old[:, :3], ADV, MASK, **CLIP, loss_agg_mode="token-mean", global_num_tokens=7,
                        global_num_seqs=2)
