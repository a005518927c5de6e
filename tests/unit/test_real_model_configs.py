"""The real HF config.json of eight public checkpoints (no weights): the HF and Megatron parameter counts
equal the published sizes, each example config's layout builds on the meta device one rank's shard at a
time (one process; megatron's process-group collection faked to that rank), and the weight mapping
takes every HF tensor to exactly one Megatron parameter, with shard shapes that tile the full tensor."""
import json

import pytest
import torch

from megatron_mcpo.config import ModelConfig, ParallelConfig, load_config
from megatron_mcpo.validation import validate

_LLAMA = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
          "eos_token_id": 128001, "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072,
          "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
          "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 128256}
_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
          "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "initializer_range": 0.02,
          "max_position_embeddings": 40960, "model_type": "qwen3", "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
          "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "torch_dtype": "bfloat16",
          "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}


def _rope(factor):
    return {"rope_scaling": {"factor": factor, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


# config.json of each checkpoint as published on the Hugging Face hub (the -Instruct variants share them).
REAL_CONFIGS = {
    "Llama-3.1-8B": {**_LLAMA, **_rope(8.0), "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                     "num_hidden_layers": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
                     "transformers_version": "4.43.0.dev0"},
    "Llama-3.2-1B": {**_LLAMA, **_rope(32.0), "head_dim": 64, "hidden_size": 2048, "intermediate_size": 8192,
                     "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
                     "tie_word_embeddings": True, "transformers_version": "4.45.0.dev0"},
    "Llama-3.2-3B": {**_LLAMA, **_rope(32.0), "head_dim": 128, "hidden_size": 3072, "intermediate_size": 8192,
                     "num_attention_heads": 24, "num_hidden_layers": 28, "num_key_value_heads": 8,
                     "tie_word_embeddings": True, "transformers_version": "4.45.0.dev0"},
    "Qwen2.5-7B": {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
                   "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
                   "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
                   "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
                   "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
                   "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True, "use_mrope": False,
                   "use_sliding_window": False, "vocab_size": 152064},
    "Qwen3-4B": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "max_window_layers": 36,
                 "num_attention_heads": 32, "num_hidden_layers": 36, "tie_word_embeddings": True},
    "Qwen3-8B": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "max_window_layers": 36,
                 "num_attention_heads": 32, "num_hidden_layers": 36, "tie_word_embeddings": False},
    "Qwen3-32B": {**_QWEN3, "hidden_size": 5120, "intermediate_size": 25600, "max_window_layers": 64,
                  "num_attention_heads": 64, "num_hidden_layers": 64, "tie_word_embeddings": False},
    # A small Llama unlike Meta's: 9 query heads over 3 KV groups (not a power of two), hidden 576 (head_dim
    # implied, 64), rope_theta 1e5 without scaling, tied embeddings. The architecture fields equal those of
    # the GGUF that benchmarks/pretrained_arith.py converts (tools/gguf_to_hf.py).
    "SmolLM2-135M": {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                     "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
                     "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
                     "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
                     "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2,
                     "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
                     "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                     "transformers_version": "4.42.3", "use_cache": True, "vocab_size": 49152},
}

# Exact counts from the configs' arithmetic (embeddings + layers [attention, MLP, norms] + final norm + untied
# head); the published sizes are these rounded (Qwen's model card says 7.61B for Qwen2.5-7B: 7.6156 truncated).
PARAMS = {
    "Llama-3.1-8B": (8_030_261_248, "8.03B"), "Llama-3.2-1B": (1_235_814_400, "1.24B"),
    "Llama-3.2-3B": (3_212_749_824, "3.21B"), "Qwen2.5-7B": (7_615_616_512, "7.62B"),
    "Qwen3-4B": (4_022_468_096, "4.02B"), "Qwen3-8B": (8_190_735_360, "8.19B"), "Qwen3-32B": (32_762_123_264, "32.76B"),
    "SmolLM2-135M": (134_515_008, "0.135B"),
}

# checkpoint -> (example config, the world size it is written for)
EXAMPLES = {
    "Llama-3.1-8B": ("llama3_1_8b_8xh200.yaml", 8), "Llama-3.2-1B": ("llama3_2_1b_8xh200.yaml", 8),
    "Llama-3.2-3B": ("llama3_2_3b_8xh200.yaml", 8), "Qwen2.5-7B": ("qwen2_5_7b_8xh200.yaml", 8),
    "Qwen3-4B": ("qwen3_4b_8xh200.yaml", 8), "Qwen3-8B": ("qwen3_8b_8xh200.yaml", 8),
    "Qwen3-32B": ("qwen3_32b_16xh200.yaml", 16), "SmolLM2-135M": ("smollm2_arith_cpu.yaml", 1),
}


def _hf_shapes(hf: dict) -> dict:
    """name -> shape of every tensor of the HF checkpoint (transformers on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(hf)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}  # a tied lm_head is not listed


@pytest.fixture(scope="module")
def megatron_single():
    from megatron_mcpo.distributed import destroy_distributed, init_distributed

    init_distributed(device="cpu")
    yield
    destroy_distributed()


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_hf_parameter_count_is_the_published_size(name):
    count, published = PARAMS[name]
    assert sum(torch.Size(s).numel() for s in _hf_shapes(REAL_CONFIGS[name]).values()) == count
    digits = len(published.split(".")[1]) - 1
    assert f"{count / 1e9:.{digits}f}B" == published


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_example_config_validates_at_its_world_size(name, tmp_path, capsys, monkeypatch):
    from megatron_mcpo.cli import main

    (tmp_path / "config.json").write_text(json.dumps(REAL_CONFIGS[name]))
    (tmp_path / "model.safetensors").touch()  # `mcpo validate` checks that weights exist, not their contents
    example, world = EXAMPLES[name]
    args = ["--config", f"examples/configs/{example}", "--set", f"model.hf_path={tmp_path}"]
    cfg = load_config(args[1], [args[3]])
    validate(cfg, world_size=world, cuda_available=True, check_files=False)  # config.json only: no weights
    # `mcpo validate` as on the GPU machine (it asks torch whether CUDA is there, nothing more)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["validate", *args, "--world-size", str(world)]) == 0
    assert "config OK" in capsys.readouterr().out


class _FakeGroup:
    """size()/rank() of a process group this single process pretends to be a member of."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


class _MetaReader:
    """An HF checkpoint of the given shapes whose reads are meta tensors (shapes only)."""

    def __init__(self, shapes: dict):
        self.shapes = shapes

    def shape(self, name):
        return self.shapes[name]

    def read(self, name, dim=None, start=0, stop=0):
        shape = list(self.shapes[name])
        if dim is not None:
            assert 0 <= start < stop <= shape[dim], (name, dim, start, stop)
            shape[dim] = stop - start
        return torch.empty(shape, device="meta")


def _rank_shard(hf, tp, pp, tp_rank, pp_rank):
    """{global Megatron name: shard shape} of rank (tp_rank, pp_rank)'s model, built on the meta device."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron_mcpo.models.provider import build_gpt_model
    from megatron_mcpo.weights.loader import global_named_parameters

    pgs = ProcessGroupCollection()
    pgs.tp, pgs.pp, pgs.cp, pgs.tp_cp = _FakeGroup(tp, tp_rank), _FakeGroup(pp, pp_rank), _FakeGroup(1, 0), _FakeGroup(tp, tp_rank)
    pgs.embd = pgs.pos_embd = None
    with torch.device("meta"):
        model = build_gpt_model(hf, ModelConfig(transformer_impl="local"), ParallelConfig(tp=tp, pp=pp),
                                pre_process=pp_rank == 0, post_process=pp_rank == pp - 1, pg_collection=pgs)
    return {n: tuple(p.shape) for n, p in global_named_parameters(model)}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_example_layout_shards_map_every_hf_tensor_once(megatron_single, name):
    from megatron_mcpo.models.provider import padded_vocab_size
    from megatron_mcpo.weights.hf_mapping import family_mapping

    hf = REAL_CONFIGS[name]
    p = load_config(f"examples/configs/{EXAMPLES[name][0]}").parallel
    assert p.vpp is None
    tp, pp = p.tp, p.pp
    mapping, hf_shapes = family_mapping(hf), _hf_shapes(hf)
    reader, padded = _MetaReader(hf_shapes), padded_vocab_size(hf["vocab_size"], tp)

    stage_of, shards = {}, {}  # global name -> pp rank; (name, tp_rank) -> shard shape
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            for n, shape in _rank_shard(hf, tp, pp, tp_rank, pp_rank).items():
                if mapping.tied and n == "output_layer.weight":
                    continue  # the last stage's copy of the tied embedding: HF has no tensor for it
                assert stage_of.setdefault(n, pp_rank) == pp_rank, f"{n} on two pipeline stages"
                shards[n, tp_rank] = shape
    assert sorted(stage_of) == sorted(mapping.megatron_names())  # the model's parameters are the table's

    claimed: dict[str, str] = {}
    megatron_total = 0
    for n in stage_of:
        kind, layer = mapping.kind(n)
        for h in kind.hf_names(layer):
            assert claimed.setdefault(h, n) == n, f"HF tensor {h} claimed by {claimed[h]} and {n}"
        full = tuple(kind.global_shape(reader, mapping.dims, layer, padded))
        # HF -> Megatron: each TP rank's shard, as the loader cuts it, has the model's shard shape ...
        covered = 0
        for r in range(tp):
            with torch.device("meta"):
                cut = kind.shard_from_hf(reader, mapping.dims, layer, r, tp, padded)
            assert tuple(cut.shape) == shards[n, r], (n, r)
            # ... and the shards' pieces tile the full tensor along the TP dim (replicated: identical copies)
            for offset, piece in kind.pieces(cut, mapping.dims, r, tp):
                if kind.tp_dim is None:
                    assert tuple(piece.shape) == full
                else:
                    covered += piece.shape[kind.tp_dim]
                    assert offset + piece.shape[kind.tp_dim] <= full[kind.tp_dim]
        assert kind.tp_dim is None or covered == full[kind.tp_dim], n
        # Megatron -> HF: the full tensor becomes HF tensors of exactly the checkpoint's shapes.
        back = mapping.to_hf(n, torch.empty(full, device="meta"))
        assert {h: tuple(t.shape) for h, t in back} == {h: hf_shapes[h] for h in kind.hf_names(layer)}
        megatron_total += torch.Size(full).numel()
    assert sorted(claimed) == sorted(hf_shapes)  # every HF tensor, each exactly once
    pad_rows = (padded - hf["vocab_size"]) * hf["hidden_size"] * (1 if mapping.tied else 2)
    assert megatron_total - pad_rows == PARAMS[name][0]
