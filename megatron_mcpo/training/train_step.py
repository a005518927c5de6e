"""Drive megatron's forward-backward schedule with a pluggable loss.

A loss function has the signature `loss_fn(out: TokenOutputs, mb: dict) -> (loss, metrics)`, where
`loss` is this micro-batch's share of the mini-batch loss under *global* normalisation (so the sum over
all micro-batches and data-parallel ranks is the mini-batch loss) and `metrics` are scalar partial
sums. Megatron divides each micro-batch loss by the number of micro-batches and DDP averages over DP;
`_megatron_scale` undoes both, so gradients are exactly those of the globally normalised loss.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist

from megatron_mcpo.distributed import broadcast_object
from megatron_mcpo.models.policy import PolicyModel, TokenOutputs

LossFn = Callable[[TokenOutputs, dict], tuple[torch.Tensor, dict]]


def split_microbatches(batch: dict, micro_batch_size: int) -> list[dict]:
    """Split a dict of tensors with a leading batch dim into micro-batches of `micro_batch_size`."""
    n = batch["tokens"].shape[0]
    if n % micro_batch_size:
        raise ValueError(f"batch of {n} sequences is not divisible by micro_batch_size={micro_batch_size}")
    return [{k: v[i : i + micro_batch_size] for k, v in batch.items()} for i in range(0, n, micro_batch_size)]


def _run_schedule(policy: PolicyModel, microbatches: list[dict], loss_fn: LossFn, forward_only: bool, scale: float) -> list:
    """Megatron's schedule over `microbatches`, each packed into one row when `policy.sequence_packing`
    (loss functions see the padded [b, s] layout either way)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def loss_func(chunk, mb, packed, logits):
        out = policy.token_outputs(logits, policy.hidden_of(chunk), mb["tokens"], mb["response_mask"], packed)
        loss, metrics = loss_fn(out, mb)
        return loss * scale, metrics

    def forward_step(data_iterator, chunk):
        mb, packed = next(data_iterator)
        return policy.forward(chunk, mb["tokens"], packed), partial(loss_func, chunk, mb, packed)

    if policy.sequence_packing:
        layouts = policy.pack_microbatches(microbatches)
        b, s = 1, layouts[0].length  # the p2p shape: one length for all micro-batches when pp > 1
    else:
        layouts = [None] * len(microbatches)
        b, s = microbatches[0]["tokens"].shape
    chunks = policy.chunks
    data = [iter(list(zip(microbatches, layouts))) for _ in chunks]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data if len(chunks) > 1 else data[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=len(microbatches),
        seq_length=s,
        micro_batch_size=b,
        forward_only=forward_only,
    )


def _reduce_metrics(store: list, policy: PolicyModel) -> dict:
    """Sum metric partial sums over micro-batches and DP ranks; every PP stage gets the result."""
    g = policy.groups
    totals: dict = {}
    for metrics in store:  # summed on the run's device: NCCL reduces device tensors only
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float64, device=g.device).detach()
    if g.is_last_stage and g.dp_size > 1 and totals:
        keys = sorted(totals)
        vec = torch.stack([totals[k] for k in keys])
        dist.all_reduce(vec, group=g.dp)
        totals = dict(zip(keys, vec))
    return broadcast_object({k: float(v) for k, v in totals.items()}, g.pp, src=g.pp_size - 1)


def train_step(state, microbatches: list[dict], loss_fn: LossFn, extra_step: Optional[Callable[[], dict]] = None) -> dict:
    """One optimizer step over `microbatches` (this rank's share of the mini-batch).

    Returns the summed metrics plus grad_norm, lr and whether the update happened. `extra_step` runs
    after the backward passes and before the Megatron optimizer step (e.g. the projection head's step).
    """
    policy = state.policy
    policy.train(True)
    for chunk in policy.chunks:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    scale = len(microbatches) * policy.groups.dp_size
    store = _run_schedule(policy, microbatches, loss_fn, forward_only=False, scale=scale)
    metrics = _reduce_metrics(store, policy)
    if extra_step is not None:
        metrics.update(extra_step())
    lr = state.optimizer.param_groups[0]["lr"]  # the LR this update uses (the scheduler then moves on)
    ok, grad_norm, _ = state.optimizer.step()
    if ok:
        state.scheduler.step(increment=1)
        state.step += 1
    metrics.update(
        {"optimizer/lr": lr},
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        update_successful=float(bool(ok)),
    )
    return metrics


@torch.no_grad()
def forward_outputs(policy: PolicyModel, microbatches: list[dict]) -> Optional[list[TokenOutputs]]:
    """Forward-only pass: per micro-batch TokenOutputs on the last pipeline stage, None elsewhere."""

    def collect(out: TokenOutputs, mb: dict):
        return torch.zeros((), device=out.logprobs.device), {"out": out}

    policy.train(False)
    store = _run_schedule(policy, microbatches, collect, forward_only=True, scale=1.0)
    if not policy.groups.is_last_stage:
        return None
    return [m["out"] for m in store]


def concat_outputs(outs: Iterable[TokenOutputs]) -> TokenOutputs:
    outs = list(outs)
    return TokenOutputs(
        logprobs=torch.cat([o.logprobs for o in outs]),
        entropy=torch.cat([o.entropy for o in outs]),
        pooled=torch.cat([o.pooled for o in outs]),
    )
