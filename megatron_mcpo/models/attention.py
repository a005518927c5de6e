"""Core attention on torch's scaled_dot_product_attention for megatron-core's local layer spec.

`SDPAttention` is a drop-in for megatron's `DotProductAttention` (same constructor and forward): it
takes query [sq, b, np, hn] and key/value [sk, b, ng, hn] (this TP rank's heads; ng divides np) and
returns the context [sq, b, np * hn]. With heads h, dimension d and the softmax scale c (1/sqrt(hn)
unless the config sets one):
  out = softmax(c · q kᵀ + M) v,   M = -inf where masked,
computed by F.scaled_dot_product_attention: flash/memory-efficient kernels on CUDA, the fused flash
kernel on CPU, never a materialised [b, np, sq, sk] score tensor (megatron's local module builds one).

Masks, matching megatron's semantics:
- no attention_mask: causal (right-padded batches need no mask: padding comes after every real token);
- attention_mask [b|1, 1, sq, sk] bool, True = masked (megatron's convention): applied as given;
- a packed row (`SegmentedSeqParams`, q/k/v [T, 1, ·, hn]): causal attention inside each segment of
  cu_seqlens, run as one SDPA call per segment, so no [T, T] block-diagonal mask is ever built.
  RoPE stays megatron's sbhd RoPE at the row's running positions (qkv_format "sbhd"), exactly as with
  the dense block mask; the segment boundaries travel on the host, so no layer synchronises the GPU.

GQA: SDPA's enable_gqa (no copies of key/value), except fp32 on CUDA, where only the math kernel
supports it and repeating key/value keeps the memory-efficient kernel eligible. Attention dropout
(training only) runs inside megatron's model-parallel RNG fork like the local module's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention


@dataclasses.dataclass
class SegmentedSeqParams(PackedSeqParams):
    """A packed row kept in sbhd layout: `segments` are the host-side cu_seqlens [0, l_0, …, T].

    max_seqlen_q/kv are the row length T: megatron sizes its RoPE table from them, and RoPE runs at
    the row's running positions (relative, so per-segment scores are unchanged up to rounding).
    """

    segments: tuple = ()


def segmented_seq_params(cu_seqlens: torch.Tensor) -> SegmentedSeqParams:
    """The packed-row parameters for `SDPAttention` from cu_seqlens [n_seg + 1] (ending at T)."""
    bounds = tuple(int(x) for x in cu_seqlens.tolist())  # one host copy per forward, not per layer
    T = bounds[-1]
    return SegmentedSeqParams(qkv_format="sbhd", max_seqlen_q=T, max_seqlen_kv=T, segments=bounds)


def with_sdpa_core_attention(spec):
    """megatron's local GPT layer spec with `SDPAttention` as the self-attention's core attention."""
    attn = spec.submodules.self_attention
    submodules = dataclasses.replace(attn.submodules, core_attention=SDPAttention)
    layer = dataclasses.replace(spec.submodules, self_attention=dataclasses.replace(attn, submodules=submodules))
    return dataclasses.replace(spec, submodules=layer)


def _sdpa(q, k, v, *, causal: bool, mask: Optional[torch.Tensor], dropout: float, scale: float) -> torch.Tensor:
    """SDPA on sbhd tensors: q [sq, b, np, hn], k/v [sk, b, ng, hn] -> [sq, b, np, hn]."""
    q, k, v = (x.permute(1, 2, 0, 3) for x in (q, k, v))  # [b, heads, s, hn] views
    groups = q.shape[1] // k.shape[1]
    native_gqa = groups > 1 and not (q.is_cuda and q.dtype == torch.float32)
    if groups > 1 and not native_gqa:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale, enable_gqa=native_gqa
    )
    return out.permute(2, 0, 1, 3)


class SDPAttention(MegatronModule):
    """megatron `DotProductAttention`'s interface on torch SDPA (see the module doc)."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention: context parallelism needs Transformer Engine's attention")
        if config.softmax_type != "vanilla":
            raise ValueError(f"SDPAttention: softmax_type '{config.softmax_type}' is not supported")
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
            raise ValueError("SDPAttention: sliding-window attention is not supported")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        # apply_query_key_layer_scaling divides the scores by the layer number and multiplies them back
        # inside megatron's fp32 softmax (an fp16 range guard): the net scale is this one.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported")
        if packed_seq_params is not None and not isinstance(packed_seq_params, SegmentedSeqParams):
            raise ValueError("SDPAttention: THD packed sequences need Transformer Engine; pass SegmentedSeqParams")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        dropout = self.dropout_p if self.training else 0.0
        if dropout > 0 and not self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = self._attend(query, key, value, attention_mask, mask_type, packed_seq_params, dropout)
        else:
            out = self._attend(query, key, value, attention_mask, mask_type, packed_seq_params, dropout)
        sq, b = out.shape[:2]
        return out.reshape(sq, b, -1)

    def _attend(self, q, k, v, attention_mask, mask_type, packed, dropout) -> torch.Tensor:
        kw = dict(dropout=dropout, scale=self.softmax_scale)
        if packed is not None:
            if attention_mask is not None or q.shape[1] != 1:
                raise ValueError("SDPAttention: a packed row is [T, 1, heads, hn] and takes no attention_mask")
            bounds = packed.segments
            if bounds[-1] != q.shape[0]:
                raise ValueError(f"SDPAttention: segments end at {bounds[-1]}, the row has {q.shape[0]} tokens")
            # split (not slicing): its backward concatenates the segment gradients once, where each
            # slice's backward would materialise a zero-filled full-row gradient.
            lengths = [e - a for a, e in zip(bounds[:-1], bounds[1:])]
            parts = [_sdpa(*seg, causal=True, mask=None, **kw)
                     for seg in zip(q.split(lengths), k.split(lengths), v.split(lengths))]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if attention_mask is not None:
            return _sdpa(q, k, v, causal=False, mask=~attention_mask, **kw)
        if mask_type == AttnMaskType.causal:
            if q.shape[0] != k.shape[0]:
                raise ValueError("SDPAttention: causal attention without a mask needs sq == sk")
            return _sdpa(q, k, v, causal=True, mask=None, **kw)
        if mask_type == AttnMaskType.no_mask:
            return _sdpa(q, k, v, causal=False, mask=None, **kw)
        raise ValueError(f"SDPAttention: attn_mask_type {mask_type} needs an attention_mask")
