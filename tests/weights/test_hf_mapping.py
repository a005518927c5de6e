"""Pure mapping functions: layouts of fused QKV (GQA groups), gate/up, vocab padding, TP shard/merge
round trips, bucketing, and the errors for bad input."""
import os

import pytest
import torch

from megatron_mcpo.config import ConfigError
from megatron_mcpo.weights.hf_io import HFCheckpointReader, HFCheckpointWriter
from megatron_mcpo.weights.hf_mapping import (Dims, FusedGateUp, FusedQKV, VocabTP, WeightMappingError,
                                              engine_module, family_mapping, merge_tp)
from megatron_mcpo.weights.refit import bucket_tensors


class DictReader:
    """SliceReader over an in-memory dict (the same protocol as the safetensors reader)."""

    def __init__(self, tensors):
        self.t = tensors

    def shape(self, name):
        return tuple(self.t[name].shape)

    def read(self, name, dim=None, start=0, stop=0):
        return self.t[name] if dim is None else self.t[name].narrow(dim, start, stop - start)


QKV = FusedQKV("q.{i}", "k.{i}", "v.{i}")


def test_qkv_layout_is_grouped_per_kv_head():
    # 4 query heads, 2 KV heads, head_dim 1: Megatron rows are [q0 q1 k0 v0 | q2 q3 k1 v1].
    dims = Dims(hidden=3, heads=4, kv_heads=2, head_dim=1, ffn=4, vocab=8)
    q = torch.tensor([[0.0] * 3, [1.0] * 3, [2.0] * 3, [3.0] * 3])
    k = torch.tensor([[10.0] * 3, [11.0] * 3])
    v = torch.tensor([[20.0] * 3, [21.0] * 3])
    reader = DictReader({"q.0": q, "k.0": k, "v.0": v})
    full = QKV.shard_from_hf(reader, dims, 0, 0, 1, 8)
    assert full[:, 0].tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    # TP2: rank r holds query group r
    assert QKV.shard_from_hf(reader, dims, 0, 1, 2, 8)[:, 0].tolist() == [2, 3, 11, 21]
    back = dict(QKV.to_hf(full, dims, 0))
    assert torch.equal(back["q.0"], q) and torch.equal(back["k.0"], k) and torch.equal(back["v.0"], v)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tp_shard_merge_roundtrip(tp):
    g = torch.Generator().manual_seed(0)
    dims = Dims(hidden=16, heads=8, kv_heads=4, head_dim=4, ffn=24, vocab=50)
    t = {"q.0": torch.randn(32, 16, generator=g), "k.0": torch.randn(16, 16, generator=g),
         "v.0": torch.randn(16, 16, generator=g), "qb.0": torch.randn(32, generator=g),
         "kb.0": torch.randn(16, generator=g), "vb.0": torch.randn(16, generator=g),
         "gate.0": torch.randn(24, 16, generator=g), "up.0": torch.randn(24, 16, generator=g),
         "emb": torch.randn(50, 16, generator=g)}
    reader = DictReader(t)
    kinds = [QKV, FusedQKV("qb.{i}", "kb.{i}", "vb.{i}"), FusedGateUp("gate.{i}", "up.{i}"), VocabTP("emb")]
    for kind in kinds:
        shards = [kind.shard_from_hf(reader, dims, 0, r, tp, 64) for r in range(tp)]
        full = merge_tp(kind, shards, dims)
        assert torch.equal(full, kind.shard_from_hf(reader, dims, 0, 0, 1, 64))
        for name, tensor in kind.to_hf(full, dims, 0):
            assert torch.equal(tensor, t[name]), name
    # gate/up: TP rank r holds [gate_r; up_r]
    shard = FusedGateUp("gate.{i}", "up.{i}").shard_from_hf(reader, dims, 0, tp - 1, tp, 64)
    n = 24 // tp
    assert torch.equal(shard, torch.cat([t["gate.0"][-n:], t["up.0"][-n:]]))
    # vocab: padded rows are zero
    emb = VocabTP("emb").shard_from_hf(reader, dims, None, 0, 1, 64)
    assert emb.shape == (64, 16) and not emb[50:].any()


def test_family_tables_and_errors():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1)
    q3 = family_mapping(dict(base, model_type="qwen3", tie_word_embeddings=True))
    assert "decoder.layers.1.self_attention.q_layernorm.weight" in q3.megatron_names()
    assert "output_layer.weight" not in q3.megatron_names() and q3.to_hf("output_layer.weight", torch.zeros(1)) == []
    # the TE spec's fused norm names map like the local ones
    kind, layer = q3.kind("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight")
    assert layer == 1 and kind.hf_names(1) == ["model.layers.1.input_layernorm.weight"]
    q2 = family_mapping(dict(base, model_type="qwen2"))
    assert q2.kind("decoder.layers.0.self_attention.linear_qkv.bias")[0].hf_names(0)[0].endswith("q_proj.bias")
    with pytest.raises(ConfigError, match="unsupported model_type 'mixtral'"):
        family_mapping(dict(base, model_type="mixtral"))
    with pytest.raises(ConfigError, match="mlp_bias"):
        family_mapping(dict(base, model_type="llama", mlp_bias=True))
    with pytest.raises(WeightMappingError, match="no HF mapping for Megatron parameter 'decoder.layers.0.foo.weight'"):
        q2.kind("decoder.layers.0.foo.weight")


def test_engine_modules_and_buckets_keep_fused_modules_whole():
    assert engine_module("model.layers.3.self_attn.k_proj.bias") == "model.layers.3.self_attn.qkv_proj"
    assert engine_module("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.gate_up_proj"
    assert engine_module("model.norm.weight") == "model.norm"
    t = lambda n: torch.zeros(n)  # noqa: E731  4 bytes per element
    stream = [("model.embed_tokens.weight", t(100)),
              ("model.layers.0.self_attn.q_proj.weight", t(40)), ("model.layers.0.self_attn.k_proj.weight", t(20)),
              ("model.layers.0.self_attn.v_proj.weight", t(20)), ("model.layers.0.self_attn.q_proj.bias", t(4)),
              ("model.layers.0.self_attn.k_proj.bias", t(2)), ("model.layers.0.self_attn.v_proj.bias", t(2)),
              ("model.layers.0.mlp.gate_proj.weight", t(10)), ("model.layers.0.mlp.up_proj.weight", t(10)),
              ("model.norm.weight", t(5))]
    buckets = list(bucket_tensors(iter(stream), bucket_bytes=200))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in stream]
    for b in buckets:
        modules = {engine_module(n) for n, _ in b}
        assert sum(x.nbytes for _, x in b) <= 400  # the embedding alone (400 B) exceeds 200: its own bucket
        for other in buckets:
            if other is not b:
                assert not modules & {engine_module(n) for n, _ in other}
    assert [n for n, _ in buckets[0]] == ["model.embed_tokens.weight"]
    with pytest.raises(ValueError, match="not consecutive"):
        list(bucket_tensors(iter([stream[1], stream[7], stream[2]]), 1 << 20))


def test_hf_reader_errors(tmp_path):
    w = HFCheckpointWriter(str(tmp_path / "ck"), max_shard_bytes=64)
    w.add("a", torch.zeros(8, 4))
    w.add("b", torch.ones(8, 4))
    w.add("ids", torch.arange(4))
    files = w.finish()
    assert len(files) == 3 and os.path.isfile(tmp_path / "ck" / "model.safetensors.index.json")
    reader = HFCheckpointReader(str(tmp_path / "ck"))
    assert torch.equal(reader.read("b", 0, 2, 5), torch.ones(3, 4)) and reader.shape("a") == (8, 4)
    with pytest.raises(WeightMappingError, match="'missing' is not in the HF checkpoint"):
        reader.read("missing")
    with pytest.raises(WeightMappingError, match="dtype torch.int64"):
        reader.read("ids")
    with pytest.raises(WeightMappingError, match="out of bounds"):
        reader.read("a", 0, 4, 9)
    os.remove(tmp_path / "ck" / files[1])
    with pytest.raises(FileNotFoundError, match="missing"):
        HFCheckpointReader(str(tmp_path / "ck"))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        HFCheckpointReader(str(tmp_path))
