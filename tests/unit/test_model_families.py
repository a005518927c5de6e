"""Every family builds from its HF config with the right shapes and parameter counts."""
import pytest
import torch

from megatron_mcpo.config import ModelConfig, ParallelConfig
from megatron_mcpo.models.families import FAMILIES, tiny_hf_config
from megatron_mcpo.models.provider import build_gpt_model, padded_vocab_size, rope_settings, transformer_config_from_hf


@pytest.fixture(scope="module")
def megatron_single():
    from megatron_mcpo.distributed import destroy_distributed, init_distributed

    init_distributed(device="cpu")
    yield
    destroy_distributed()


def _hf_param_count(hf):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(hf)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family,tied", [(name, False) for name in FAMILIES] + [("qwen3", True)])
def test_family_builds_with_hf_parameter_count(megatron_single, family, tied):
    hf = tiny_hf_config(family, tie_word_embeddings=tied)
    model = build_gpt_model(hf, ModelConfig(), ParallelConfig())
    padded = padded_vocab_size(hf["vocab_size"], 1)
    pad_rows = (padded - hf["vocab_size"]) * hf["hidden_size"] * (1 if tied else 2)
    assert sum(p.numel() for p in model.parameters()) == _hf_param_count(hf) + pad_rows
    names = dict(model.named_parameters())
    assert ("output_layer.weight" in names) is (not tied)
    assert ("decoder.layers.0.self_attention.q_layernorm.weight" in names) is (family == "qwen3")
    assert ("decoder.layers.0.self_attention.linear_qkv.bias" in names) is (family == "qwen2")
    # The family's name table covers exactly the layer's parameters.
    layer0 = {n.removeprefix("decoder.layers.0.") for n in names if n.startswith("decoder.layers.0.")}
    assert layer0 == set(FAMILIES[family].layer)
    head_dim = 64
    q_rows = hf["num_attention_heads"] * head_dim + 2 * hf["num_key_value_heads"] * head_dim
    assert names["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (q_rows, hf["hidden_size"])
    assert names["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * hf["intermediate_size"], hf["hidden_size"])
    tokens = torch.randint(0, hf["vocab_size"], (2, 7))
    logits = model(tokens, torch.arange(7).expand(2, -1), None)
    assert logits.shape == (2, 7, padded)


def test_rope_settings_both_config_styles():
    assert rope_settings({"rope_theta": 5e5}) == (5e5, None)
    assert rope_settings({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) == (1e6, None)
    old_style = {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert rope_settings(old_style) == (5e5, 8.0)
    from megatron_mcpo.config import ConfigError

    with pytest.raises(ConfigError, match="rope scaling type 'yarn'"):
        rope_settings({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_transformer_config_fields():
    cfg = transformer_config_from_hf(tiny_hf_config("qwen2"), ModelConfig(params_dtype="bf16"), ParallelConfig(tp=2))
    assert cfg.add_qkv_bias and not cfg.qk_layernorm and cfg.num_query_groups == 2 and cfg.kv_channels == 64
    assert cfg.params_dtype == torch.bfloat16 and cfg.hidden_dropout == 0.0 and cfg.tensor_model_parallel_size == 2
    assert padded_vocab_size(1000, 2) == 1024 and padded_vocab_size(1024, 1) == 1024


def test_config_is_the_bottom_floor():
    """config.py imports only the torch-free family table (which imports nothing of the package)."""
    import subprocess
    import sys

    code = ("import sys, megatron_mcpo.config; "
            "print(sorted(m for m in sys.modules if m.startswith('megatron_mcpo')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['megatron_mcpo', 'megatron_mcpo.config', 'megatron_mcpo.models', 'megatron_mcpo.models.families'] False"


def test_unknown_tiny_family_names_the_choices():
    with pytest.raises(ValueError, match="unknown tiny model family 'gpt2' \\(choose llama, qwen2, qwen3\\)"):
        tiny_hf_config("gpt2")
