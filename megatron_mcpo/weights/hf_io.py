"""Streaming HF safetensors I/O: a lazy slice reader (sharded or single-file checkpoints) and a writer
that cuts shards of bounded size. Neither holds more than one tensor (reader) or one shard (writer).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional

import torch

from megatron_mcpo.weights.hf_mapping import WeightMappingError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
class HFCheckpointReader:
    """Lazy reader of an HF safetensors checkpoint: only requested slices are read (`get_slice`)."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, INDEX_NAME)
        if os.path.isfile(index):
            with open(index) as f:
                self.weight_map: dict[str, str] = json.load(f)["weight_map"]
            missing = sorted({s for s in self.weight_map.values() if not os.path.isfile(os.path.join(hf_dir, s))})
            if missing:
                raise FileNotFoundError(f"HF checkpoint '{hf_dir}': shard file(s) named in {INDEX_NAME} are missing: {missing}")
        else:
            files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors")) if os.path.isdir(hf_dir) else []
            if not files:
                raise FileNotFoundError(f"HF checkpoint '{hf_dir}': no *.safetensors files and no {INDEX_NAME}")
            self.weight_map = {}
            for fname in files:
                with safe_open(os.path.join(hf_dir, fname), framework="pt") as h:
                    self.weight_map.update({k: fname for k in h.keys()})
        self._open = safe_open
        self._handles: dict[str, object] = {}

    def _slice(self, name: str):
        fname = self.weight_map.get(name)
        if fname is None:
            raise WeightMappingError(f"tensor '{name}' is not in the HF checkpoint '{self.hf_dir}'")
        if fname not in self._handles:
            self._handles[fname] = self._open(os.path.join(self.hf_dir, fname), framework="pt")
        return self._handles[fname].get_slice(name)

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, dim: Optional[int] = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        sl = self._slice(name)
        if dim is None:
            t = sl[:]
        else:
            shape = sl.get_shape()
            if not 0 <= start < stop <= shape[dim]:
                raise WeightMappingError(f"tensor '{name}' of shape {list(shape)}: range [{start}, {stop}) along dim {dim} is out of bounds")
            index = tuple(slice(start, stop) if d == dim else slice(None) for d in range(len(shape)))
            t = sl[index]
        if not t.is_floating_point() or t.dtype.itemsize < 2:
            raise WeightMappingError(
                f"tensor '{name}' has dtype {t.dtype}; only fp32/bf16/fp16 weights are supported (no quantized checkpoints)"
            )
        return t

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HFCheckpointWriter:
    """Write (name, tensor) pairs as safetensors shards of at most `max_shard_bytes` (a single tensor larger
    than that gets a shard of its own), then `model.safetensors.index.json` — or `model.safetensors` when
    everything fits in one shard. Holds at most one shard in memory."""

    def __init__(self, out_dir: str, max_shard_bytes: int = 2 << 30, dtype: Optional[torch.dtype] = None):
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self.dtype = dtype
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0
        os.makedirs(out_dir, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._files):
            raise WeightMappingError(f"HF tensor '{name}' written twice")
        t = tensor.detach().to("cpu", dtype=self.dtype or tensor.dtype).contiguous().clone()
        if self._pending and self._pending_bytes + t.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = t
        self._pending_bytes += t.nbytes
        self.total_bytes += t.nbytes

    def add_all(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in pairs:
            self.add(name, tensor)

    def _flush(self) -> None:
        from safetensors.torch import save_file

        fname = f"part-{len(self._files):05d}.safetensors"
        save_file(self._pending, os.path.join(self.out_dir, fname), metadata={"format": "pt"})
        self._files.append((fname, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Flush, name the shards HF-style and write the index; returns the file names."""
        if self._pending:
            self._flush()
        n = len(self._files)
        if n == 1:
            os.replace(os.path.join(self.out_dir, self._files[0][0]), os.path.join(self.out_dir, SINGLE_NAME))
            return [SINGLE_NAME]
        weight_map, names = {}, []
        for i, (fname, tensors) in enumerate(self._files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.out_dir, fname), os.path.join(self.out_dir, final))
            weight_map.update({t: final for t in tensors})
            names.append(final)
        with open(os.path.join(self.out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)
        return names
