"""PolicyModel: the Megatron GPT chunks of this rank, with the per-token quantities RL losses need.

For a micro-batch of right-padded sequences `tokens` [b, s] with `response_mask` [b, s] (True on
response tokens), the last pipeline stage yields, aligned with `tokens`:
  logprobs[b, t] = log π_T(tokens[b, t] | tokens[b, <t])   (0 at t = 0)
  entropy[b, t]  = H(π_T(· | tokens[b, <t]))                (0 at t = 0)
where π_T = softmax(logits / T) with T = `temperature`: the rollout temperature, so that old, new and
reference log-probs (and the ratio, the clip and the gradient A·(e_y − π_T)/T) are those of the
distribution the engine sampled from, as in verl. T = 1 gives the model's own distribution.
  pooled[b]      = Σ_t m[b,t] H_L[b,t] / Σ_t m[b,t]     (fp32, H_L = post-final-norm last-layer state)
Log-probs and entropy are computed vocab-parallel (padded-vocab rows masked); the pooled state is
reduced across the sequence-parallel and context-parallel shards. Right padding with the causal mask
needs no attention mask: padding comes after every real token.

With `sequence_packing` the micro-batch runs as one packed row [1, T] (models/packing.py): THD
PackedSeqParams where the attention supports them (Transformer Engine: per-sequence attention and
RoPE); with the SDPA core attention (models/attention.py) the row's segment boundaries, attended one
segment at a time; with megatron's unfused local attention a dense block-diagonal causal mask. The
last two apply RoPE at the packed row's running positions (relative: the same scores up to rounding).
Outputs are unpacked to [b, s], so the quantities above are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.models.packing import (
    PackedLayout,
    block_causal_mask,
    pack,
    packed_length,
    sequence_lengths,
    thd_packed_seq_params,
)
from megatron_mcpo.models.vocab_parallel import vocab_parallel_logprobs_entropy


@dataclass
class TokenOutputs:
    logprobs: torch.Tensor  # [b, s] fp32
    entropy: torch.Tensor  # [b, s] fp32
    pooled: torch.Tensor  # [b, d_model] fp32


def unwrap(chunk):
    """The GPTModel inside a (possibly DDP-wrapped) chunk."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


class _AllReduceSum(torch.autograd.Function):
    """Sum over a group; backward is the identity (each rank's loss uses the same total)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor, group=None) -> torch.Tensor:
    """h_i = Σ_t m_it H_it / Σ_t m_it in fp32. hidden [b, s, d], mask [b, s]; sums reduced over
    `group` when the sequence is sharded (CP/SP). Rows with an empty mask give 0."""
    m = mask.to(torch.float32)
    total = torch.einsum("bsd,bs->bd", hidden.float(), m)
    count = m.sum(dim=1)
    if group is not None and dist.get_world_size(group) > 1:
        total = _AllReduceSum.apply(total, group)
        count = _AllReduceSum.apply(count, group)
    return total / count.clamp(min=1.0).unsqueeze(-1)


class PolicyModel:
    """This rank's model chunks plus the forward plumbing shared by log-prob passes and training."""

    def __init__(self, chunks: list, hf_config: dict, groups: ParallelGroups, sequence_packing: bool = False,
                 temperature: float = 1.0):
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        from megatron_mcpo.models.attention import SDPAttention

        self.chunks = chunks
        self.hf_config = hf_config
        self.groups = groups
        self.valid_vocab = hf_config["vocab_size"]
        self.sequence_packing = sequence_packing  # read per schedule run by training/train_step.py
        if not temperature > 0:
            raise ValueError(f"PolicyModel: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        # megatron's local attention rejects PackedSeqParams; SDPA takes segment bounds; the TE spec THD.
        core_attention = unwrap(chunks[0]).decoder.layers[0].self_attention.core_attention
        self.packed_segments = isinstance(core_attention, SDPAttention)
        self.packed_thd = not isinstance(core_attention, (DotProductAttention, SDPAttention))
        self._hidden: dict[int, torch.Tensor] = {}
        for chunk in chunks:
            model = unwrap(chunk)
            if model.post_process:
                model.decoder.register_forward_hook(self._stash_hidden)

    def _stash_hidden(self, module, inputs, output):
        # TransformerBlock output after the final norm: [s, b, d] (sequence-sharded under SP).
        self._hidden[id(module)] = output[0] if isinstance(output, tuple) else output

    @property
    def config(self):
        return unwrap(self.chunks[0]).config

    def pack_microbatches(self, microbatches: list[dict]) -> list[PackedLayout]:
        """One packed layout per micro-batch. T is a multiple of 8 (FP8 GEMM shapes) times tp under
        sequence parallel (the sequence is split over TP ranks). With pipeline stages every micro-batch
        gets the longest T of the batch, so the p2p activation shape stays fixed: megatron's
        variable_seq_lengths instead exchanges shapes before every message, always as batched p2p,
        which provider.py turns off on gloo (the pipelines' messages must stay ordered)."""
        multiple = 8 * (self.groups.tp_size if self.config.sequence_parallel else 1)
        lengths = [sequence_lengths(mb["response_mask"]) for mb in microbatches]
        common = max(packed_length(n, multiple) for n in lengths) if self.groups.pp_size > 1 else 0
        return [pack(mb["tokens"], n, multiple, common) for mb, n in zip(microbatches, lengths)]

    def forward(self, chunk, tokens: torch.Tensor, packed: Optional[PackedLayout] = None) -> torch.Tensor:
        """Run one chunk; on the last stage returns vocab-sharded logits [b, s, V/tp] ([1, T, V/tp] packed)."""
        if packed is not None:
            if self.packed_thd:
                return chunk(packed.tokens, packed.position_ids, None, packed_seq_params=thd_packed_seq_params(packed))
            if self.packed_segments:
                from megatron_mcpo.models.attention import segmented_seq_params

                params = segmented_seq_params(packed.cu_seqlens)
                return chunk(packed.tokens, packed.position_ids, None, packed_seq_params=params)
            return chunk(packed.tokens, packed.position_ids, block_causal_mask(packed))
        b, s = tokens.shape
        position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, -1)
        return chunk(tokens, position_ids, None)

    def hidden_of(self, chunk) -> torch.Tensor:
        """The post-norm last-layer states [b, s_local, d] stashed by the last forward of `chunk`."""
        h = self._hidden.pop(id(unwrap(chunk).decoder))
        return h.transpose(0, 1)

    def token_outputs(
        self, logits: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor,
        packed: Optional[PackedLayout] = None,
    ) -> TokenOutputs:
        """Per-token log-probs/entropy aligned with `tokens` [b, s], and the pooled response state.
        logits/hidden are [b, s, ·], or [1, T, ·] for the packed row of `packed`."""
        g = self.groups
        row_tokens = tokens if packed is None else packed.tokens
        # Position t predicts token t+1. All positions go in (a slice logits[:, :-1] would be copied);
        # the last one's label is a wrap-around placeholder and its outputs are dropped (zero gradient).
        labels = torch.roll(row_tokens, -1, dims=1)
        local_v = logits.shape[-1]
        logp, ent = vocab_parallel_logprobs_entropy(  # π_T: the kernel divides each fp32 chunk by T (no copy)
            logits, labels, g.tp_rank * local_v, self.valid_vocab, g.tp if g.tp_size > 1 else None,
            temperature=self.temperature,
        )
        zero = torch.zeros_like(logp[:, :1])
        logprobs = torch.cat([zero, logp[:, :-1]], dim=1)
        entropy = torch.cat([zero, ent[:, :-1]], dim=1)
        if self.config.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(hidden.transpose(0, 1).contiguous()).transpose(0, 1)
        if packed is not None:
            logprobs = packed.unpack(logprobs, drop_first=True)
            entropy = packed.unpack(entropy, drop_first=True)
            hidden = packed.unpack(hidden)
        pooled = masked_mean_pool(hidden, response_mask, g.cp if g.cp_size > 1 else None)
        return TokenOutputs(logprobs=logprobs, entropy=entropy, pooled=pooled)

    def train(self, mode: bool = True) -> None:
        for c in self.chunks:
            c.train(mode)

    def parameters(self):
        for c in self.chunks:
            yield from c.parameters()
