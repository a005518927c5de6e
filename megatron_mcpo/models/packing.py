"""Sequence packing: a right-padded micro-batch <-> one packed row, and the attention inputs for it.

A micro-batch of right-padded rows tokens [b, s], row i holding l_i real tokens (prompt + response,
left-aligned), becomes one row [1, T]:
  packed = tokens[0, :l_0] ‖ tokens[1, :l_1] ‖ … ‖ tokens[b-1, :l_{b-1}] ‖ pad,
T = max(Σ_i l_i rounded up to `multiple`, min_length). The tail padding (if any) is one extra segment,
so the segment boundaries cu_seqlens = [0, l_0, l_0+l_1, …, Σ l_i (, T)] always end at T and no real
sequence carries padding (cu_seqlens_padded == cu_seqlens, which keeps TE's flash-attention backend
eligible). Per-token results of the packed row map back to [b, s] with `PackedLayout.unpack`, so every
loss keeps seeing the padded layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def sequence_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """l_i = 1 + the index of row i's last response token (prompt and response are left-aligned, so
    nothing after it can influence a response token); rows without a response token keep 1 token.

    response_mask: [b, s] bool. Returns [b] int64 on the mask's device.
    """
    if response_mask.dim() != 2:
        raise ValueError(f"sequence_lengths: response_mask must be [b, s], got shape {tuple(response_mask.shape)}")
    s = response_mask.shape[1]
    positions = torch.arange(1, s + 1, device=response_mask.device)
    return (response_mask.long() * positions).amax(dim=1).clamp(min=1)


def packed_length(lengths: torch.Tensor, multiple: int = 1) -> int:
    """Σ l_i rounded up to a multiple of `multiple` (the T `pack` uses when min_length is smaller)."""
    total = int(lengths.sum())
    return -(-total // multiple) * multiple


@dataclass
class PackedLayout:
    """Where each token of a padded micro-batch [b, s] sits in its packed row [1, T].

    tokens, position_ids: [1, T] int64 (positions restart at 0 in every segment).
    cu_seqlens: [n_seg + 1] int32, segment boundaries (the b sequences, then the tail pad if T > Σ l_i).
    max_seqlen: the longest segment. index: [b, s] int64, packed position of tokens[i, t] (clamped into
    the row where t >= l_i). valid: [b, s] bool, t < l_i.
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    index: torch.Tensor
    valid: torch.Tensor

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def unpack(self, packed: torch.Tensor, drop_first: bool = False) -> torch.Tensor:
        """Packed per-token values [1, T, *rest] -> [b, s, *rest], 0 where t >= l_i.

        drop_first also zeroes t = 0 of every row: for next-token quantities (log-prob, entropy) the
        packed value at a sequence start was predicted from the previous sequence's last token.
        Differentiable: gradients reach only the packed positions that were kept.
        """
        if packed.shape[:2] != (1, self.length):
            raise ValueError(f"unpack: expected packed values of shape [1, {self.length}, ...], got {tuple(packed.shape)}")
        keep = self.valid
        if drop_first:
            keep = keep.clone()
            keep[:, 0] = False
        out = packed[0][self.index]
        keep = keep.view(*keep.shape, *([1] * (out.dim() - 2)))
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))


def pack(tokens: torch.Tensor, lengths: torch.Tensor, multiple: int = 1, min_length: int = 0) -> PackedLayout:
    """Pack the first lengths[i] tokens of each row of tokens [b, s] into one row (see the module doc).

    lengths: [b] ints in [1, s]. multiple: T is a multiple of this (sequence-parallel / FP8 shapes).
    min_length: pad T up to at least this (one packed length for every micro-batch of a pipeline).
    """
    if tokens.dim() != 2:
        raise ValueError(f"pack: tokens must be [b, s], got shape {tuple(tokens.shape)}")
    b, s = tokens.shape
    lens = [int(x) for x in lengths.tolist()]
    if len(lens) != b:
        raise ValueError(f"pack: {len(lens)} lengths for {b} rows")
    if any(not 1 <= x <= s for x in lens):
        raise ValueError(f"pack: every length must be in [1, {s}], got {lens}")
    if multiple < 1:
        raise ValueError(f"pack: multiple must be >= 1, got {multiple}")
    total = sum(lens)
    T = max(packed_length(lengths, multiple), min_length)
    segments = lens + ([T - total] if T > total else [])
    device = tokens.device
    cu = [0]
    for n in segments:
        cu.append(cu[-1] + n)
    lens_t = torch.tensor(lens, device=device)
    starts = torch.tensor(cu[:b], device=device)
    t = torch.arange(s, device=device)
    valid = t.unsqueeze(0) < lens_t.unsqueeze(1)
    index = (starts.unsqueeze(1) + t.unsqueeze(0)).clamp(max=T - 1)
    packed = torch.zeros(T, dtype=tokens.dtype, device=device)
    packed[index[valid]] = tokens[valid]
    seg_starts = torch.tensor(cu[:-1], device=device)
    seg_lens = torch.tensor(segments, device=device)
    position_ids = torch.arange(T, device=device) - torch.repeat_interleave(seg_starts, seg_lens)
    return PackedLayout(
        tokens=packed.unsqueeze(0),
        position_ids=position_ids.unsqueeze(0),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
        max_seqlen=max(segments),
        index=index,
        valid=valid,
    )


def block_causal_mask(layout: PackedLayout) -> torch.Tensor:
    """[1, 1, T, T] bool, True = masked (megatron's attention_mask_func convention): query j sees key k
    iff k <= j and both lie in the same segment. For attention implementations without THD support."""
    T = layout.length
    cu = layout.cu_seqlens.long()
    segment = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu[1:] - cu[:-1])
    pos = torch.arange(T, device=cu.device)
    allowed = (segment.unsqueeze(1) == segment.unsqueeze(0)) & (pos.unsqueeze(0) <= pos.unsqueeze(1))
    return (~allowed).view(1, 1, T, T)


def thd_packed_seq_params(layout: PackedLayout):
    """megatron's PackedSeqParams for the THD format (Transformer Engine attention, per-segment RoPE)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = layout.cu_seqlens
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        cu_seqlens_q_padded=cu,
        cu_seqlens_kv_padded=cu,
        max_seqlen_q=layout.max_seqlen,
        max_seqlen_kv=layout.max_seqlen,
    )
