"""Stream a live Megatron model as full HF tensors on every rank: TP all-gather, PP broadcast, mapping.

Order of operations for each Megatron parameter (planned once per call, identical on all ranks):
  1. the owning pipeline stage (lowest PP rank holding it) all-gathers its TP shards and merges them
     (`merge_tp`: QKV groups, gate/up halves, vocab rows);
  2. the full tensor is broadcast from the owner over the PP group;
  3. the shared mapping turns it into HF (name, tensor) pairs (padded vocab rows dropped).
Every HF tensor of one Megatron parameter is yielded consecutively, so a consumer can keep an engine's
fused modules (q/k/v, gate/up) together. Yielded tensors may alias parameters: consume them before the
next optimizer step.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.weights.hf_mapping import FamilyMapping, family_mapping, merge_tp
from megatron_mcpo.weights.loader import global_named_parameters

_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def _local_params(model_chunks: list, mapping: FamilyMapping, tp_size: int) -> dict[str, tuple[torch.Tensor, tuple, str]]:
    """name -> (local shard, full shape, dtype name) for this rank's exported parameters."""
    out = {}
    for chunk in model_chunks:
        for name, param in global_named_parameters(chunk):
            if not mapping.exported(name):
                continue
            kind, _ = mapping.kind(name)
            shape = list(param.shape)
            if kind.tp_dim is not None:
                shape[kind.tp_dim] *= tp_size
            out[name] = (param.detach(), tuple(shape), str(param.dtype))
    return out


def _gather_tp(kind, shard: torch.Tensor, mapping: FamilyMapping, groups: ParallelGroups) -> torch.Tensor:
    if kind.tp_dim is None or groups.tp_size == 1:
        return shard
    shard = shard.contiguous()  # gloo mis-sends non-contiguous buffers
    parts = [torch.empty_like(shard) for _ in range(groups.tp_size)]
    dist.all_gather(parts, shard, group=groups.tp)
    return merge_tp(kind, parts, mapping.dims)


def megatron_to_hf_tensors(model_chunks: list, hf_config: dict, groups: ParallelGroups) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) for the whole model on every rank of the model-parallel group.

    Collective over groups.tp and groups.pp: all ranks must iterate the generator to the end together.
    """
    mapping = family_mapping(hf_config)
    local = _local_params(model_chunks, mapping, groups.tp_size)
    # Plan: every PP rank's (name, shape, dtype) list, owners in PP-rank order.
    catalogue = [(n, s, d) for n, (_, s, d) in local.items()]
    if groups.pp_size > 1:
        per_rank: list = [None] * groups.pp_size
        dist.all_gather_object(per_rank, catalogue, group=groups.pp)
    else:
        per_rank = [catalogue]
    plan, seen = [], set()
    for pp_rank, entries in enumerate(per_rank):
        for name, shape, dtype in entries:
            if name not in seen:
                seen.add(name)
                plan.append((name, shape, dtype, pp_rank))
    missing = [n for n in mapping.megatron_names() if n not in seen]
    if missing:
        raise RuntimeError(f"megatron_to_hf_tensors: no pipeline stage holds {missing[:4]}{'...' if len(missing) > 4 else ''}")

    for name, shape, dtype, owner in plan:
        kind, _ = mapping.kind(name)
        if owner == groups.pp_rank:
            full = _gather_tp(kind, local[name][0], mapping, groups)
        else:
            full = torch.empty(shape, dtype=_DTYPES[dtype], device=groups.device)
        if groups.pp_size > 1:
            full = full.contiguous()
            dist.broadcast(full, src=dist.get_global_rank(groups.pp, owner), group=groups.pp)
        yield from mapping.to_hf(name, full)
