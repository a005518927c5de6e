"""The file-level side of checkpoints, torch-free (so `validate()` and the tools can use it): where a
run resumes from, whether a save directory may be written, per-file checksums and the run identity.

A save directory holds iter_NNNNNNN/ checkpoints and latest_iteration.txt, written last. Each
iteration directory also holds `checksums.json` ({relative path: [size, sha256]} of every other file)
and `run_info.json` (the model and projection head the weights belong to, the parallel layout and format
of the optimizer state), both written before the marker, so a checkpoint named by the marker is complete
and can be verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Iterable, Optional

LATEST = "latest_iteration.txt"
CHECKSUMS = "checksums.json"
RUN_INFO = "run_info.json"
# The HF config keys that fix every tensor shape: a checkpoint whose values differ is another model.
MODEL_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "head_dim", "tie_word_embeddings")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked (missing, incomplete, corrupted, of another model)."""


def iteration_dir(save_dir: str, step: int) -> str:
    return os.path.join(save_dir, f"iter_{step:07d}")


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The directory named by <save_dir>/latest_iteration.txt, or `save_dir` itself if it is a
    checkpoint directory; None if there is nothing to resume from."""
    marker = os.path.join(save_dir, LATEST)
    if os.path.isfile(marker):
        with open(marker) as f:
            text = f.read().strip()
        if not text.isdigit():
            raise CheckpointError(f"checkpoint: {marker} does not hold an iteration number ({text[:40]!r})")
        path = iteration_dir(save_dir, int(text))
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint: {marker} names {path}, which does not exist")
        return path
    if os.path.isfile(os.path.join(save_dir, "metadata.json")):
        return save_dir
    return None


def prune_checkpoints(save_dir: str, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` iterations up to the latest marker's; return what was deleted.
    Iterations past the marker (an interrupted save, or another run's under checkpoint.overwrite) are left:
    this run has not written them."""
    latest = latest_checkpoint(save_dir)
    if keep_last <= 0 or latest is None or os.path.abspath(latest) == os.path.abspath(save_dir):
        return []
    upto = int(os.path.basename(latest)[len("iter_"):])
    steps = sorted(int(n[len("iter_"):]) for n in os.listdir(save_dir)
                   if n.startswith("iter_") and n[len("iter_"):].isdigit() and os.path.isdir(os.path.join(save_dir, n)))
    old = [iteration_dir(save_dir, s) for s in steps if s <= upto][:-keep_last]
    for path in old:
        shutil.rmtree(path)
    return old


def holds_checkpoints(save_dir: str) -> bool:
    """True if `save_dir` holds a latest marker or any iteration directory (complete or not)."""
    if not os.path.isdir(save_dir):
        return False
    return any(n == LATEST or n.startswith("iter_") for n in os.listdir(save_dir))


def resume_source(ckpt, training: bool = True) -> Optional[str]:
    """The checkpoint directory a run starts from (None: fresh weights), or CheckpointError.

    `ckpt` is a CheckpointConfig: resume "auto" continues from load_dir, else from save_dir's latest
    checkpoint if there is one; "required" is the same but nothing to resume from is an error; "never"
    starts fresh. An explicit load_dir that holds nothing is always an error (a typo must not start a
    new run). When training, a save_dir that already holds checkpoints other than the one resumed from
    is refused unless checkpoint.overwrite is set: its iterations would be overwritten.
    """
    mode, load, save = ckpt.resume, ckpt.load_dir, ckpt.save_dir
    if mode == "never" and load:
        raise CheckpointError(f"checkpoint.load_dir: set to '{load}' but checkpoint.resume=never")
    source = None
    if load:
        if not os.path.exists(load):
            raise CheckpointError(f"checkpoint.load_dir: '{load}' does not exist")
        source = latest_checkpoint(load)
        if source is None:
            raise CheckpointError(f"checkpoint.load_dir: '{load}' holds no checkpoint ({LATEST} or metadata.json)")
    elif mode != "never" and save:
        source = latest_checkpoint(save) if os.path.isdir(save) else None
    if mode == "required" and source is None:
        raise CheckpointError(f"checkpoint.resume: 'required' but there is no checkpoint in "
                              f"checkpoint.load_dir/save_dir ({load or save or 'neither is set'})")
    if training and save and holds_checkpoints(save) and not ckpt.overwrite:
        resumed_here = source is not None and os.path.abspath(os.path.dirname(source)) == os.path.abspath(save)
        if not resumed_here:
            why = "checkpoint.resume=never" if mode == "never" else (
                f"this run starts from '{source}'" if source else "its latest checkpoint is incomplete")
            raise CheckpointError(
                f"checkpoint.save_dir: '{save}' already holds checkpoints and {why}: its iterations would be "
                f"overwritten. Resume from it (checkpoint.resume=auto, no load_dir), pick a new save_dir, or "
                f"set checkpoint.overwrite=true")
    return source


# ---------------------------------------------------------------------------------------- checksums
def sha256_file(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_files(ckpt_dir: str) -> list[str]:
    """Relative paths of the files a manifest covers (all but the manifest itself), sorted."""
    out = []
    for root, _, files in os.walk(ckpt_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), ckpt_dir)
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def file_digests(ckpt_dir: str, rels: Iterable[str]) -> dict:
    return {rel: [os.path.getsize(os.path.join(ckpt_dir, rel)), sha256_file(os.path.join(ckpt_dir, rel))] for rel in rels}


def write_manifest(ckpt_dir: str, digests: dict) -> None:
    tmp = os.path.join(ckpt_dir, CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(digests, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(ckpt_dir, CHECKSUMS))


def read_manifest(ckpt_dir: str) -> Optional[dict]:
    path = os.path.join(ckpt_dir, CHECKSUMS)
    if not os.path.isfile(path):
        return None  # written before checksums existed: nothing to verify against
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint: {path} is unreadable ({e})") from None


def verify_files(ckpt_dir: str, manifest: dict, rels: Iterable[str]) -> list[str]:
    """Problems with the files `rels` of a manifest: missing, truncated/grown, or changed bytes."""
    problems = []
    for rel in rels:
        size, digest = manifest[rel]
        path = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(path):
            problems.append(f"{path} is missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{path} has {os.path.getsize(path)} bytes, {size} were saved (truncated or overwritten)")
        elif sha256_file(path) != digest:
            problems.append(f"{path} does not match its saved checksum (corrupted)")
    return problems


def verify_checkpoint(ckpt_dir: str) -> None:
    """Check every file of a checkpoint against its manifest (single process); CheckpointError if any
    is missing, truncated or changed. A checkpoint without a manifest is only checked for metadata.json."""
    if not os.path.isfile(os.path.join(ckpt_dir, "metadata.json")):
        raise CheckpointError(f"checkpoint: '{ckpt_dir}' is not a Megatron dist checkpoint (no metadata.json)")
    manifest = read_manifest(ckpt_dir)
    if manifest is not None:
        raise_problems(ckpt_dir, verify_files(ckpt_dir, manifest, sorted(manifest)))


def raise_problems(ckpt_dir: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint '{ckpt_dir}' is damaged: {'; '.join(problems[:3])}{more}")


# ---------------------------------------------------------------------------------------- identity
def model_identity(hf_config: dict) -> dict:
    return {k: hf_config[k] for k in MODEL_KEYS if k in hf_config}


DP_RESHARDABLE = "dp_reshardable"


def optimizer_layout(parallel) -> dict:
    """What a checkpoint's optimizer state depends on besides the model: the distributed optimizer's state
    saved as dp_reshardable is laid out per TP/PP(/VPP) rank (it reshards across data parallelism only)."""
    return {"distributed_optimizer": parallel.use_distributed_optimizer, "tp": parallel.tp, "pp": parallel.pp,
            "vpp": parallel.vpp}


def _read_run_info(ckpt_dir: str) -> Optional[dict]:
    path = os.path.join(ckpt_dir, RUN_INFO)
    if not os.path.isfile(path):
        return None  # older checkpoints
    with open(path) as f:
        return json.load(f)


def _optimizer_format(info: dict) -> str:
    """The optimizer format a run_info records (written by save_checkpoint; older checkpoints:
    dp_reshardable, the only one then)."""
    return info.get("optimizer_format", DP_RESHARDABLE)


def saved_optimizer_format(ckpt_dir: str) -> str:
    """The format the checkpoint's distributed-optimizer state was saved in (its run_info.json)."""
    return _optimizer_format(_read_run_info(ckpt_dir) or {})


def _check_optimizer_layout(ckpt_dir: str, saved: Optional[dict], ours: Optional[dict], saved_format: str) -> None:
    if not saved or not ours:
        return
    if saved["distributed_optimizer"] != ours["distributed_optimizer"]:
        theirs, mine = (str(x["distributed_optimizer"]).lower() for x in (saved, ours))
        raise CheckpointError(
            f"checkpoint '{ckpt_dir}' holds the optimizer state of parallel.use_distributed_optimizer={theirs}, "
            f"this run has {mine}: the two store it differently; resume with the checkpoint's setting")
    layout = {k: saved[k] for k in ("tp", "pp", "vpp")}
    fixed = saved["distributed_optimizer"] and saved_format == DP_RESHARDABLE
    if fixed and layout != {k: ours[k] for k in layout}:
        raise CheckpointError(
            f"checkpoint '{ckpt_dir}' was saved with the distributed optimizer at parallel."
            f"{' '.join(f'{k}={v}' for k, v in layout.items())}, this run has "
            f"{' '.join(f'{k}={ours[k]}' for k in layout)}: its optimizer state (checkpoint.optimizer_format="
            f"dp_reshardable) reshards across data parallelism only; resume at the checkpoint's tp/pp/vpp (any "
            f"number of data-parallel replicas), then save with checkpoint.optimizer_format=fully_reshardable to "
            f"change them")


def write_run_info(ckpt_dir: str, info: dict) -> None:
    with open(os.path.join(ckpt_dir, RUN_INFO), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def check_run_info(ckpt_dir: str, hf_config: dict, projector: Optional[dict], model_name: str,
                   layout: Optional[dict] = None) -> None:
    """CheckpointError if the checkpoint's weights belong to another model, its projection head
    (`projector`: {"proj_dim", "proj_hidden_dim"}, None without MCPO) has other sizes, or its optimizer
    state cannot be loaded at this run's `layout` (optimizer_layout; None: not checked)."""
    info = _read_run_info(ckpt_dir)
    if info is None:
        return  # the shape check at load is all there is
    saved, ours = info.get("model", {}), model_identity(hf_config)
    diff = {k: (saved[k], ours[k]) for k in saved.keys() & ours.keys() if saved[k] != ours[k]}
    if diff:
        what = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"checkpoint '{ckpt_dir}' is of another model ({info.get('model_name', '?')}) than "
                              f"model.hf_path={model_name}: {what}")
    saved_proj = info.get("projector")
    for k in sorted(projector or {}):
        if saved_proj and k in saved_proj and saved_proj[k] != projector[k]:
            raise CheckpointError(f"checkpoint '{ckpt_dir}' has an MCPO projection head with {k}={saved_proj[k]}, "
                                  f"this run has mcpo.{k}={projector[k]}")
    _check_optimizer_layout(ckpt_dir, info.get("optimizer_layout"), layout, _optimizer_format(info))
