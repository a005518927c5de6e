"""Build a Megatron GPTModel from an HF `config.json` (the families of models/families.py).

RMSNorm, SwiGLU, GQA, RoPE with the model's theta (and Llama-3 rope scaling), QKV bias (Qwen2),
QK-norm (Qwen3), optionally tied embeddings. The local layer spec on CPU; the Transformer Engine
spec on GPU when TE imports (FP8 needs it). The local spec's core attention is torch SDPA
(models/attention.py) unless model.attention_backend=local asks for megatron's unfused one. Every
decision that depends on the hardware (CPU initialisation, batched p2p, TE, where the chunk lives)
follows the `device` argument (the run's resolved run.device), never `torch.cuda.is_available()`: a CPU
run on a GPU machine is a plain CPU run.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from megatron_mcpo.config import ConfigError, ModelConfig, ParallelConfig, model_family
from megatron_mcpo.distributed import ParallelGroups


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron's padded vocabulary: a multiple of divisible_by * tp (the extra rows are masked)."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def rope_settings(hf: dict) -> tuple[float, Optional[float]]:
    """(rope theta, llama3 scaling factor or None) from either HF config style (rope_parameters in
    transformers 5, rope_theta/rope_scaling before)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if scaling:
        params = {**scaling, **params}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type == "llama3":
        # megatron-core implements Llama-3 scaling with these constants only.
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        for key, value in expected.items():
            if key in params and float(params[key]) != value:
                raise ConfigError(f"model: llama3 rope scaling with {key}={params[key]} is unsupported (megatron-core fixes {value})")
        return theta, float(params.get("factor", 8.0))
    raise ConfigError(f"model: rope scaling type '{rope_type}' is not supported")


def use_transformer_engine(model: ModelConfig, device: Union[str, torch.device] = "cpu") -> bool:
    if model.attention_backend != "auto":  # an explicit local-spec attention (validate() checks the combination)
        return False
    if model.transformer_impl == "local" or torch.device(device).type != "cuda":
        return False
    if model.transformer_impl == "transformer_engine":
        return True
    from megatron_mcpo.models import te_support

    return te_support.available()


def transformer_config_from_hf(hf: dict, model: ModelConfig, parallel: ParallelConfig,
                               device: Union[str, torch.device] = "cpu"):
    """The megatron TransformerConfig equivalent to an HF config dict, for a model on `device`."""
    from megatron.core.transformer import TransformerConfig

    family = model_family(hf)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"model: hidden_act '{hf.get('hidden_act')}' is not supported (SwiGLU/silu only)")
    on_cpu = torch.device(device).type == "cpu"
    bf16 = model.params_dtype == "bf16"
    kwargs = dict(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads", heads),
        kv_channels=head_dim,
        ffn_hidden_size=hf["intermediate_size"],
        normalization="RMSNorm",
        layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(hf.get("attention_bias", False)),
        qk_layernorm=False,
        # The HF configs of these families use no dropout; keep forward passes deterministic.
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        use_cpu_initialization=on_cpu,
        # Fused kernels are CUDA-only; the unfused paths are exact. SwiGLU's fusion is megatron's
        # torch.compile'd kernel (no TE/apex; it saves only the fc1 output for backward); the RoPE and
        # softmax fusions need TE/apex, and the SDPA core attention needs no softmax fusion.
        bias_activation_fusion=not on_cpu,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # gloo matches point-to-point messages between two ranks by order only; batched p2p lets an
        # activation and a gradient bound for the same peer (PP=2 with VPP) cross. Ordered ops on CPU.
        batch_p2p_comm=not on_cpu,
        init_method_std=hf.get("initializer_range", 0.02),
        cuda_graph_scope=[],  # megatron's default ("full") is its own deprecated spelling of this: it warns
    )
    kwargs.update(family.transformer)  # what differs between families (models/families.py)
    if model.recompute_granularity is not None:
        kwargs.update(recompute_granularity=model.recompute_granularity)
        if model.recompute_granularity == "full":
            kwargs.update(recompute_method="uniform", recompute_num_layers=model.recompute_num_layers)
    if model.fp8 is not None:
        from megatron_mcpo.models import te_support

        kwargs.update(te_support.fp8_kwargs(model.fp8, model.fp8_recipe))
    return TransformerConfig(**kwargs)


def build_gpt_model(
    hf: dict,
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    pg_collection=None,
    device: Union[str, torch.device] = "cpu",
):
    """One Megatron GPTModel chunk on `device`: with the embedding when `pre_process` (the first pipeline
    stage), with the output layer when `post_process` (the last). Parallel state must be initialised unless
    `pg_collection` (megatron's ProcessGroupCollection) replaces its groups, e.g. to build one rank's shard of
    a large layout on the meta device in a single process."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    config = transformer_config_from_hf(hf, model, parallel, device)
    if use_transformer_engine(model, device):
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
        if model.attention_backend != "local":
            from megatron_mcpo.models.attention import with_sdpa_core_attention

            spec = with_sdpa_core_attention(spec)
    theta, scaling = rope_settings(hf)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(hf["vocab_size"], parallel.tp),
        max_sequence_length=hf.get("max_position_embeddings", 4096),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,  # logits stay vocab-sharded: log-probs are computed vocab-parallel
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_base=theta,
        rope_scaling=scaling is not None,
        rope_scaling_factor=scaling or 8.0,
        vp_stage=vp_stage,
        pg_collection=pg_collection,
    )
    # Like Megatron-LM's get_model: the parallel linears are created on the current GPU, but torch norms
    # and buffers are not; move the whole chunk before DDP wraps it. (A shape-only chunk built under
    # torch.device("meta") stays there.) Torch norms (the local spec's) are also created in fp32 whatever
    # params_dtype says: cast them as Megatron-LM's Float16Module does. In a bf16 model an fp32 norm weight
    # is an fp32 parameter megatron's bf16 optimizer cannot checkpoint ("Param id .. does not match any
    # model sharded param"), and it sends RMSNorm to torch's unfused kernel (mixed input/weight dtypes).
    if next(gpt.parameters()).is_meta:
        return gpt
    return gpt.to(device=device, dtype=config.params_dtype)


def build_model_chunks(hf: dict, model: ModelConfig, parallel: ParallelConfig, groups: ParallelGroups) -> list:
    """This rank's model chunks on groups.device: one, or `vpp` of them for the interleaved pipeline schedule
    (virtual stage v of pipeline rank r holds layer block v * pp + r: the embedding is in the very first,
    the output layer in the very last)."""
    first, last = groups.pp_rank == 0, groups.pp_rank == groups.pp_size - 1
    if parallel.vpp is None:
        return [build_gpt_model(hf, model, parallel, pre_process=first, post_process=last, device=groups.device)]
    return [build_gpt_model(hf, model, parallel, pre_process=first and v == 0,
                            post_process=last and v == parallel.vpp - 1, vp_stage=v, device=groups.device)
            for v in range(parallel.vpp)]
