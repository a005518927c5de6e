"""Megatron `dist_checkpointing` (torch_dist) checkpoints written from / read into HF tensors, streaming.

Writing builds no model: the checkpoint's tensors are described up front (key, global shape, chunks) and
each chunk is produced only when torch.distributed.checkpoint's writer asks for it (`resolve_data`),
from lazily read HF slices; reading loads one layer of one key at a time. Peak memory is one chunk,
so an 8B fp32 model converts on a machine that could not hold it.

Layout written (what megatron-core's GPTModel.sharded_state_dict expects, so the trainer loads it at
any TP/PP, resharding on load): per-layer tensors stacked as `decoder.layers.<suffix>` [L, ...] with the
norms under their Transformer-Engine names, chunked per layer and TP shard as a TP-`tp` run saves them;
the linears' (empty) `_extra_state` objects; `metadata.json`, `common.pt`. Next to them, `hf/` holds
config.json, the tokenizer files and `mcpo_conversion.json` (family, dtype), so back-conversion needs
nothing else.
"""
from __future__ import annotations

import io
import json
import os
from functools import lru_cache
from typing import Callable, Iterator, Optional

import torch

from megatron_mcpo.training.ckpt_files import (
    CheckpointError, checkpoint_files, file_digests, verify_checkpoint, write_manifest,
)
from megatron_mcpo.progress import bar
from megatron_mcpo.models.families import read_hf_config
from megatron_mcpo.weights.hf_files import copy_tokenizer_files
from megatron_mcpo.weights.hf_io import HFCheckpointReader
from megatron_mcpo.weights.hf_mapping import LAYER_PREFIX, TE_NORM_ALIASES, FamilyMapping, family_mapping

HF_META_DIR = "hf"
META_FILE = "mcpo_conversion.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_CKPT_SUFFIX = {v: k for k, v in TE_NORM_ALIASES.items()}  # local-spec name -> stored (TE) name
# Linears whose (empty, for the local spec) `_extra_state` megatron-core stores as sharded objects.
_EXTRA_STATE_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def checkpoint_key(megatron_name: str) -> tuple[str, Optional[int]]:
    """(dist_checkpointing key, global layer or None) of a global Megatron parameter name."""
    if not megatron_name.startswith(LAYER_PREFIX):
        return megatron_name, None
    idx, _, suffix = megatron_name[len(LAYER_PREFIX):].partition(".")
    return LAYER_PREFIX + _CKPT_SUFFIX.get(suffix, suffix), int(idx)


def write_hf_metadata(ckpt_dir: str, hf_dir: str, dtype: str) -> None:
    """Store the HF config, tokenizer files and family next to a Megatron checkpoint (`<ckpt>/hf/`)."""
    hf = read_hf_config(hf_dir)
    meta_dir = os.path.join(ckpt_dir, HF_META_DIR)
    copy_tokenizer_files(hf_dir, meta_dir)
    with open(os.path.join(meta_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    with open(os.path.join(meta_dir, META_FILE), "w") as f:
        json.dump({"family": family_mapping(hf).family, "dtype": dtype, "source": os.path.abspath(hf_dir)}, f, indent=2)


def find_hf_metadata(ckpt_dir: str) -> str:
    """The `hf/` directory of a Megatron checkpoint (in it, or in its parent save directory)."""
    for d in (ckpt_dir, os.path.dirname(os.path.abspath(ckpt_dir))):
        if os.path.isfile(os.path.join(d, HF_META_DIR, "config.json")):
            return os.path.join(d, HF_META_DIR)
    raise FileNotFoundError(
        f"'{ckpt_dir}' carries no HF config ({HF_META_DIR}/config.json): it was not written by "
        f"tools/convert_hf_to_megatron.py or the trainer"
    )


class _Chunk:
    """One stored chunk: offsets/sizes in the global tensor and the function that produces it."""

    def __init__(self, offsets: tuple, sizes: tuple, make: Callable[[], torch.Tensor]):
        self.offsets, self.sizes, self.make = offsets, sizes, make


def _plan_tensors(mapping: FamilyMapping, reader: HFCheckpointReader, tp: int, dtype: torch.dtype,
                  padded_vocab: int) -> dict[str, tuple[tuple, list[_Chunk]]]:
    """key -> (global shape, chunks) for every tensor of the checkpoint; only shapes are read here."""

    @lru_cache(maxsize=1)  # the gate and up pieces of one fc1 shard: build the shard once, keep only it
    def shard(name: str, tp_rank: int) -> torch.Tensor:
        kind, layer = mapping.kind(name)
        return kind.shard_from_hf(reader, mapping.dims, layer, tp_rank, tp, padded_vocab).to(dtype)

    plan: dict[str, tuple[tuple, list[_Chunk]]] = {}
    for name in mapping.megatron_names():
        kind, layer = mapping.kind(name)
        key, _ = checkpoint_key(name)
        shape = tuple(kind.global_shape(reader, mapping.dims, layer, padded_vocab))
        lead = () if layer is None else (layer,)
        chunks = plan.setdefault(key, (shape if layer is None else (mapping.num_layers, *shape), []))[1]
        local = list(shape)
        if kind.tp_dim is not None:
            local[kind.tp_dim] //= tp
        for r in range(tp) if kind.tp_dim is not None else range(1):
            # Piece placement from a meta tensor of the local shape: no data is touched.
            for i, (offset, piece) in enumerate(kind.pieces(torch.empty(local, device="meta"), mapping.dims, r, tp)):
                offs = [0] * len(shape)
                if kind.tp_dim is not None:
                    offs[kind.tp_dim] = offset

                def make(name=name, r=r, i=i, kind=kind, lead=lead):
                    t = kind.pieces(shard(name, r), mapping.dims, r, tp)[i][1]
                    return t.unsqueeze(0) if lead else t

                chunks.append(_Chunk(lead + tuple(offs), ((1,) if lead else ()) + tuple(piece.shape), make))
    return plan


def _extra_state_bytes() -> io.BytesIO:
    buf = io.BytesIO()
    torch.save([None], buf)  # what megatron-core stores for a local-spec linear's extra state
    return buf


def _save_planner(plan: dict, dtype: torch.dtype, extra_keys: list[str]):
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    class LazySavePlanner(DefaultSavePlanner):
        """Write items described up front; each tensor is produced only when the writer asks for it."""

        def __init__(self):
            super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
            self.makers: dict = {}

        def create_local_plan(self) -> SavePlan:
            items = []
            for key, (gshape, chunks) in plan.items():
                for c in chunks:
                    index = MetadataIndex(key, torch.Size(c.offsets))
                    items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)),
                        properties=TensorProperties(dtype=dtype), size=torch.Size(gshape))))
                    self.makers[index] = c.make
            for key in extra_keys:
                index = MetadataIndex(key)
                items.append(WriteItem(index=index, type=WriteItemType.BYTE_IO))
                self.makers[index] = _extra_state_bytes
            self.plan = SavePlan(items)
            return self.plan

        def resolve_data(self, write_item):
            return self.makers[write_item.index]()

    return LazySavePlanner()


def convert_hf_to_megatron(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, dtype: str = "fp32") -> dict:
    """Write the Megatron dist checkpoint of an HF checkpoint (single process, streaming). Returns a summary.

    `tp`/`pp` are checked against the model and decide how tensors are chunked (as a TP-`tp` run saves
    them); the result loads at any TP/PP.
    """
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

    from megatron_mcpo.config import ConfigError
    from megatron_mcpo.models.provider import padded_vocab_size

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: '{dtype}' is not one of {sorted(DTYPES)}")
    hf = read_hf_config(hf_dir)
    mapping = family_mapping(hf)
    d = mapping.dims
    for what, total, parts in (("num_key_value_heads", d.kv_heads, tp), ("intermediate_size", d.ffn, tp),
                               ("num_hidden_layers", mapping.num_layers, pp)):
        if total % parts:
            raise ConfigError(f"--{'tp' if parts == tp else 'pp'} {parts} does not divide {what}={total}")

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"output directory '{out_dir}' is not empty")
    os.makedirs(out_dir, exist_ok=True)
    with HFCheckpointReader(hf_dir) as reader:
        plan = _plan_tensors(mapping, reader, tp, DTYPES[dtype], padded_vocab_size(mapping.dims.vocab, tp))
        counter = bar(total=sum(len(chunks) for _, chunks in plan.values()), desc=f"converting {hf_dir}", unit="chunk")
        for _, chunks in plan.values():
            for c in chunks:
                c.make = lambda make=c.make: (counter.update(1), make())[1]
        n = mapping.num_layers
        extra = [f"{LAYER_PREFIX}{m}._extra_state/shard_{i}_{n}" for m in _EXTRA_STATE_MODULES for i in range(n)]
        writer = dcp.FileSystemWriter(out_dir, single_file_per_rank=True, thread_count=1)
        dcp.save({}, storage_writer=writer, planner=_save_planner(plan, DTYPES[dtype], extra), no_dist=True)
        counter.close()
    torch.save({}, os.path.join(out_dir, "common.pt"))
    save_config(CheckpointingConfig("torch_dist"), out_dir)
    write_hf_metadata(out_dir, hf_dir, dtype)
    write_manifest(out_dir, file_digests(out_dir, checkpoint_files(out_dir)))
    return {"family": mapping.family, "tensors": len(mapping.megatron_names()), "keys": len(plan),
            "layers": mapping.num_layers, "dtype": dtype}


def _region_planner(regions: dict[str, tuple[tuple, tuple]]):
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class RegionLoadPlanner(DefaultLoadPlanner):
        """Reads region (offsets, sizes) of each key into the state dict's buffer of that size."""

        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, (offsets, sizes) in regions.items():
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
                items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
            return LoadPlan(items)

        def lookup_tensor(self, index):
            return self.state_dict[index.fqn]  # one region per key: the offsets name that region

    return RegionLoadPlanner()


def read_checkpoint_tensors(ckpt_dir: str, mapping: FamilyMapping) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (global Megatron name, full tensor) from a dist checkpoint (converted or saved by the
    trainer, any TP/PP), reading one layer at a time. Single process, no process group needed."""
    import torch.distributed.checkpoint as dcp

    stored = dcp.FileSystemReader(ckpt_dir).read_metadata().state_dict_metadata
    by_layer: dict[Optional[int], list[tuple[str, str]]] = {}
    for name in mapping.megatron_names():
        key, layer = checkpoint_key(name)
        if key not in stored:
            raise KeyError(f"Megatron checkpoint '{ckpt_dir}' has no tensor '{key}' (needed for {name})")
        if layer is not None and stored[key].size[0] != mapping.num_layers:
            raise ValueError(f"'{key}' stores {stored[key].size[0]} layers but config.json has {mapping.num_layers}")
        by_layer.setdefault(layer, []).append((name, key))
    for layer, entries in by_layer.items():
        buffers, regions = {}, {}
        for name, key in entries:
            size = tuple(stored[key].size)
            if layer is not None:
                regions[key] = ((layer,) + (0,) * (len(size) - 1), (1,) + size[1:])
                size = size[1:]
            else:
                regions[key] = ((0,) * len(size), size)
            buffers[key] = torch.empty(regions[key][1], dtype=stored[key].properties.dtype)
        dcp.load(buffers, storage_reader=dcp.FileSystemReader(ckpt_dir), planner=_region_planner(regions), no_dist=True)
        for name, key in entries:
            yield name, buffers[key][0] if layer is not None else buffers[key]


def convert_megatron_to_hf(megatron_dir: str, out_dir: str, max_shard_bytes: int = 2 << 30) -> dict:
    """Write HF safetensors + config + tokenizer files from a Megatron dist checkpoint (streaming)."""
    from megatron_mcpo.weights.hf_io import HFCheckpointWriter

    from torch.distributed.checkpoint.api import CheckpointException

    verify_checkpoint(megatron_dir)  # every file against the checksums recorded at save
    meta_dir = find_hf_metadata(megatron_dir)
    hf = read_hf_config(meta_dir)
    mapping = family_mapping(hf)
    writer = HFCheckpointWriter(out_dir, max_shard_bytes=max_shard_bytes)
    dtypes = set()
    try:
        tensors = read_checkpoint_tensors(megatron_dir, mapping)
        for name, tensor in bar(tensors, total=len(mapping.megatron_names()), desc=f"exporting {megatron_dir}", unit="tensor"):
            dtypes.add(tensor.dtype)
            writer.add_all(mapping.to_hf(name, tensor))
    except CheckpointException as e:
        first = next(iter(e.failures.values()), e) if getattr(e, "failures", None) else e
        raise CheckpointError(f"checkpoint '{megatron_dir}' cannot be read: {str(first).splitlines()[-1][:300]}") from None
    files = writer.finish()
    copy_tokenizer_files(meta_dir, out_dir)
    # config.json states the dtype the tensors were written in (the source model's may differ).
    dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else None
    if dtype:
        hf = {**hf, "dtype": dtype, **({"torch_dtype": dtype} if "torch_dtype" in hf else {})}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    return {"family": mapping.family, "files": files, "bytes": writer.total_bytes, "dtype": dtype or "mixed"}
