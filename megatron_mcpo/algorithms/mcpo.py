"""MCPO multi-domain contrastive loss on one rollout pool (docs/mcpo.md §3–§7, metrics §10), vectorised.

Notation (docs/mcpo.md §1): pool of N rollouts with projector outputs u (N, p), rewards r, prompt ids q, domain
ids d. z = u/‖u‖, l_ij = z_i·z_j/τ. Anchors = positives 𝒜 = {r ≥ θ_r}; negatives 𝒩 = {r < θ_r}.
  μ_q    = Norm(mean_{i∈𝒜, q_i=q} sg(z_i))                    prompt prototypes (Eq. 5, stop-gradient)
  w_ij   = f(μ_{q_i}·μ_{q_j}), f per weight_mode              compatibility weights (Eq. 6, stop-gradient)
  C(i)   = {j∈𝒜: d_j≠d_i} weighted w_ij;  I(i) = {j∈𝒜: j≠i, d_j=d_i} weighted 1    (Eq. 6–7)
  ℓ^X_ij = logsumexp_{k∈D_X(i,j)} l_ik − l_ij,  D per `denominator`               (§6.2, §6.4)
  L_X    = Σ_i Σ_{j∈X(i)} w_ij ℓ^X_ij / Z_X,  Z_X per `norm`; 0 without positive mass  (Eq. 8–10)
  L_CL   = α·L_cross + γ·L_in                                  (Eq. 11; λ is applied by the trainer)

How it is computed. Every set above is a union of *key classes*: rollouts sharing (prompt, domain,
correctness). Per anchor row i and class c the kernel needs only a block logsumexp B_ic over the class
(self excluded) and the block logit sum z_i·Σ_{j∈c} z_j/τ. For the pos_neg and all denominators the
log-denominator does not depend on j, so Σ_j w_ij ℓ_ij = mass_i·LSE_i − Σ_j w_ij l_ij needs no (N, N)
matrix beyond the logits themselves; per_pos needs one extra (N, N) pass. The same row code gives the
full loss (all anchors) and the local-anchor share of a subset of anchors (docs/mcpo.md §8) whose pool-level
normaliser is passed in. Empty sets are masked, never indexed away, so the loss is always finite and
keeps its graph (an anchor-free pool gives 0 with zero gradient).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from megatron_mcpo.algorithms._checks import check_choice, check_vector

DENOMINATORS = ("pos_neg", "all", "per_pos")
NORMS = ("global_mass", "per_anchor")
WEIGHT_MODES = ("relu_cos", "affine_cos", "cos", "one")
NEG_SCOPES = ("pool", "same_domain", "same_prompt")
MASS_EPS = 1e-8  # an anchor needs positive mass above this to count (docs/mcpo.md §6.3)
NORM_EPS = 1e-12  # L2-normalisation floor, as F.normalize


class PoolNormalizers(NamedTuple):
    """Pool-level denominators of L_cross and L_in: the total positive mass Z (norm='global_mass') or the
    number of anchors with positive mass (norm='per_anchor'). 0-d tensors, no gradient."""

    cross: torch.Tensor
    in_domain: torch.Tensor


def prompt_prototypes(z: torch.Tensor, positive: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Prototypes μ_q (G, p), row g for the g-th entry of torch.unique(group_ids) (Eq. 5).

    μ_q = Norm(mean of sg(z_i) over the correct rollouts of q); a prompt without a correct rollout gets 0.
    """
    z = z.detach()
    _, group = torch.unique(group_ids, return_inverse=True)
    weight = positive.to(z.dtype)
    sums = z.new_zeros(int(group.max()) + 1, z.shape[1]).index_add_(0, group, z * weight[:, None])
    counts = z.new_zeros(sums.shape[0]).index_add_(0, group, weight)
    return F.normalize(sums / counts.clamp_min(1)[:, None], dim=1, eps=NORM_EPS)


def compatibility_weights(cos: torch.Tensor, weight_mode: str) -> torch.Tensor:
    """w = f(cos) elementwise: relu_cos max(0, c) | affine_cos (1+c)/2 | cos c | one 1 (docs/mcpo.md §5.2)."""
    check_choice("weight_mode", weight_mode, WEIGHT_MODES)
    if weight_mode == "relu_cos":
        return cos.clamp_min(0.0)
    if weight_mode == "affine_cos":
        return 0.5 * (1.0 + cos)
    if weight_mode == "cos":
        return cos
    return torch.ones_like(cos)


def mcpo_loss(
    u: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    domain_ids: torch.Tensor,
    *,
    temperature: float,
    cross_coef: float,
    in_coef: float,
    positive_threshold: float,
    denominator: str = "pos_neg",
    norm: str = "global_mass",
    weight_mode: str = "relu_cos",
    neg_scope: str = "pool",
    prototypes: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_CL = α·L_cross + γ·L_in on the whole pool. Returns (loss, metrics).

    u (N, p) projector outputs before normalisation (every row gets gradient: anchors, positives and
    negatives); rewards (N,) float; group_ids, domain_ids (N,) int. Computed in u's dtype.
      denominator: pos_neg D = X(i) ∪ 𝒩(i) | all D = 𝒜∖{i} ∪ 𝒩(i) | per_pos D = {j} ∪ 𝒩(i),
                   with 𝒩(i) the negatives in neg_scope: pool | same_domain | same_prompt as i
      norm:        global_mass Z_X = Σ_i Σ_j w_ij | per_anchor: mean over anchors of each one's weighted mean
      prototypes:  optional (G, p), replaces the detached prototypes computed from u (e.g. frozen ones)
    Metrics: the docs/mcpo.md §10 names as floats; a mean over an empty pair set is left out.
    """
    pool = _Pool.build(u, rewards, group_ids, domain_ids, positive_threshold, prototypes)
    rows = pool.positive.nonzero().squeeze(1)
    terms = _anchor_terms(pool, rows, temperature, denominator, weight_mode, neg_scope)
    sets = terms.sets
    normalizers = PoolNormalizers(_normalizer(sets.mass_cross, norm), _normalizer(sets.mass_in, norm))
    loss_cross = _reduce(terms.num_cross, sets.mass_cross, normalizers.cross, norm)
    loss_in = _reduce(terms.num_in, sets.mass_in, normalizers.in_domain, norm)
    loss = cross_coef * loss_cross + in_coef * loss_in
    with torch.no_grad():
        metrics = _metrics(pool, terms, normalizers, norm, (loss_cross, loss_in, loss))
    return loss, metrics


def mcpo_pool_normalizers(
    u: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    domain_ids: torch.Tensor,
    *,
    positive_threshold: float,
    norm: str = "global_mass",
    weight_mode: str = "relu_cos",
    prototypes: Optional[torch.Tensor] = None,
) -> PoolNormalizers:
    """The pool-level (Z_cross, Z_in) that `mcpo_loss` uses for this pool."""
    with torch.no_grad():
        pool = _Pool.build(u, rewards, group_ids, domain_ids, positive_threshold, prototypes)
        sets = _class_sets(pool, pool.positive.nonzero().squeeze(1), weight_mode, "pool")
        return PoolNormalizers(_normalizer(sets.mass_cross, norm), _normalizer(sets.mass_in, norm))


def mcpo_anchor_subset_loss(
    u: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    domain_ids: torch.Tensor,
    anchor_rows: torch.Tensor,
    normalizers: PoolNormalizers,
    *,
    temperature: float,
    cross_coef: float,
    in_coef: float,
    positive_threshold: float,
    denominator: str = "pos_neg",
    norm: str = "global_mass",
    weight_mode: str = "relu_cos",
    neg_scope: str = "pool",
    prototypes: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The share of L_CL carried by the anchors at `anchor_rows` (M,) int, against the whole key pool u.

    For the local-anchor approximation (docs/mcpo.md §8): u (N, p) is the whole pool (typically detached, with
    this micro-batch's rows carrying gradient); incorrect rollouts in anchor_rows contribute nothing.
    Each anchor's terms are divided by the pool-level `normalizers` (`mcpo_pool_normalizers`), so the
    values for disjoint anchor subsets covering the pool sum to `mcpo_loss`'s value.
    Returns (loss, {"loss_cross", "loss_in"}: this subset's shares, detached tensors).
    """
    check_vector("anchor_rows", anchor_rows, kind="int")
    if anchor_rows.numel() and not (int(anchor_rows.min()) >= 0 and int(anchor_rows.max()) < u.shape[0]):
        raise ValueError(f"anchor_rows must index the pool of {u.shape[0]} rollouts")
    pool = _Pool.build(u, rewards, group_ids, domain_ids, positive_threshold, prototypes)
    rows = anchor_rows[pool.positive[anchor_rows]]
    terms = _anchor_terms(pool, rows, temperature, denominator, weight_mode, neg_scope)
    loss_cross = _reduce(terms.num_cross, terms.sets.mass_cross, normalizers.cross, norm)
    loss_in = _reduce(terms.num_in, terms.sets.mass_in, normalizers.in_domain, norm)
    loss = cross_coef * loss_cross + in_coef * loss_in
    return loss, {"loss_cross": loss_cross.detach(), "loss_in": loss_in.detach()}


# ------------------------------------------------------------------------------------------------------
# Internals
# ------------------------------------------------------------------------------------------------------


class _Pool(NamedTuple):
    z: torch.Tensor  # (N, p) normalised embeddings
    positive: torch.Tensor  # (N,) bool
    group: torch.Tensor  # (N,) prompt index into proto_cos
    domain: torch.Tensor  # (N,) domain index (position in torch.unique(domain_ids))
    proto_cos: torch.Tensor  # (G, G) μ_q·μ_q', detached
    key_class: torch.Tensor  # (N,) class index of each rollout: unique (prompt, domain, correctness)
    class_group: torch.Tensor  # (C,) prompt index of each class
    class_domain: torch.Tensor  # (C,) domain index of each class
    class_positive: torch.Tensor  # (C,) bool
    class_size: torch.Tensor  # (C,) float, rollouts per class

    @staticmethod
    def build(u, rewards, group_ids, domain_ids, positive_threshold, prototypes) -> "_Pool":
        if not isinstance(u, torch.Tensor) or u.dim() != 2 or not u.is_floating_point():
            raise ValueError(f"u must be a floating (N, p) tensor, got {getattr(u, 'shape', type(u))}")
        n = u.shape[0]
        if n == 0:
            raise ValueError("the MCPO pool is empty")
        check_vector("rewards", rewards, n, kind="float")
        check_vector("group_ids", group_ids, n, kind="int")
        check_vector("domain_ids", domain_ids, n, kind="int")
        z = F.normalize(u, dim=1, eps=NORM_EPS)
        positive = rewards >= positive_threshold
        _, group = torch.unique(group_ids, return_inverse=True)
        num_prompts = int(group.max()) + 1
        if prototypes is None:
            prototypes = prompt_prototypes(z, positive, group_ids)
        elif prototypes.shape != (num_prompts, u.shape[1]):
            raise ValueError(f"prototypes must be (num prompts, p) = {(num_prompts, u.shape[1])}, "
                             f"got {tuple(prototypes.shape)}")
        prototypes = prototypes.detach().to(u.dtype)
        _, domain = torch.unique(domain_ids, return_inverse=True)
        num_domains = int(domain.max()) + 1
        # one integer key per (prompt, domain, correctness); 1-D unique is far cheaper than unique(dim=)
        keys, key_class, class_size = torch.unique(
            (group * num_domains + domain) * 2 + positive.to(group.dtype), return_inverse=True, return_counts=True
        )
        return _Pool(z, positive, group, domain, prototypes @ prototypes.T, key_class, keys // (2 * num_domains),
                     keys // 2 % num_domains, keys % 2 == 1, class_size.to(u.dtype))


class _ClassSets(NamedTuple):
    """Set membership of anchor rows (M) over key classes (C); all (M, C) unless noted."""

    cross: torch.Tensor  # class ⊆ C(i)
    indom: torch.Tensor  # class ⊆ I(i) ∪ {i}
    negs: torch.Tensor  # class ⊆ 𝒩(i) (within neg_scope)
    pool_negs: torch.Tensor  # class ⊆ 𝒩 (whole pool, for the metrics)
    w_cross: torch.Tensor  # w_ic on cross classes, 0 elsewhere
    n_cross: torch.Tensor  # (M,) |C(i)|
    mass_cross: torch.Tensor  # (M,) Σ_{j∈C(i)} w_ij
    mass_in: torch.Tensor  # (M,) |I(i)| (in-domain weights are 1)


def _class_sets(pool: _Pool, rows: torch.Tensor, weight_mode: str, neg_scope: str) -> _ClassSets:
    check_choice("neg_scope", neg_scope, NEG_SCOPES)
    same_domain = pool.class_domain[None, :] == pool.domain[rows][:, None]
    positive = pool.class_positive[None, :]
    cross, indom = positive & ~same_domain, positive & same_domain
    pool_negs = ~positive.expand_as(cross)
    negs = pool_negs
    if neg_scope == "same_domain":
        negs = negs & same_domain
    elif neg_scope == "same_prompt":
        negs = negs & (pool.class_group[None, :] == pool.group[rows][:, None])
    cos = pool.proto_cos[pool.group[rows][:, None], pool.class_group[None, :]]
    w_cross = torch.where(cross, compatibility_weights(cos, weight_mode), 0.0)
    size = pool.class_size[None, :]
    n_cross = (cross * size).sum(1)
    n_in = (indom * size).sum(1) - 1  # the anchor itself is in its own (positive, same-domain) class
    return _ClassSets(cross, indom, negs, pool_negs, w_cross, n_cross, (w_cross * size).sum(1), n_in)


class _AnchorTerms(NamedTuple):
    sets: _ClassSets
    logit_sums: torch.Tensor  # (M, C) Σ_{j∈c} l_ij (self included)
    self_logit: torch.Tensor  # (M,) l_ii
    block_lse: torch.Tensor  # (M, C) logsumexp_{j∈c, j≠i} l_ij (finite placeholder where empty)
    block_nonempty: torch.Tensor  # (M, C) bool
    num_cross: torch.Tensor  # (M,) Σ_{j∈C(i)} w_ij ℓ_ij
    num_in: torch.Tensor  # (M,) Σ_{j∈I(i)} ℓ_ij


def _anchor_terms(pool: _Pool, rows, temperature, denominator, weight_mode, neg_scope) -> _AnchorTerms:
    check_choice("denominator", denominator, DENOMINATORS)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sets = _class_sets(pool, rows, weight_mode, neg_scope)
    z, za = pool.z, pool.z[rows] / temperature  # 1/τ folded into the anchor side
    num_classes = pool.class_size.numel()
    class_sums = z.new_zeros(num_classes, z.shape[1]).index_add(0, pool.key_class, z)
    logit_sums = za @ class_sums.T
    self_logit = (za * pool.z[rows]).sum(1)

    logits = za @ z.T  # (M, N)
    self_idx = (torch.arange(rows.numel(), device=rows.device), rows)
    minus_inf = logits.new_tensor(float("-inf"))
    # self is never a key; per_pos still needs the plain logits, the others can overwrite them (no saved use)
    keys = logits.index_put(self_idx, minus_inf) if denominator == "per_pos" else logits.index_put_(self_idx, minus_inf)
    block_lse, nonempty = _block_logsumexp(keys, pool, rows, 1.0 / temperature)

    def union_lse(classes, empty):  # logsumexp over the union of the selected classes
        return _masked_logsumexp(block_lse, classes & nonempty, empty)

    wsum_cross = (sets.w_cross * logit_sums).sum(1)
    wsum_in = (sets.indom * logit_sums).sum(1) - self_logit
    if denominator == "per_pos":
        # ℓ_ij = log(e^{l_ij} + Σ_{k∈𝒩(i)} e^{l_ik}) − l_ij = softplus(LSE_𝒩(i) − l_ij), pairwise
        excess = _softplus(union_lse(sets.negs, float("-inf"))[:, None] - logits)
        pair_w = torch.stack([sets.w_cross, sets.indom.to(logits.dtype)])[:, :, pool.key_class]  # (2, M, N)
        pair_w[:, self_idx[0], self_idx[1]] = 0.0  # constants (stop-gradient weights): in place is fine
        num_cross, num_in = (pair_w * excess).sum(2)
    else:
        every_positive = sets.cross | sets.indom
        lse_cross = union_lse((sets.cross if denominator == "pos_neg" else every_positive) | sets.negs, 0.0)
        lse_in = union_lse((sets.indom if denominator == "pos_neg" else every_positive) | sets.negs, 0.0)
        # Σ_j w_ij (LSE_i − l_ij); an empty union means no positives, i.e. mass 0
        num_cross = sets.mass_cross * lse_cross - wsum_cross
        num_in = sets.mass_in * lse_in - wsum_in
    return _AnchorTerms(sets, logit_sums, self_logit, block_lse, nonempty, num_cross, num_in)


def _block_logsumexp(keys: torch.Tensor, pool: _Pool, rows: torch.Tensor, max_logit: float):
    """Row-wise logsumexp of keys (M, N) within each column class → (M, C), and which blocks are
    non-empty (keys = −inf marks each anchor's own column, the only excluded entry).

    |logits| ≤ max_logit = 1/τ, so shifting every entry by max_logit keeps each term ≥ e^(−2/τ): when
    that stays inside the dtype's normal range (fp32: τ ≳ 0.025) one constant shift is exact and costs
    nothing; otherwise each block is shifted by its own max."""
    column_class, size = pool.key_class, pool.class_size
    own = torch.arange(size.numel(), device=rows.device)[None, :] == column_class[rows][:, None]
    nonempty = size[None, :] - own.to(size.dtype) > 0
    if 2 * max_logit <= -math.log(torch.finfo(keys.dtype).tiny) - 10:
        shift = max_logit
        exps = torch.exp(keys - shift)
    else:
        with torch.no_grad():
            index = column_class[None, :].expand_as(keys)
            block_max = keys.new_full(nonempty.shape, float("-inf")).scatter_reduce(1, index, keys, "amax")
            shift = torch.where(nonempty, block_max, 0.0)
        exps = torch.exp(keys - shift.index_select(1, column_class))
    sums = keys.new_zeros(nonempty.shape).index_add(1, column_class, exps)
    return torch.log(torch.where(nonempty, sums, 1.0)) + shift, nonempty


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, empty: float) -> torch.Tensor:
    """Row-wise logsumexp of x over mask, `empty` for rows with an empty mask. Gradients stay finite
    everywhere: empty rows are evaluated over the whole row, then replaced."""
    has = mask.any(1)
    lse = torch.logsumexp(x.masked_fill(~(mask | ~has[:, None]), float("-inf")), dim=1)
    return torch.where(has, lse, empty)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), exact in both tails (F.softplus switches to x above a threshold) and 0 at x = −inf."""
    return x.clamp_min(0.0) + torch.log1p(torch.exp(-x.abs()))


def _normalizer(mass: torch.Tensor, norm: str) -> torch.Tensor:
    check_choice("norm", norm, NORMS)
    valid = mass > MASS_EPS
    if norm == "global_mass":
        return torch.where(valid, mass, 0.0).sum().detach()
    return valid.sum().to(mass.dtype)


def _reduce(values: torch.Tensor, mass: torch.Tensor, normalizer: torch.Tensor, norm: str) -> torch.Tensor:
    """Σ over anchors with mass > MASS_EPS of values_i (global_mass) or values_i / mass_i (per_anchor),
    divided by the normaliser; exactly 0 when no anchor has mass."""
    valid = mass > MASS_EPS
    if norm == "per_anchor":
        values = values / mass.clamp_min(MASS_EPS)
        normalizer = normalizer.clamp_min(1.0)
    else:
        normalizer = normalizer.clamp_min(MASS_EPS)
    return torch.where(valid, values, 0.0).sum() / normalizer


def _metrics(pool: _Pool, t: _AnchorTerms, normalizers: PoolNormalizers, norm: str, losses) -> dict:
    """The metrics of one pool (docs/mcpo.md §10) (all anchors). Reductions are stacked and sent to the host at once."""
    s = t.sets
    dtype, device = t.logit_sums.dtype, t.logit_sums.device
    n, m = pool.positive.numel(), t.self_logit.numel()  # pool size, anchors
    num_negs = n - m

    def const(x) -> torch.Tensor:
        return torch.tensor(float(x), dtype=dtype, device=device)

    correct_per_prompt = torch.zeros_like(pool.proto_cos[0]).index_add_(0, pool.group, pool.positive.to(dtype))
    wsum_cross = (s.w_cross * t.logit_sums).sum(1)
    wsum_in = (s.indom * t.logit_sums).sum(1) - t.self_logit
    neg_lse = _masked_logsumexp(t.block_lse, s.pool_negs & t.block_nonempty, 0.0)
    one = const(1)
    # name -> (numerator, denominator); the metric is their ratio, left out when the denominator is 0
    ratios = {
        "num_correct": (const(m), one),
        "pos_ratio": (const(m), const(n)),
        "num_pos_per_prompt": (const(m), const(correct_per_prompt.numel())),
        "same_prompt_pos_per_anchor": ((correct_per_prompt[pool.group] - 1)[pool.positive].sum(), const(m)),
        "mean_in_pos_per_anchor": (s.mass_in.sum(), const(m)),
        "mean_cross_pos_per_anchor": (s.n_cross.sum(), const(m)),
        "mean_cross_weight": (s.mass_cross.sum(), s.n_cross.sum()),
        "mean_cross_pos_logit": ((s.cross * t.logit_sums).sum(), s.n_cross.sum()),
        "mean_in_pos_logit": (wsum_in.sum(), s.mass_in.sum()),
        "mean_neg_logit": ((s.pool_negs * t.logit_sums).sum(), const(m * num_negs)),
        "neg_lse": (neg_lse.sum(), const(m if num_negs else 0)),
        "loss_cross": (losses[0], one),
        "loss_in": (losses[1], one),
        "loss_cl": (losses[2], one),
        "n_valid_anchors_cross": ((s.mass_cross > MASS_EPS).sum(), one),
        "n_valid_anchors_in": ((s.mass_in > MASS_EPS).sum(), one),
        "loss_cross_attr": (_reduce(-wsum_cross, s.mass_cross, normalizers.cross, norm), one),
        "loss_in_attr": (_reduce(-wsum_in, s.mass_in, normalizers.in_domain, norm), one),
    }
    host = torch.stack([torch.stack([a.to(dtype), b]) for a, b in ratios.values()]).tolist()
    out: dict = {"pool_size": n}
    for name, (num, den) in zip(ratios, host):
        if den > 0:
            out[name] = num / den
    for name in ("num_correct", "n_valid_anchors_cross", "n_valid_anchors_in"):
        out[name] = int(round(out[name]))
    for key in ("cross", "in"):  # the attraction/separation split exists only for an objective with anchors
        if out[f"n_valid_anchors_{key}"] > 0:
            out[f"loss_{key}_sep"] = out[f"loss_{key}"] - out[f"loss_{key}_attr"]
        else:
            del out[f"loss_{key}_attr"]
    if "mean_cross_pos_logit" in out and "mean_neg_logit" in out:
        out["pos_neg_margin"] = out["mean_cross_pos_logit"] - out["mean_neg_logit"]
    return out
