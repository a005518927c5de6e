"""MCPO gradients (prototypes and weights are stop-gradient), negative scopes, and the local-anchor
subset form (docs/mcpo.md §6–§8). float64 throughout."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from megatron_mcpo.algorithms.mcpo import (
    mcpo_anchor_subset_loss,
    mcpo_loss,
    mcpo_pool_normalizers,
    prompt_prototypes,
)

F64 = torch.float64
KW = dict(temperature=0.1, cross_coef=0.5, in_coef=0.5, positive_threshold=0.5)
U_A = [[1.0, 0.2], [-0.3, 1.0], [0.8, 0.6], [0.9, 0.3], [0.6, 0.8], [-1.0, -0.2]]
R_A = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0]
P_A = [0, 0, 1, 1, 2, 2]
D_A = [0, 0, 0, 0, 1, 1]
OPTIONS = list(itertools.product(("pos_neg", "all", "per_pos"), ("global_mass", "per_anchor"),
                                 ("relu_cos", "affine_cos", "one")))


def example_a():
    return (torch.tensor(U_A, dtype=F64), torch.tensor(R_A, dtype=F64), torch.tensor(P_A), torch.tensor(D_A))


def random_pool(seed, n=14, dim=3):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 5, (n,), generator=g)
    domains = torch.tensor([0, 1, 2, 0, 1])[prompts]
    rewards = (torch.rand(n, generator=g) < 0.6).to(F64)
    return torch.randn(n, dim, generator=g, dtype=F64), rewards, prompts, domains


def frozen_prototypes(u, rewards, prompts):
    return prompt_prototypes(F.normalize(u, dim=1), rewards >= 0.5, prompts)


def central_difference(f, u, h=1e-6):
    grad = torch.zeros_like(u)
    for idx in itertools.product(*map(range, u.shape)):
        up, down = u.clone(), u.clone()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("denominator", ["pos_neg", "all", "per_pos"])
@pytest.mark.parametrize("norm", ["global_mass", "per_anchor"])
def test_gradient_matches_finite_differences_with_prototypes_frozen(denominator, norm):
    for (u0, rewards, prompts, domains), weight_mode in ((example_a(), "relu_cos"), (random_pool(5), "affine_cos")):
        opts = dict(KW, denominator=denominator, norm=norm, weight_mode=weight_mode)
        protos = frozen_prototypes(u0, rewards, prompts)

        def frozen(u):
            return mcpo_loss(u, rewards, prompts, domains, prototypes=protos, **opts)[0]

        # gradcheck: autograd of the frozen-prototype loss against its central differences
        assert torch.autograd.gradcheck(frozen, (u0.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
        # the kernel's own gradient (prototypes computed inside and detached) is the frozen one
        u, x = u0.clone().requires_grad_(), u0.clone().requires_grad_()
        mcpo_loss(u, rewards, prompts, domains, **opts)[0].backward()
        frozen(x).backward()
        torch.testing.assert_close(u.grad, x.grad, atol=1e-12, rtol=0)


def test_prototypes_are_stop_gradient():
    """Finite differences that also move the prototypes differ from the gradient (docs/mcpo.md §11.1: by up to
    0.065 on Example A), so the match above is not an accident of the weights being locally constant."""
    u0, rewards, prompts, domains = example_a()
    u = u0.clone().requires_grad_()
    mcpo_loss(u, rewards, prompts, domains, **KW)[0].backward()
    moving = central_difference(lambda x: mcpo_loss(x, rewards, prompts, domains, **KW)[0].item(), u0)
    assert (u.grad - moving).abs().max() > 1e-2


def loop_oracle(u, rewards, prompts, domains, neg_scope):
    """D2 / global-mass / relu-cos L_CL written as plain loops over the sets of docs/mcpo.md §6.1, with scoped negatives."""
    z = F.normalize(u, dim=1)
    logits = z @ z.T / 0.1
    pos = [float(r) >= 0.5 for r in rewards]
    n = len(pos)
    proto = {}
    for q in set(prompts.tolist()):
        members = [i for i in range(n) if prompts[i] == q and pos[i]]
        if members:
            proto[q] = F.normalize(z[members].mean(0), dim=0)

    def in_scope(i, k):
        same = {"same_domain": domains[i] == domains[k], "same_prompt": prompts[i] == prompts[k]}
        return same.get(neg_scope, True)

    def objective(cross):
        num = mass = 0.0
        for i in (i for i in range(n) if pos[i]):
            members = [j for j in range(n) if j != i and pos[j] and (domains[j] != domains[i]) == cross]
            negs = [k for k in range(n) if not pos[k] and in_scope(i, k)]
            lse = torch.logsumexp(logits[i, members + negs], 0) if members else 0.0
            for j in members:
                w = max(0.0, float(proto[int(prompts[i])] @ proto[int(prompts[j])])) if cross else 1.0
                num += w * float(lse - logits[i, j])
                mass += w
        return num / mass if mass > 1e-8 else 0.0

    return 0.5 * objective(True) + 0.5 * objective(False)


@pytest.mark.parametrize("neg_scope", ["pool", "same_domain", "same_prompt"])
def test_negative_scope_matches_loop_oracle(neg_scope):
    for pool in (example_a(), random_pool(1), random_pool(2)):
        loss, _ = mcpo_loss(*pool, neg_scope=neg_scope, **KW)
        assert loss.item() == pytest.approx(loop_oracle(*pool, neg_scope), abs=1e-12)


@pytest.mark.parametrize("neg_scope", ["same_domain", "same_prompt"])
@pytest.mark.parametrize("denominator", ["pos_neg", "all", "per_pos"])
def test_out_of_scope_negatives_do_not_enter(neg_scope, denominator):
    """Add an incorrect rollout of a new prompt in a domain with no anchor: under a restricted scope it
    changes nothing and gets no gradient; under the pool scope it is a negative for every anchor."""
    u0, rewards, prompts, domains = example_a()
    extra = (torch.cat([u0, torch.tensor([[0.7, 0.7]], dtype=F64)]), torch.cat([rewards, torch.zeros(1, dtype=F64)]),
             torch.cat([prompts, torch.tensor([3])]), torch.cat([domains, torch.tensor([2])]))
    opts = dict(KW, denominator=denominator)
    base, _ = mcpo_loss(u0, rewards, prompts, domains, neg_scope=neg_scope, **opts)
    u = extra[0].clone().requires_grad_()
    scoped, _ = mcpo_loss(u, *extra[1:], neg_scope=neg_scope, **opts)
    scoped.backward()
    assert scoped.item() == pytest.approx(base.item(), abs=1e-14)
    assert torch.equal(u.grad[6], torch.zeros(2, dtype=F64))
    pooled, _ = mcpo_loss(*extra, neg_scope="pool", **opts)
    assert abs(pooled.item() - mcpo_loss(u0, rewards, prompts, domains, neg_scope="pool", **opts)[0].item()) > 1e-4


def test_same_prompt_scope_hand_value():
    """Example A, same_prompt: anchors 2, 3 (prompt q1) have no negative in scope; in D3 their in-domain
    terms are log(1 + 0) = 0, so L_in is carried by anchor 0 alone (negative: rollout 1)."""
    u0, rewards, prompts, domains = example_a()
    _, m = mcpo_loss(u0, rewards, prompts, domains, denominator="per_pos", neg_scope="same_prompt", **KW)
    logits = F.normalize(u0, dim=1) @ F.normalize(u0, dim=1).T / 0.1
    expected = sum(float(F.softplus(logits[0, 1] - logits[0, j])) for j in (2, 3)) / 6  # Z_I = 6 pairs
    assert m["loss_in"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("denominator,norm,weight_mode", OPTIONS)
def test_anchor_subsets_sum_to_the_pool_loss(denominator, norm, weight_mode):
    opts = dict(KW, denominator=denominator, norm=norm, weight_mode=weight_mode)
    u, rewards, prompts, domains = random_pool(7, n=20)
    full, _ = mcpo_loss(u, rewards, prompts, domains, **opts)
    normalizers = mcpo_pool_normalizers(u, rewards, prompts, domains, positive_threshold=0.5, norm=norm,
                                        weight_mode=weight_mode)
    parts = torch.randperm(20, generator=torch.Generator().manual_seed(3)).split([7, 6, 7])  # incl. negatives
    total = sum(mcpo_anchor_subset_loss(u, rewards, prompts, domains, rows, normalizers, **opts)[0] for rows in parts)
    assert total.item() == pytest.approx(full.item(), abs=1e-12)
    assert full.item() > 0


def test_local_anchor_gradient_reaches_only_the_local_rows():
    """Keys detached except this micro-batch's rows: the subset loss gives gradient to those rows only,
    and the local anchors' own gradient equals the full loss's anchor-side gradient for them."""
    u0, rewards, prompts, domains = random_pool(11, n=16)
    local = torch.arange(4, 9)
    normalizers = mcpo_pool_normalizers(u0, rewards, prompts, domains, positive_threshold=0.5)
    leaf = u0[local].clone().requires_grad_()
    keys = u0.index_put((local,), leaf)
    loss, parts = mcpo_anchor_subset_loss(keys, rewards, prompts, domains, local, normalizers, **KW)
    loss.backward()
    assert leaf.grad.abs().sum() > 0
    assert set(parts) == {"loss_cross", "loss_in"}
    # an empty subset is a zero contribution that still has a graph
    empty, _ = mcpo_anchor_subset_loss(keys, rewards, prompts, domains, local[:0], normalizers, **KW)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="anchor_rows"):
        mcpo_anchor_subset_loss(u0, rewards, prompts, domains, torch.tensor([16]), normalizers, **KW)
