"""The contrastive term of the training loss, one object per `mcpo.grad_mode` (docs/mcpo.md §8), built
once at set-up (`make_term`); GRPO/DAPO runs get `ContrastiveTerm`, which adds nothing.

Per optimizer step `train_minibatch` calls `prepare` (before the training passes), `loss` for every
micro-batch (added to the policy loss), `step_projector` (after the backward passes) and `finish`. The
shared part lives in `PoolTerm`: the pool's metadata gathered over the data-parallel ranks, where the
pool's states come from (a no-grad pre-pass, or the old-log-prob pass while θ still equals the rollout
policy), the warmup detach of the backbone states, and "project the gathered pool with g_φ and compute
L_CL" with its `mcpo/` metrics. Each mode says only how the term's gradient reaches the backbone:

  exact        gradient cache: λ·L_CL over the gathered pool states H is differentiated once w.r.t. H
               and φ, and the real passes inject G = λ ∂L_CL/∂H through ⟨h_i, sg(G_i)⟩, whose summed
               backbone gradient is exactly λ ∇_θ L_CL. With one local micro-batch: one graph (the pool
               gathered with gradient inside the loss).
  stale        exact's surrogate, with G computed at the old-log-prob pass states (approximate).
  local_anchor each micro-batch's anchors with gradient against the detached pool, divided by the
               pool-level normalisers (approximate).

During warmup (the first `mcpo.warmup_batches` optimizer steps) the backbone states are detached: φ
learns, the backbone gets nothing. A new grad_mode is a `PoolTerm` subclass here, an entry in
`GRAD_MODES` and its name in `MCPOConfig.grad_mode`.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.mcpo import mcpo_anchor_subset_loss, mcpo_loss, mcpo_pool_normalizers
from megatron_mcpo.config import Config, MCPOConfig
from megatron_mcpo.distributed import ParallelGroups, all_gather_with_grad, broadcast_object
from megatron_mcpo.models.projection import ProjectionTrainer
from megatron_mcpo.training.pool import PoolMeta, gather_meta, gather_rows, surrogate
from megatron_mcpo.training.train_step import concat_outputs, forward_outputs


def contrastive_kernel(mc: MCPOConfig):
    """`mcpo_loss` with the options `mc` selects: (u, rewards, group_ids, domain_ids) -> (L_CL, metrics)."""
    return partial(mcpo_loss, **_kernel_kwargs(mc))


def _kernel_kwargs(mc: MCPOConfig) -> dict:
    return dict(temperature=mc.temperature, cross_coef=mc.cross_coef, in_coef=mc.in_coef,
                positive_threshold=mc.positive_threshold, denominator=mc.denominator, norm=mc.norm,
                weight_mode=mc.weight_mode, neg_scope=mc.neg_scope)


class ContrastiveTerm:
    """No contrastive term (GRPO, DAPO): the policy loss alone."""

    def needs_pool_states(self, num_microbatches: int) -> bool:
        """Whether the pool's states are needed before the training passes (from the old-log-prob pass on
        the first mini-batch, else from a pre-pass)."""
        return False

    def prepare(self, state, microbatches: list[dict], local: dict, pooled_old: Optional[torch.Tensor],
                reuse_old_pooled: bool) -> None:
        """Before the training passes of one optimizer step. `local`: this rank's mini-batch share (the
        micro-batches' rows carry "row", their index in it); `pooled_old`: the pooled states of the
        old-log-prob pass (last stage), usable when `reuse_old_pooled` (θ still equals the rollout policy)."""

    def loss(self, out, mb: dict) -> tuple[Optional[torch.Tensor], dict]:
        """This micro-batch's share of the term (None: nothing to add) and its additive metrics."""
        return None, {}

    def step_projector(self) -> dict:
        """After the backward passes, before the Megatron optimizer step."""
        return {}

    def finish(self, metrics: dict, num_microbatches: int) -> dict:
        """The step's metrics (train_step's reduced sums) completed with the term's own."""
        return metrics


class PoolTerm(ContrastiveTerm):
    """λ·L_CL over the PPO mini-batch pool gathered from every data-parallel rank (docs/mcpo.md §4)."""

    reads_old_pool = False  # the pool states always come from the old-log-prob pass

    def __init__(self, mc: MCPOConfig, projector: Optional[ProjectionTrainer], groups: ParallelGroups):
        self.projector = projector  # on the last pipeline stage only
        self.g = groups
        self.kernel = contrastive_kernel(mc)
        self.kernel_kwargs = _kernel_kwargs(mc)
        self.cl_coef, self.warmup_batches, self.threshold = mc.cl_coef, mc.warmup_batches, mc.positive_threshold

    def needs_pool_states(self, num_microbatches: int) -> bool:
        return True

    def prepare(self, state, microbatches, local, pooled_old, reuse_old_pooled) -> None:
        g = self.g
        self.warm = state.step < self.warmup_batches
        self.pool_metrics: dict = {}
        states = None
        if self.needs_pool_states(len(microbatches)):
            reuse = reuse_old_pooled or self.reads_old_pool
            outs = None if reuse else forward_outputs(state.policy, microbatches)  # collective over PP
            if g.is_last_stage:
                if reuse and pooled_old is None:
                    raise ValueError("train_minibatch: reuse of old pooled states requested but 'pooled_old' is missing")
                states = pooled_old if reuse else concat_outputs(outs).pooled
        if g.is_last_stage:
            self.projector.zero_grad()
            meta = PoolMeta(local["rewards"].float(), local["group_ids"].long(), local["domain_ids"].long())
            self.full = gather_meta(meta, g.dp)
            self.offset = g.dp_rank * local["tokens"].shape[0]  # this rank's first row in the pool
            self._prepare(states, len(microbatches))

    def _prepare(self, states: Optional[torch.Tensor], num_microbatches: int) -> None:
        """Mode-specific preparation on the last stage; `states` (n, d): this rank's pool states, if needed."""

    def loss(self, out, mb):
        # docs/mcpo.md §10 num_pos_per_microbatch: summed here, averaged over micro-batches in `finish`
        return None, {"mcpo/num_pos_per_microbatch": (mb["rewards"] >= self.threshold).sum().double()}

    def step_projector(self) -> dict:
        return self.projector.step() if self.g.is_last_stage else {}

    def finish(self, metrics, num_microbatches):
        metrics["mcpo/num_pos_per_microbatch"] /= num_microbatches * self.g.dp_size
        metrics.update(broadcast_object(self.pool_metrics, self.g.pp, src=self.g.pp_size - 1))
        return metrics

    # -- shared pieces
    def _backbone(self, h: torch.Tensor) -> torch.Tensor:
        """Backbone states as the term sees them: detached during warmup."""
        return h.detach() if self.warm else h

    def _gather(self, h: torch.Tensor, with_grad: bool) -> torch.Tensor:
        """This rank's states (n, d) -> the pool's (N, d), in rank order."""
        return all_gather_with_grad(h, self.g.dp) if with_grad else gather_rows(h.detach(), self.g.dp)

    def _pool_loss(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u = g_φ(H), L_CL) of the whole pool; records its metrics (`mcpo/`, plus λ·L_CL and warmup)."""
        u = self.projector.head(H)
        cl, m = self.kernel(u, self.full.rewards, self.full.group_ids, self.full.domain_ids)
        self.pool_metrics = {f"mcpo/{k}": float(v) for k, v in m.items()}
        self.pool_metrics.update({"mcpo/loss_total_cl": self.cl_coef * m["loss_cl"], "mcpo/warmup_active": float(self.warm)})
        return u, cl


class ExactTerm(PoolTerm):
    """Exact λ ∇ L_CL: a gradient cache over the gathered pool, or one graph for one local micro-batch."""

    def needs_pool_states(self, num_microbatches):
        return num_microbatches > 1

    def _prepare(self, states, num_microbatches):
        self.G = None
        self.one_graph = states is None
        if self.one_graph:
            return
        n = states.shape[0]
        H = self._gather(states, with_grad=False).float().requires_grad_(not self.warm)
        _, cl = self._pool_loss(H)
        if cl.requires_grad:
            (self.cl_coef * cl).backward()  # φ's gradient, and λ ∂L_CL/∂H
        if not self.warm:
            self.G = H.grad[self.g.dp_rank * n : (self.g.dp_rank + 1) * n].detach() if H.grad is not None else torch.zeros_like(states)

    def loss(self, out, mb):
        _, metrics = super().loss(out, mb)
        if self.G is not None:
            return surrogate(out.pooled, self.G[mb["row"]]), metrics
        if not self.one_graph:  # warmup: φ has its gradient already, the backbone gets none
            return None, metrics
        _, cl = self._pool_loss(self._gather(self._backbone(out.pooled), with_grad=not self.warm))
        return self.cl_coef * cl / self.g.dp_size, metrics  # every DP rank computes the whole pool's loss


class StaleTerm(ExactTerm):
    """exact's gradient cache at the old-log-prob pass states (no pre-pass; approximate after the first step)."""

    reads_old_pool = True

    def needs_pool_states(self, num_microbatches):
        return True


class LocalAnchorTerm(PoolTerm):
    """Each micro-batch's anchors with gradient against the detached pool, pool-level normalisers."""

    def _prepare(self, states, num_microbatches):
        with torch.no_grad():
            self.u_pool, _ = self._pool_loss(self._gather(states.float(), with_grad=False))
            kw = self.kernel_kwargs
            self.normalizers = mcpo_pool_normalizers(
                self.u_pool, self.full.rewards, self.full.group_ids, self.full.domain_ids,
                positive_threshold=kw["positive_threshold"], norm=kw["norm"], weight_mode=kw["weight_mode"])
        for k in ("mcpo/loss_cross", "mcpo/loss_in"):  # the micro-batches' anchor shares report these
            del self.pool_metrics[k]

    def loss(self, out, mb):
        _, metrics = super().loss(out, mb)
        rows = self.offset + mb["row"]
        u = self.u_pool.index_put((rows,), self.projector.head(self._backbone(out.pooled)))
        cl, parts = mcpo_anchor_subset_loss(u, self.full.rewards, self.full.group_ids, self.full.domain_ids, rows,
                                            self.normalizers, **self.kernel_kwargs)
        metrics.update({f"mcpo/{k}": v for k, v in parts.items()})
        return self.cl_coef * cl, metrics

    def step_projector(self):
        if self.g.is_last_stage and self.g.dp_size > 1:
            # Each rank holds dp × its anchors' share (megatron's loss scaling): the mean over ranks is the sum.
            for p in self.projector.head.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG, group=self.g.dp)
        return super().step_projector()


GRAD_MODES = {"exact": ExactTerm, "stale": StaleTerm, "local_anchor": LocalAnchorTerm}


def make_term(cfg: Config, projector: Optional[ProjectionTrainer], groups: ParallelGroups) -> ContrastiveTerm:
    """The run's term: none unless `cfg.algorithm` is an MCPO one, else `cfg.mcpo.grad_mode`'s.
    `projector`: the head on the last pipeline stage (None elsewhere)."""
    if not cfg.algorithm.is_mcpo:
        return ContrastiveTerm()
    mc = cfg.mcpo
    if mc.grad_mode not in GRAD_MODES:
        raise ValueError(f"mcpo.grad_mode: {mc.grad_mode!r} is not one of {sorted(GRAD_MODES)}")
    return GRAD_MODES[mc.grad_mode](mc, projector, groups)
