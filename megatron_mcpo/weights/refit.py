"""Refit: push the Megatron policy's current weights into the rollout engine(s), every step.

  Megatron shards --(TP all-gather, PP broadcast, shared HF mapping: `megatron_to_hf_tensors`)-->
  full HF tensors --(buckets of <= bucket_mb, whole engine modules)--> engine.update_weights
  (the engine's transport: a broadcast group to engine workers in other processes, gloo on CPU and NCCL
  on GPU; or /dev/shm safetensors; or in-process tensors when colocated on GPU. vLLM reshards to its own
  TP layout and re-runs its post-load processing).

Every rank of the model-parallel group must call `refit` (the gather is collective); ranks without an
engine pass None and only take part in the collectives.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.weights.gather import megatron_to_hf_tensors
from megatron_mcpo.weights.hf_mapping import engine_module

Named = tuple[str, torch.Tensor]


def bucket_tensors(tensors: Iterable[Named], bucket_bytes: int) -> Iterator[list[Named]]:
    """Group a stream of (name, tensor) into buckets of at most `bucket_bytes`, never splitting an engine
    module (q/k/v weights and biases, gate/up, ...) across buckets; a module larger than the limit gets a
    bucket of its own. Tensors of one module must arrive consecutively."""
    if bucket_bytes <= 0:
        raise ValueError(f"refit bucket size must be > 0 bytes, got {bucket_bytes}")
    bucket: list[Named] = []
    size = 0
    group: list[Named] = []
    group_module: Optional[str] = None
    done_modules: set[str] = set()

    def close_group():
        nonlocal bucket, size, group
        gsize = sum(t.nbytes for _, t in group)
        out = None
        if bucket and size + gsize > bucket_bytes:
            out, bucket, size = bucket, [], 0
        bucket += group
        size += gsize
        group = []
        return out

    for name, tensor in tensors:
        module = engine_module(name)
        if module != group_module:
            if group_module is not None:
                done_modules.add(group_module)
                full = close_group()
                if full:
                    yield full
            if module in done_modules:
                raise ValueError(f"refit: tensors of engine module '{module}' are not consecutive ('{name}')")
            group_module = module
        group.append((name, tensor))
    if group:
        full = close_group()
        if full:
            yield full
    if bucket:
        yield bucket


@dataclass
class RefitStats:
    bytes: int  # bytes handed to the engine (engine dtype); 0 on ranks without an engine
    seconds: float
    buckets: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("nan")


def refit(model_chunks: list, hf_config: dict, groups: ParallelGroups, engine=None, bucket_mb: float = 512) -> RefitStats:
    """Stream this rank's Megatron weights into `engine` (or only join the collectives when None)."""
    start = time.perf_counter()
    tensors = megatron_to_hf_tensors(model_chunks, hf_config, groups)
    counted = {"buckets": 0}

    def buckets():
        for b in bucket_tensors(tensors, int(bucket_mb * (1 << 20))):
            counted["buckets"] += 1
            yield b

    if engine is None:
        for _ in buckets():
            pass
        sent = 0
    else:
        sent = engine.update_weights(buckets())
    return RefitStats(bytes=sent, seconds=time.perf_counter() - start, buckets=counted["buckets"])
