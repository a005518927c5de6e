"""Checkpoints with megatron-core's dist_checkpointing: reshardable model and optimizer state plus
common state (step counters, scheduler, projection head, data position) saved once.

Layout: <save_dir>/iter_NNNNNNN/ (a dist_checkpointing directory) and <save_dir>/latest_iteration.txt,
written last so an interrupted save never becomes "latest".
"""
from __future__ import annotations

import os
from typing import Optional

import torch.distributed as dist

from megatron_mcpo.models.policy import unwrap
from megatron_mcpo.progress import phase

LATEST = "latest_iteration.txt"


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


def iteration_dir(save_dir: str, step: int) -> str:
    return os.path.join(save_dir, f"iter_{step:07d}")


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The directory named by <save_dir>/latest_iteration.txt, or `save_dir` itself if it is a
    checkpoint directory; None if there is nothing to resume from."""
    marker = os.path.join(save_dir, LATEST)
    if os.path.isfile(marker):
        with open(marker) as f:
            path = iteration_dir(save_dir, int(f.read().strip()))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint: {marker} names {path}, which does not exist")
        return path
    if os.path.isfile(os.path.join(save_dir, "metadata.json")):
        return save_dir
    return None


def save_checkpoint(state, save_dir: str, common: Optional[dict] = None, save_optimizer: bool = True) -> str:
    """Save model (+ optimizer) shards and `common` state at iteration `state.step`."""
    from megatron.core import dist_checkpointing

    path = iteration_dir(save_dir, state.step)
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    chunks = state.policy.chunks
    sd = model_sharded_state_dict(chunks)
    if save_optimizer:
        sd["optimizer"] = state.optimizer.sharded_state_dict(model_sharded_state_dict(chunks))
        sd["scheduler"] = state.scheduler.state_dict()
    sd["common"] = {"step": state.step, **(common or {})}
    with phase(f"checkpoint save {os.path.basename(path)}"):
        dist_checkpointing.save(sd, path)
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = os.path.join(save_dir, LATEST + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(state.step))
        os.replace(tmp, os.path.join(save_dir, LATEST))
    dist.barrier()
    return path


def load_model_weights(chunks: list, ckpt_dir: str) -> None:
    """Load only the model weights (any saved TP/PP layout into the current one)."""
    from megatron.core import dist_checkpointing

    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint: '{ckpt_dir}' is not a directory")
    with phase(f"checkpoint load {ckpt_dir}"):
        loaded = dist_checkpointing.load(model_sharded_state_dict(chunks), ckpt_dir)
    _load_model_state(chunks, loaded)


def load_checkpoint(state, ckpt_dir: str, load_optimizer: bool = True) -> dict:
    """Restore model, optimizer, scheduler and step; return the saved common state."""
    from megatron.core import dist_checkpointing

    chunks = state.policy.chunks
    sd = model_sharded_state_dict(chunks)
    if load_optimizer:
        sd["optimizer"] = state.optimizer.sharded_state_dict(model_sharded_state_dict(chunks), is_loading=True)
    with phase(f"checkpoint load {ckpt_dir}"):
        loaded = dist_checkpointing.load(sd, ckpt_dir)
    _load_model_state(chunks, loaded)
    if load_optimizer:
        state.optimizer.load_state_dict(loaded["optimizer"])
        state.scheduler.load_state_dict(loaded["scheduler"])
    common = loaded.get("common", {})
    state.step = int(common.get("step", 0))
    return common
