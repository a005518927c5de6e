"""MCPO loss values against the worked examples (docs/mcpo.md §11), metrics (§10) and edge cases (§11.3).

Expected numbers are those of an independent loop-form reference, printed to 6 decimals, so they are
compared at 1e-6 in float64.
"""
import math

import pytest
import torch

from megatron_mcpo.algorithms.mcpo import mcpo_loss

TOL = 1e-6
F64 = torch.float64

# Example A (docs/mcpo.md §11.1): 6 rollouts, 3 prompts, 2 domains; rollout 3 has reward 0.5 (boundary: positive)
U_A = [[1.0, 0.2], [-0.3, 1.0], [0.8, 0.6], [0.9, 0.3], [0.6, 0.8], [-1.0, -0.2]]
R_A = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0]
# Example B (docs/mcpo.md §11.2): clamped weight, a zero-mass anchor, unequal in-domain counts
U_B = [[1.0, 0.2], [0.0, -1.0], [0.8, 0.6], [0.9, 0.3], [-0.2, 1.0], [-0.5, 1.0]]
R_B = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
PROMPTS = [0, 0, 1, 1, 2, 2]
DOMAINS = [0, 0, 0, 0, 1, 1]

# (denominator, norm, weight_mode) -> (L_cross, L_in, L_CL)
TABLE_A = {
    ("pos_neg", "global_mass", "relu_cos"): (0.724339, 0.743228, 0.733783),
    ("pos_neg", "global_mass", "affine_cos"): (0.740553, 0.743228, 0.741891),
    ("pos_neg", "global_mass", "one"): (0.754340, 0.743228, 0.748784),
    ("pos_neg", "per_anchor", "relu_cos"): (0.362612, 0.743228, 0.552920),
    ("pos_neg", "per_anchor", "affine_cos"): (0.370725, 0.743228, 0.556976),
    ("pos_neg", "per_anchor", "one"): (0.377623, 0.743228, 0.560425),
    ("all", "global_mass", "relu_cos"): (1.709887, 0.972035, 1.340961),
    ("all", "global_mass", "affine_cos"): (1.740218, 0.972035, 1.356126),
    ("all", "global_mass", "one"): (1.766007, 0.972035, 1.369021),
    ("all", "per_anchor", "relu_cos"): (1.880113, 0.972035, 1.426074),
    ("all", "per_anchor", "affine_cos"): (1.888226, 0.972035, 1.430130),
    ("all", "per_anchor", "one"): (1.895124, 0.972035, 1.433579),
    ("per_pos", "global_mass", "relu_cos"): (0.051196, 0.001068, 0.026132),
    ("per_pos", "global_mass", "affine_cos"): (0.052716, 0.001068, 0.026892),
    ("per_pos", "global_mass", "one"): (0.054009, 0.001068, 0.027538),
    ("per_pos", "per_anchor", "relu_cos"): (0.026040, 0.001068, 0.013554),
    ("per_pos", "per_anchor", "affine_cos"): (0.026806, 0.001068, 0.013937),
    ("per_pos", "per_anchor", "one"): (0.027457, 0.001068, 0.014263),
}
TABLE_B = {
    ("pos_neg", "global_mass", "relu_cos"): (1.498587, 0.557043, 1.027815),
    ("pos_neg", "global_mass", "affine_cos"): (1.899785, 0.557043, 1.228414),
    ("pos_neg", "global_mass", "one"): (1.987448, 0.557043, 1.272245),
    ("pos_neg", "per_anchor", "relu_cos"): (1.498587, 0.445634, 0.972111),
    ("pos_neg", "per_anchor", "affine_cos"): (1.806720, 0.445634, 1.126177),
    ("pos_neg", "per_anchor", "one"): (1.873618, 0.445634, 1.159626),
    ("all", "global_mass", "relu_cos"): (8.442678, 0.558708, 4.500693),
    ("all", "global_mass", "affine_cos"): (9.216821, 0.558708, 4.887764),
    ("all", "global_mass", "one"): (9.385974, 0.558708, 4.972341),
    ("all", "per_anchor", "relu_cos"): (8.442678, 0.447517, 4.445098),
    ("all", "per_anchor", "affine_cos"): (9.376137, 0.447517, 4.911827),
    ("all", "per_anchor", "one"): (9.443035, 0.447517, 4.945276),
    ("per_pos", "global_mass", "relu_cos"): (0.021713, 0.000004, 0.010858),
    ("per_pos", "global_mass", "affine_cos"): (0.098987, 0.000004, 0.049495),
    ("per_pos", "global_mass", "one"): (0.115871, 0.000004, 0.057938),
    ("per_pos", "per_anchor", "relu_cos"): (0.021713, 0.000003, 0.010858),
    ("per_pos", "per_anchor", "affine_cos"): (0.138945, 0.000003, 0.069474),
    ("per_pos", "per_anchor", "one"): (0.138964, 0.000003, 0.069484),
}


def pool(u, rewards, prompts=PROMPTS, domains=DOMAINS, dtype=F64):
    return (torch.tensor(u, dtype=dtype), torch.tensor(rewards, dtype=dtype),
            torch.tensor(prompts), torch.tensor(domains))


def loss_of(u, rewards, prompts=PROMPTS, domains=DOMAINS, **options):
    kwargs = dict(temperature=0.1, cross_coef=0.5, in_coef=0.5, positive_threshold=0.5)
    kwargs.update(options)
    return mcpo_loss(*pool(u, rewards, prompts, domains), **kwargs)


def assert_metrics(metrics, expected):
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=TOL), name


@pytest.mark.parametrize("example", ["A", "B"])
@pytest.mark.parametrize("variant", list(TABLE_A))
def test_variant_tables(example, variant):
    u, r, table = (U_A, R_A, TABLE_A) if example == "A" else (U_B, R_B, TABLE_B)
    denominator, norm, weight_mode = variant
    loss, m = loss_of(u, r, denominator=denominator, norm=norm, weight_mode=weight_mode)
    l_cross, l_in, l_cl = table[variant]
    assert m["loss_cross"] == pytest.approx(l_cross, abs=TOL)
    assert m["loss_in"] == pytest.approx(l_in, abs=TOL)
    assert loss.item() == pytest.approx(l_cl, abs=TOL)
    assert m["loss_cl"] == pytest.approx(loss.item(), abs=1e-15)


def test_example_a_metrics():
    _, m = loss_of(U_A, R_A)
    assert m["pool_size"] == 6 and m["num_correct"] == 4
    assert m["n_valid_anchors_cross"] == 4 and m["n_valid_anchors_in"] == 3
    assert_metrics(m, {
        "pos_ratio": 0.666667, "num_pos_per_prompt": 1.333333, "mean_cross_weight": 0.850249,
        "mean_cross_pos_logit": 8.424778, "mean_in_pos_logit": 9.476985, "mean_neg_logit": -3.455771,
        "pos_neg_margin": 11.880550, "loss_cross_attr": -8.484823, "loss_cross_sep": 9.209162,
        "loss_in_attr": -9.476985, "loss_in_sep": 10.220213, "neg_lse": 2.187630,
        "mean_cross_pos_per_anchor": 1.5, "mean_in_pos_per_anchor": 1.5,
        # anchors 0, 4 have no same-prompt correct partner, anchors 2, 3 have one each: 2/4
        "same_prompt_pos_per_anchor": 0.5,
    })


def test_example_a_intermediate_terms():
    """Example A (§11.1): the prototype cosines behind the weights, anchor 4's log-denominator, the totals."""
    z = torch.nn.functional.normalize(torch.tensor(U_A, dtype=F64), dim=1)
    logits = z @ z.T / 0.1
    mu_q1 = torch.nn.functional.normalize(z[2] + z[3], dim=0)
    assert float(mu_q1 @ z[4]) == pytest.approx(0.902753, abs=TOL)  # cos(q1, q2) = w for anchors 2, 3
    assert float(z[0] @ z[4]) == pytest.approx(0.745241, abs=TOL)  # cos(q0, q2)
    # anchor 4's D2 cross denominator is C(4) ∪ 𝒩 = {0, 2, 3} ∪ {1, 5}
    assert float(torch.logsumexp(logits[4, [0, 2, 3, 1, 5]], 0)) == pytest.approx(9.932552, abs=TOL)
    # L_cross = Σ w ℓ / Z_C with the table's totals
    _, m = loss_of(U_A, R_A)
    assert m["loss_cross"] == pytest.approx(3.695208 / 5.101494, abs=TOL)


def test_example_b_metrics():
    _, m = loss_of(U_B, R_B)
    assert m["n_valid_anchors_cross"] == 4 and m["n_valid_anchors_in"] == 5
    assert_metrics(m, {
        "loss_cross": 1.498587, "loss_in": 0.557043, "loss_cl": 1.027815, "mean_cross_weight": 0.101012,
        "mean_cross_pos_logit": 0.549728, "mean_in_pos_logit": 9.519648, "mean_neg_logit": -5.974704,
        "pos_ratio": 0.833333, "num_pos_per_prompt": 1.666667, "neg_lse": -5.974704,
        "pos_neg_margin": 6.524432, "loss_cross_attr": -1.482386, "loss_cross_sep": 2.980973,
    })


@pytest.mark.parametrize("denominator", ["pos_neg", "all", "per_pos"])
@pytest.mark.parametrize("norm", ["global_mass", "per_anchor"])
def test_edge_cases(denominator, norm):
    opts = dict(denominator=denominator, norm=norm)
    for rewards in ([0.0] * 6, [1.0, 0, 0, 0, 0, 0]):  # no correct rollout; a single correct rollout
        u = torch.tensor(U_A, dtype=F64, requires_grad=True)
        loss, m = mcpo_loss(u, torch.tensor(rewards, dtype=F64), torch.tensor(PROMPTS), torch.tensor(DOMAINS),
                            temperature=0.1, cross_coef=0.5, in_coef=0.5, positive_threshold=0.5, **opts)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(u.grad, torch.zeros_like(u))
        assert m["loss_cross"] == 0.0 and m["loss_in"] == 0.0
        # empty pair sets are left out rather than logged as 0 (or NaN)
        for name in ("mean_cross_weight", "mean_cross_pos_logit", "mean_in_pos_logit", "pos_neg_margin",
                     "loss_cross_attr", "loss_in_attr", "loss_cross_sep", "loss_in_sep"):
            assert name not in m
        assert all(math.isfinite(v) for v in m.values())
    assert "mean_neg_logit" not in loss_of(U_A, [0.0] * 6, **opts)[1]


def test_one_domain_with_correct_rollouts():
    """§11.3: no correct rollout in domain 1 → L_cross = 0, L_in = 4.136774."""
    loss, m = loss_of(U_A, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert m["loss_cross"] == 0.0
    assert m["loss_in"] == pytest.approx(4.136774, abs=TOL)
    assert loss.item() == pytest.approx(0.5 * 4.136774, abs=TOL)
    assert "mean_cross_weight" not in m and m["n_valid_anchors_cross"] == 0


@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_float32_large_pool_matches_float64_and_is_finite(temperature):
    """fp32 as the trainer calls it. At τ = 0.01 the logits span ±100, beyond what one fp32 exponent
    shift covers, so this also exercises the per-block shift."""
    g = torch.Generator().manual_seed(0)
    n = 512
    u = torch.randn(n, 32, generator=g, dtype=F64)
    rewards = (torch.rand(n, generator=g) < 0.5).to(F64)
    prompts = torch.arange(n) // 8
    domains = prompts % 5
    kwargs = dict(temperature=temperature, cross_coef=0.5, in_coef=0.5, positive_threshold=0.5)
    ref, m64 = mcpo_loss(u, rewards, prompts, domains, **kwargs)
    u32 = u.float().requires_grad_()
    loss, m32 = mcpo_loss(u32, rewards.float(), prompts, domains, **kwargs)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(u32.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for name in ("loss_cross", "loss_in", "neg_lse", "mean_cross_weight"):
        assert m32[name] == pytest.approx(m64[name], rel=1e-5, abs=1e-5), name


def test_degenerate_embeddings_never_nan():
    """Zero and duplicated embedding rows, all options, at a small temperature."""
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=F64)
    for denominator in ("pos_neg", "all", "per_pos"):
        for weight_mode in ("relu_cos", "affine_cos", "cos", "one"):
            for scope in ("pool", "same_domain", "same_prompt"):
                x = u.clone().requires_grad_()
                loss, m = mcpo_loss(x, torch.tensor([1.0, 1, 0, 1, 1, 0], dtype=F64), torch.tensor(PROMPTS),
                                    torch.tensor(DOMAINS), temperature=0.01, cross_coef=0.5, in_coef=0.5,
                                    positive_threshold=0.5, denominator=denominator, weight_mode=weight_mode,
                                    neg_scope=scope)
                loss.backward()
                assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
                assert all(math.isfinite(v) for v in m.values())


def test_bad_input_is_a_clear_error():
    u, r, p, d = pool(U_A, R_A)
    kw = dict(temperature=0.1, cross_coef=0.5, in_coef=0.5, positive_threshold=0.5)
    with pytest.raises(ValueError, match="denominator"):
        mcpo_loss(u, r, p, d, denominator="bogus", **kw)
    with pytest.raises(ValueError, match="neg_scope"):
        mcpo_loss(u, r, p, d, neg_scope="rank", **kw)
    with pytest.raises(ValueError, match="rewards has 5 entries"):
        mcpo_loss(u, r[:5], p, d, **kw)
    with pytest.raises(TypeError, match="domain_ids must be an integer"):
        mcpo_loss(u, r, p, d.double(), **kw)
    with pytest.raises(ValueError, match="temperature"):
        mcpo_loss(u, r, p, d, **{**kw, "temperature": 0.0})
    with pytest.raises(ValueError, match="empty"):
        mcpo_loss(u[:0], r[:0], p[:0], d[:0], **kw)
