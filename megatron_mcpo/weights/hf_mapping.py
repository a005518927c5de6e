"""One mapping between Megatron GPTModel parameters and HF checkpoint tensors (the per-family name tables:
models/families.py).

Each Megatron parameter has a *kind* that knows its HF tensor(s) and layout:

  Replicated   norm weights (not TP-sharded)                      w_meg = w_hf
  ColumnTP     split over TP along dim 0                           w_meg = w_hf
  RowTP        split over TP along dim 1 (o_proj, down_proj)      w_meg = w_hf
  VocabTP      embedding / lm_head, split along dim 0, padded    w_meg = [w_hf; 0]  (V_pad rows)
  FusedQKV     linear_qkv: per query group g (ng = num_kv_heads groups, qpg = heads/ng):
               w_meg = cat_g [q_g (qpg*d rows); k_g (d rows); v_g (d rows)]   ([ng*(qpg+2)*d, hidden]
               or the 1-D bias); TP rank r holds the groups [r*ng/tp, (r+1)*ng/tp)
  FusedGateUp  linear_fc1: w_meg = [gate; up] ([2*ffn, hidden]); TP rank r holds [gate_r; up_r]

All functions are pure tensor functions: `to_hf` maps a full (TP-gathered) Megatron tensor to its HF
tensors, `shard_from_hf` builds one TP rank's shard from lazily read HF slices, and `pieces` places a TP
shard into the full tensor (the inverse of sharding; gate/up shards are two pieces).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union

import torch

from megatron_mcpo.config import ConfigError, model_family


class SliceReader(Protocol):
    """Lazy access to HF tensors: `shape(name)` without reading, `read(name, dim, start, stop)` reads
    rows/columns [start, stop) along `dim` (the whole tensor when dim is None)."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, dim: Optional[int] = None, start: int = 0, stop: int = 0) -> torch.Tensor: ...


class WeightMappingError(ValueError):
    """An HF/Megatron weight that cannot be mapped (unknown name, bad shape, unsupported config)."""


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @classmethod
    def from_hf_config(cls, hf: dict) -> "Dims":
        heads = hf["num_attention_heads"]
        return cls(
            hidden=hf["hidden_size"], heads=heads, kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, ffn=hf["intermediate_size"],
            vocab=hf["vocab_size"],
        )

    @property
    def q_per_group(self) -> int:
        return self.heads // self.kv_heads


def _tp_range(total: int, tp_rank: int, tp_size: int, what: str) -> tuple[int, int]:
    if total % tp_size:
        raise WeightMappingError(f"{what}: size {total} is not divisible by tensor-parallel size {tp_size}")
    n = total // tp_size
    return tp_rank * n, (tp_rank + 1) * n


@dataclass(frozen=True)
class Replicated:
    """Not TP-sharded (norm weights): w_meg = w_hf."""

    hf: str
    tp_dim = None

    def hf_names(self, layer: Optional[int]) -> list[str]:
        return [self.hf.format(i=layer)]

    def global_shape(self, reader: SliceReader, dims: Dims, layer: Optional[int], padded_vocab: int) -> tuple:
        return tuple(reader.shape(self.hf.format(i=layer)))

    def to_hf(self, full: torch.Tensor, dims: Dims, layer: Optional[int]) -> list[tuple[str, torch.Tensor]]:
        return [(self.hf.format(i=layer), full)]

    def shard_from_hf(self, reader: SliceReader, dims: Dims, layer: Optional[int], tp_rank: int, tp_size: int,
                      padded_vocab: int) -> torch.Tensor:
        return reader.read(self.hf.format(i=layer))

    def pieces(self, shard: torch.Tensor, dims: Dims, tp_rank: int, tp_size: int) -> list[tuple[int, torch.Tensor]]:
        """Where TP rank `tp_rank`'s shard lies in the full tensor: (offset along tp_dim, piece) pairs."""
        return [(0, shard)]


@dataclass(frozen=True)
class RowTP(Replicated):
    """Row-parallel linear (o_proj, down_proj): split over TP along dim 1."""

    tp_dim = 1

    def shard_from_hf(self, reader, dims, layer, tp_rank, tp_size, padded_vocab):
        name = self.hf.format(i=layer)
        start, stop = _tp_range(reader.shape(name)[1], tp_rank, tp_size, name)
        return reader.read(name, 1, start, stop)

    def pieces(self, shard, dims, tp_rank, tp_size):
        return [(tp_rank * shard.shape[1], shard)]


@dataclass(frozen=True)
class VocabTP(Replicated):
    """Vocab-parallel rows (embedding, lm_head): w_meg = [w_hf; 0] with V_pad rows, split along dim 0.
    The padding rows are zero on import and dropped on export."""

    tp_dim = 0

    def global_shape(self, reader, dims, layer, padded_vocab):
        shape = reader.shape(self.hf)
        if tuple(shape) != (dims.vocab, dims.hidden):
            raise WeightMappingError(f"shape mismatch: '{self.hf}' is {list(shape)}, config.json implies {[dims.vocab, dims.hidden]}")
        return (padded_vocab, dims.hidden)

    def to_hf(self, full, dims, layer):
        return [(self.hf, full[: dims.vocab])]

    def shard_from_hf(self, reader, dims, layer, tp_rank, tp_size, padded_vocab):
        if padded_vocab < dims.vocab:
            raise WeightMappingError(f"{self.hf}: Megatron vocab {padded_vocab} is smaller than the HF vocab {dims.vocab}")
        start, stop = _tp_range(padded_vocab, tp_rank, tp_size, self.hf)
        shard = torch.zeros(stop - start, dims.hidden, dtype=_dtype_of(reader, self.hf))
        if start < dims.vocab:
            real = reader.read(self.hf, 0, start, min(stop, dims.vocab))
            shard[: real.shape[0]] = real
        return shard

    def pieces(self, shard, dims, tp_rank, tp_size):
        return [(tp_rank * shard.shape[0], shard)]


def _dtype_of(reader: SliceReader, name: str) -> torch.dtype:
    return reader.read(name, 0, 0, 1).dtype


@dataclass(frozen=True)
class FusedQKV:
    """linear_qkv (weight [ng*(qpg+2)*d, hidden] or the 1-D bias), per query group g:
    w_meg = cat_g [q_g (qpg*d rows); k_g (d); v_g (d)]; TP rank r holds groups [r*ng/tp, (r+1)*ng/tp)."""

    q: str
    k: str
    v: str
    tp_dim = 0

    def hf_names(self, layer):
        return [n.format(i=layer) for n in (self.q, self.k, self.v)]

    def global_shape(self, reader, dims, layer, padded_vocab):
        names = self.hf_names(layer)
        shapes = [reader.shape(n) for n in names]
        rows = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.kv_heads * dims.head_dim)
        for n, shape, r in zip(names, shapes, rows):
            if shape[0] != r or shape[1:] != shapes[0][1:]:
                raise WeightMappingError(f"shape mismatch: '{n}' is {list(shape)}, config.json implies {r} rows")
        return (sum(rows), *shapes[0][1:])

    def to_hf(self, full, dims, layer):
        d, qpg, ng = dims.head_dim, dims.q_per_group, dims.kv_heads
        rest = full.shape[1:]
        q, k, v = torch.split(full.reshape(ng, (qpg + 2) * d, *rest), [qpg * d, d, d], dim=1)
        return [(n, t.reshape(-1, *rest)) for n, t in zip(self.hf_names(layer), (q, k, v))]

    def shard_from_hf(self, reader, dims, layer, tp_rank, tp_size, padded_vocab):
        d, qpg = dims.head_dim, dims.q_per_group
        qn, kn, vn = self.hf_names(layer)
        g0, g1 = _tp_range(dims.kv_heads, tp_rank, tp_size, f"{qn} (query groups)")
        q = reader.read(qn, 0, g0 * qpg * d, g1 * qpg * d)
        k = reader.read(kn, 0, g0 * d, g1 * d)
        v = reader.read(vn, 0, g0 * d, g1 * d)
        ng, rest = g1 - g0, q.shape[1:]
        parts = (q.reshape(ng, qpg * d, *rest), k.reshape(ng, d, *rest), v.reshape(ng, d, *rest))
        return torch.cat(parts, dim=1).reshape(-1, *rest)

    def pieces(self, shard, dims, tp_rank, tp_size):
        return [(tp_rank * shard.shape[0], shard)]


@dataclass(frozen=True)
class FusedGateUp:
    """linear_fc1: w_meg = [gate; up] ([2*ffn, hidden]); TP rank r holds [gate_r; up_r]."""

    gate: str
    up: str
    tp_dim = 0

    def hf_names(self, layer):
        return [self.gate.format(i=layer), self.up.format(i=layer)]

    def global_shape(self, reader, dims, layer, padded_vocab):
        names = self.hf_names(layer)
        shapes = [reader.shape(n) for n in names]
        for n, shape in zip(names, shapes):
            if shape[0] != dims.ffn or shape != shapes[0]:
                raise WeightMappingError(f"shape mismatch: '{n}' is {list(shape)}, config.json implies {dims.ffn} rows")
        return (2 * dims.ffn, *shapes[0][1:])

    def to_hf(self, full, dims, layer):
        gate, up = torch.chunk(full, 2, dim=0)
        return list(zip(self.hf_names(layer), (gate, up)))

    def shard_from_hf(self, reader, dims, layer, tp_rank, tp_size, padded_vocab):
        gn, un = self.hf_names(layer)
        start, stop = _tp_range(dims.ffn, tp_rank, tp_size, gn)
        return torch.cat([reader.read(gn, 0, start, stop), reader.read(un, 0, start, stop)], dim=0)

    def pieces(self, shard, dims, tp_rank, tp_size):
        half = shard.shape[0] // 2
        return [(tp_rank * half, shard[:half]), (dims.ffn + tp_rank * half, shard[half:])]


Kind = Union[Replicated, RowTP, VocabTP, FusedQKV, FusedGateUp]


def merge_tp(kind: Kind, shards: list[torch.Tensor], dims: Dims) -> torch.Tensor:
    """The full tensor from the TP shards of ranks 0..tp-1 (inverse of `shard_from_hf`)."""
    if kind.tp_dim is None or len(shards) == 1:
        return shards[0]
    shape = list(shards[0].shape)
    shape[kind.tp_dim] *= len(shards)
    full = torch.empty(shape, dtype=shards[0].dtype, device=shards[0].device)
    for rank, shard in enumerate(shards):
        for offset, piece in kind.pieces(shard, dims, rank, len(shards)):
            full.narrow(kind.tp_dim, offset, piece.shape[kind.tp_dim]).copy_(piece)
    return full


# The family tables' kinds (models/families.py): HF names there are relative to the layer prefix.
_KINDS = {"replicated": Replicated, "row": RowTP, "qkv": FusedQKV, "gate_up": FusedGateUp}
_HF_LAYER = "model.layers.{i}."


def layer_table(layer: dict) -> dict[str, Kind]:
    """A family's per-layer table (Megatron suffix -> (kind, HF names)) as kinds."""
    return {suffix: _KINDS[kind](*(_HF_LAYER + n for n in names)) for suffix, (kind, *names) in layer.items()}


# Transformer Engine fuses the pre-attention/pre-MLP norms into the next linear; those names are also
# the ones dist_checkpointing stores (the local spec maps its keys onto them).
TE_NORM_ALIASES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
LAYER_PREFIX = "decoder.layers."


@dataclass(frozen=True)
class FamilyMapping:
    """The resolved table of one HF config: family, dims, tied embeddings and the name tables."""

    family: str
    dims: Dims
    tied: bool
    layer_table: dict
    global_table: dict
    num_layers: int

    def kind(self, megatron_name: str) -> tuple[Kind, Optional[int]]:
        """(kind, global layer index or None) of a *global* Megatron parameter name."""
        if megatron_name.startswith(LAYER_PREFIX):
            idx, _, suffix = megatron_name[len(LAYER_PREFIX):].partition(".")
            suffix = TE_NORM_ALIASES.get(suffix, suffix)
            if suffix in self.layer_table and idx.isdigit():
                return self.layer_table[suffix], int(idx)
        elif megatron_name in self.global_table:
            return self.global_table[megatron_name], None
        raise WeightMappingError(f"no HF mapping for Megatron parameter '{megatron_name}' (family {self.family})")

    def exported(self, megatron_name: str) -> bool:
        """False for the tied output layer: HF stores only the embedding."""
        return not (self.tied and megatron_name == "output_layer.weight")

    def to_hf(self, megatron_name: str, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """HF (name, tensor) pairs of one full (TP-gathered) Megatron tensor; [] for the tied output layer."""
        if not self.exported(megatron_name):
            return []
        kind, layer = self.kind(megatron_name)
        return kind.to_hf(full, self.dims, layer)

    def megatron_names(self) -> list[str]:
        """Every global Megatron parameter name of the full model, in model order (tied output excluded)."""
        names = [n for n in self.global_table if n.startswith("embedding.")]
        for i in range(self.num_layers):
            names += [f"{LAYER_PREFIX}{i}.{s}" for s in self.layer_table]
        return names + [n for n in self.global_table if not n.startswith("embedding.") and self.exported(n)]


def family_mapping(hf: dict) -> FamilyMapping:
    """The mapping for an HF config dict; raises ConfigError for an unsupported architecture/option."""
    family = model_family(hf)
    bad = family.unsupported_in(hf)
    if bad:
        raise ConfigError(f"model: {family.name} checkpoints with {', '.join(bad)} are not supported by the weight mapping")
    tied = bool(hf.get("tie_word_embeddings", False))
    embed = VocabTP("model.embed_tokens.weight")
    global_table = {
        "embedding.word_embeddings.weight": embed,
        "decoder.final_layernorm.weight": Replicated("model.norm.weight"),
        # Tied: the last pipeline stage's copy of the embedding loads from the embedding itself.
        "output_layer.weight": embed if tied else VocabTP("lm_head.weight"),
    }
    return FamilyMapping(
        family=family.name, dims=Dims.from_hf_config(hf), tied=tied, layer_table=layer_table(family.layer),
        global_table=global_table, num_layers=hf["num_hidden_layers"],
    )


# Inference engines fuse q/k/v and gate/up into one module: an update of one of them must carry all.
_ENGINE_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                 "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def engine_module(hf_name: str) -> str:
    """The inference-engine module an HF tensor loads into (`model.layers.0.self_attn.q_proj.bias` ->
    `model.layers.0.self_attn.qkv_proj`). A weight update split mid-module leaves it half-loaded."""
    module = hf_name.rsplit(".", 1)[0]
    parent, _, leaf = module.rpartition(".")
    return f"{parent}.{_ENGINE_FUSED[leaf]}" if leaf in _ENGINE_FUSED else module
