"""Checkpoints with megatron-core's dist_checkpointing: reshardable model and optimizer state plus
common state (step counters, scheduler, projection head, data position) saved once.

Layout: <save_dir>/iter_NNNNNNN/ (a dist_checkpointing directory plus the caller's extra files,
checksums.json and run_info.json, see ckpt_files.py) and <save_dir>/latest_iteration.txt, written after
everything else so an interrupted save never becomes "latest".
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megatron_mcpo.models.policy import unwrap
from megatron_mcpo.training.ckpt_files import (
    DP_RESHARDABLE, LATEST, CheckpointError, checkpoint_files, file_digests, iteration_dir, latest_checkpoint,
    raise_problems, read_manifest, saved_optimizer_format, verify_files, write_manifest, write_run_info,
)
from megatron_mcpo.training.optimizer_fallbacks import init_adam_state, restore_adam_step
from megatron_mcpo.training.writer_watch import dead_writer_raises
from megatron_mcpo.progress import phase

__all__ = ["LATEST", "CheckpointError", "iteration_dir", "latest_checkpoint", "save_checkpoint", "load_checkpoint",
           "load_model_weights", "verify_checkpoint_distributed"]


def optimizer_metadata(optimizer_format: str) -> dict:
    """megatron's options for the distributed optimizer's sharded state (the other optimizers ignore them):
    'dp_reshardable' (its buffers as they are, every rank in parallel) or 'fully_reshardable' (gathered
    per model-parallel shard, in its memory-efficient variant: over gloo into host memory on the first
    data-parallel rank, where the plain variant all-gathers the shard's whole state onto every GPU).
    megatron's default ('fully_sharded_model_space') is deprecated and fails in megatron-core 0.16
    ("ShardedTensor.flattened_range is not supported")."""
    return {"distrib_optim_sharding_type": optimizer_format,
            "distrib_optim_fully_reshardable_mem_efficient": True}


def model_sharded_state_dict(chunks: list) -> dict:
    """Sharded state of the unwrapped GPTModels: keys never depend on the DDP wrapper."""
    chunks = [unwrap(c) for c in chunks]
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def _load_model_state(chunks: list, loaded: dict) -> None:
    chunks = [unwrap(c) for c in chunks]
    if len(chunks) == 1:
        chunks[0].load_state_dict(loaded["model"], strict=True)
    else:
        for i, c in enumerate(chunks):
            c.load_state_dict(loaded[f"model{i}"], strict=True)


def save_checkpoint(state, save_dir: str, common: Optional[dict] = None, save_optimizer: bool = True,
                    extra: Optional[Callable[[str], None]] = None, run_info: Optional[dict] = None,
                    optimizer_format: str = DP_RESHARDABLE) -> str:
    """Save model (+ optimizer, its distributed state in `optimizer_format`) shards and `common` state at
    iteration `state.step`; then `extra(path)` on every rank (files of the caller's own), `run_info` (with
    the optimizer format, which a load reads) and the checksums of every file, and only then the latest
    marker."""
    from megatron.core import dist_checkpointing

    path = iteration_dir(save_dir, state.step)
    if dist.get_rank() == 0:
        if os.path.isdir(path):  # an interrupted earlier save (never "latest"), or checkpoint.overwrite
            shutil.rmtree(path)
        os.makedirs(path)
    dist.barrier()
    chunks = state.policy.chunks
    sd = model_sharded_state_dict(chunks)
    if save_optimizer:
        init_adam_state(state.optimizer)  # a save before the first step
        sd["optimizer"] = state.optimizer.sharded_state_dict(model_sharded_state_dict(chunks),
                                                             metadata=optimizer_metadata(optimizer_format))
        sd["scheduler"] = state.scheduler.state_dict()
    sd["common"] = {"step": state.step, **(common or {})}
    with phase(f"checkpoint save {os.path.basename(path)}"), dead_writer_raises(path):
        dist_checkpointing.save(sd, path)
    if extra is not None:
        extra(path)
    if dist.get_rank() == 0:
        write_run_info(path, {**(run_info or {}), "optimizer_format": optimizer_format})
    dist.barrier()
    _write_checksums(path)
    if dist.get_rank() == 0:
        tmp = os.path.join(save_dir, LATEST + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(state.step))
        os.replace(tmp, os.path.join(save_dir, LATEST))
    dist.barrier()
    return path


def _my_share(items: list) -> list:
    """This rank's slice of a sorted list (round robin), so ranks hash different files in parallel."""
    return items[dist.get_rank()::dist.get_world_size()]


def _write_checksums(path: str) -> None:
    """checksums.json of every file of a written checkpoint (the hashing spread over the ranks)."""
    digests = file_digests(path, _my_share(checkpoint_files(path)))
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, digests)
    if dist.get_rank() == 0:
        write_manifest(path, {k: v for p in parts for k, v in p.items()})
    dist.barrier()


def verify_checkpoint_distributed(ckpt_dir: str) -> None:
    """Every file of the checkpoint against its checksums (hashing spread over the ranks); the same
    CheckpointError on every rank if one is missing, truncated or changed."""
    if not os.path.isfile(os.path.join(ckpt_dir, "metadata.json")):
        raise CheckpointError(f"checkpoint: '{ckpt_dir}' is not a Megatron dist checkpoint (no metadata.json)")
    manifest = read_manifest(ckpt_dir)
    if manifest is None:
        return
    problems = verify_files(ckpt_dir, manifest, _my_share(sorted(manifest)))
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, problems)
    raise_problems(ckpt_dir, [p for part in parts for p in part])


def _load(sd: dict, ckpt_dir: str) -> dict:
    """dist_checkpointing.load with its errors (a missing shard, another layout) named as the checkpoint's."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with phase(f"checkpoint load {ckpt_dir}"):
            return dist_checkpointing.load(sd, ckpt_dir)
    except CheckpointException as e:
        first = next(iter(e.failures.values()), e) if getattr(e, "failures", None) else e
        raise CheckpointError(f"checkpoint '{ckpt_dir}' cannot be read: {str(first).splitlines()[-1][:300]}") from e


def load_model_weights(chunks: list, ckpt_dir: str) -> None:
    """Load only the model weights (any saved TP/PP layout into the current one)."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint: '{ckpt_dir}' is not a directory")
    verify_checkpoint_distributed(ckpt_dir)
    loaded = _load(model_sharded_state_dict(chunks), ckpt_dir)
    _load_model_state(chunks, loaded)


def load_checkpoint(state, ckpt_dir: str, load_optimizer: bool = True) -> dict:
    """Restore model, optimizer (in the format it was saved in), scheduler and step; return the saved
    common state."""
    verify_checkpoint_distributed(ckpt_dir)
    chunks = state.policy.chunks
    sd = model_sharded_state_dict(chunks)
    if load_optimizer:
        init_adam_state(state.optimizer)  # the distributed optimizer reads its step count from the state
        metadata = optimizer_metadata(saved_optimizer_format(ckpt_dir))
        sd["optimizer"] = state.optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True,
                                                             metadata=metadata)
    loaded = _load(sd, ckpt_dir)
    _load_model_state(chunks, loaded)
    if load_optimizer:
        # megatron's dp_reshardable loader copies into the main parameters outside no_grad: with fp32
        # parameters those are views of the model's own, and autograd refuses the in-place copy
        with torch.no_grad():
            state.optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_step(state.optimizer)
        state.scheduler.load_state_dict(loaded["scheduler"])
    common = loaded.get("common", {})
    state.step = int(common.get("step", 0))
    return common
