"""GPU checks of the kernels used without Transformer Engine (skipped without CUDA).

- SDPAttention's inputs (sbhd views, GQA) select a flash kernel in bf16, and SDPAttention on CUDA
  (bf16 flash, fp32 memory-efficient) matches a float64 reference, padded and packed, with gradients.
- megatron's torch.compile'd SwiGLU (bias_activation_fusion, on for CUDA runs) matches the unfused one.
- The chunked vocab log-prob/entropy keeps its peak memory at the logits-sized gradient plus two fp32
  chunk buffers, and matches float64.
Tolerances: bf16 outputs 2e-2 absolute + 2e-2 relative (bf16 rounding of O(1) values through flash);
fp32 1e-4 absolute (TF32 off); vocab values 1e-5 absolute, bf16 gradients 2^-8 relative + 1e-6.
"""
import math

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

S, B, NP, NG, HN = 256, 2, 8, 2, 64


def _attention():
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mcpo.models.attention import SDPAttention

    cfg = TransformerConfig(num_layers=1, hidden_size=NP * HN, num_attention_heads=NP, num_query_groups=NG,
                            kv_channels=HN, attention_dropout=0.0)
    return SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")


def _reference(q, k, v, allowed):
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v).reshape(q.shape[0], q.shape[1], -1)


def test_sdpa_selects_flash_for_bf16_gqa_views():
    from torch.nn.attention import SDPBackend

    x = torch.randn(S, B, NP, HN, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(S, B, NG, HN, device="cuda", dtype=torch.bfloat16)
    q, k = x.permute(1, 2, 0, 3), kv.permute(1, 2, 0, 3)  # the layout SDPAttention passes
    choice = torch._fused_sdp_choice(q, k, k, is_causal=True, enable_gqa=True)
    # flash (or cuDNN's flash-style kernel, which some torch versions rank first on Hopper)
    assert choice in (int(SDPBackend.FLASH_ATTENTION), int(SDPBackend.CUDNN_ATTENTION)), choice


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.bfloat16, 2e-2, 2e-2), (torch.float32, 1e-4, 0)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sdpa_attention_on_cuda_matches_float64(dtype, atol, rtol, packed):
    from megatron_mcpo.models.attention import segmented_seq_params

    torch.backends.cuda.matmul.allow_tf32 = False
    b = 1 if packed else B
    g = torch.Generator().manual_seed(0)
    q64, k64, v64 = (torch.randn(S, b, h, HN, generator=g, dtype=torch.float64) for h in (NP, NG, NG))
    pos = torch.arange(S)
    allowed = pos[None, :] <= pos[:, None]
    params = None
    if packed:
        bounds = (0, 100, 101, 230, S)
        seg = torch.repeat_interleave(torch.arange(4), torch.tensor(bounds).diff())
        allowed = allowed & (seg[:, None] == seg[None, :])
        params = segmented_seq_params(torch.tensor(bounds, dtype=torch.int32, device="cuda"))
    w = torch.randn(S, b, NP * HN, generator=g, dtype=torch.float64)
    ins = [x.clone().requires_grad_() for x in (q64, k64, v64)]
    ref = _reference(*ins, allowed)
    ref_grads = torch.autograd.grad((ref * w).sum(), ins)
    cuda_ins = [x.to("cuda", dtype).requires_grad_() for x in (q64, k64, v64)]
    out = _attention().cuda()(*cuda_ins, None, packed_seq_params=params)
    grads = torch.autograd.grad((out * w.to("cuda", dtype)).sum(), cuda_ins)
    torch.testing.assert_close(out.double().cpu(), ref, atol=atol, rtol=rtol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double().cpu(), want, atol=atol * 5, rtol=rtol)


def test_compiled_swiglu_matches_unfused():
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    x = torch.randn(128, 2, 2 * 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(128, 2, 512, device="cuda", dtype=torch.bfloat16)
    fused = bias_swiglu_impl(x, None)
    (g_fused,) = torch.autograd.grad((fused * w).sum(), x)
    x32 = x.detach().float().requires_grad_()
    a, c = x32.chunk(2, dim=-1)
    ref = F.silu(a) * c
    (g_ref,) = torch.autograd.grad((ref * w.float()).sum(), x32)
    torch.testing.assert_close(fused.float(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(g_fused.float(), g_ref, atol=2e-2, rtol=2e-2)


def test_chunked_vocab_logprobs_peak_memory_and_values():
    from megatron_mcpo.models.vocab_parallel import default_chunk_tokens, vocab_parallel_logprobs_entropy

    n, v, valid = 4096, 32768, 32000
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(n, v, generator=g, device="cuda") * 3).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, valid, (n,), generator=g, device="cuda")
    w_lp, w_h = torch.randn(2, n, generator=g, device="cuda", dtype=torch.float64)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logp, ent = vocab_parallel_logprobs_entropy(logits, labels, 0, valid)
    ((logp.double() * w_lp).sum() + (ent.double() * w_h).sum()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    chunk_bytes = default_chunk_tokens(v) * v * 4
    # the bf16 gradient (= the logits' size) + two fp32 chunk buffers + slack for per-token vectors
    assert peak <= logits.numel() * 2 + 2 * chunk_bytes + (32 << 20), peak
    z = logits.detach().double()[:, :valid].requires_grad_()
    lp_all = torch.log_softmax(z, dim=-1)
    rlogp = lp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    rent = -(lp_all.exp() * lp_all).sum(-1)
    ((rlogp * w_lp).sum() + (rent * w_h).sum()).backward()
    torch.testing.assert_close(logp.double(), rlogp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), rent, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.grad[:, :valid].double(), z.grad, atol=1e-6, rtol=2**-8)
    assert torch.all(logits.grad[:, valid:] == 0)
