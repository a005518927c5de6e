"""SDPAttention (models/attention.py) equals a float64 softmax(c·q kᵀ + M) v reference, forward and
gradients, for causal, explicit-mask and packed-segment inputs with GQA; config selection of the backend.

Tolerance: 1e-10 absolute (float64 inputs through SDPA's math/flash kernels on CPU).
The model-level comparison against megatron's DotProductAttention (TP1/TP2/PP2, padded and packed) is
tests/distributed/test_attention_backends.py.
"""
import math

import pytest
import torch

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate

ATOL = 1e-10
SQ, B, NP, NG, HN = 11, 2, 4, 2, 8


def _config(**kw):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=NP * HN, num_attention_heads=NP, num_query_groups=NG,
                             kv_channels=HN, attention_dropout=kw.pop("attention_dropout", 0.0), **kw)


def _module(softmax_scale=None, **kw):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mcpo.models.attention import SDPAttention

    return SDPAttention(_config(**kw), layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
                        softmax_scale=softmax_scale)


def _qkv(sq=SQ, b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, b, NP, HN, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sq, b, NG, HN, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sq, b, NG, HN, generator=g, dtype=torch.float64, requires_grad=True)
    return q, k, v


def _reference(q, k, v, allowed):
    """Naive attention; allowed [sq, sk] (or [b, sq, sk]) True = attend. Returns [sq, b, np*hn]."""
    rep = NP // NG
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(HN)
    if allowed.dim() == 3:
        allowed = allowed.unsqueeze(1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def _check(out, ref, inputs):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * w).sum(), inputs)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=0)


def test_causal_gqa_matches_reference():
    q, k, v = _qkv()
    causal = torch.ones(SQ, SQ, dtype=torch.bool).tril()
    _check(_module()(q, k, v, None), _reference(q, k, v, causal), (q, k, v))


def test_explicit_mask_follows_megatron_convention():
    q, k, v = _qkv()
    masked = torch.rand(B, 1, SQ, SQ, generator=torch.Generator().manual_seed(1)) < 0.3  # True = masked
    masked[..., 0] = False  # every query sees a key
    _check(_module()(q, k, v, masked), _reference(q, k, v, ~masked[:, 0]), (q, k, v))


@pytest.mark.parametrize("bounds", [(0, 4, 5, 11), (0, 11), (0, 1, 2, 3, 10, 11)])
def test_packed_segments_match_block_diagonal_reference(bounds):
    from megatron_mcpo.models.attention import segmented_seq_params

    q, k, v = _qkv(b=1)
    segment = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.tensor(bounds).diff())
    pos = torch.arange(SQ)
    allowed = (segment[:, None] == segment[None, :]) & (pos[None, :] <= pos[:, None])
    params = segmented_seq_params(torch.tensor(bounds, dtype=torch.int32))
    assert params.segments == bounds and params.max_seqlen_q == SQ and params.qkv_format == "sbhd"
    _check(_module()(q, k, v, None, packed_seq_params=params), _reference(q, k, v, allowed), (q, k, v))


def test_packed_rejects_thd_and_wrong_bounds():
    from megatron.core.packed_seq_params import PackedSeqParams

    from megatron_mcpo.models.attention import segmented_seq_params

    q, k, v = _qkv(b=1)
    with pytest.raises(ValueError, match="THD"):
        _module()(q, k, v, None, packed_seq_params=PackedSeqParams(qkv_format="thd"))
    with pytest.raises(ValueError, match="segments end at 12"):
        _module()(q, k, v, None, packed_seq_params=segmented_seq_params(torch.tensor([0, 12])))


def test_dropout_only_in_training_inside_the_rng_fork(monkeypatch):
    import contextlib

    from megatron.core import tensor_parallel

    forks = []

    class Tracker:
        @contextlib.contextmanager
        def fork(self):
            forks.append(1)
            yield

    monkeypatch.setattr(tensor_parallel, "get_cuda_rng_tracker", lambda: Tracker())
    q, k, v = _qkv()
    m = _module(attention_dropout=0.5)
    m.eval()
    torch.testing.assert_close(m(q, k, v, None), _module()(q, k, v, None), atol=0, rtol=0)
    assert not forks
    m.train()
    out = m(q, k, v, None)
    assert forks and torch.isfinite(out).all()
    assert not torch.allclose(out, _module()(q, k, v, None))


def test_scale_from_config():
    q, k, v = _qkv()
    out = _module(softmax_scale=0.5)
    # softmax(0.5 q kᵀ) = softmax(c (q · 0.5 sqrt(hn)) kᵀ) with c = 1/sqrt(hn)
    ref = _module()(q * 0.5 * math.sqrt(HN), k, v, None)
    torch.testing.assert_close(out(q, k, v, None), ref, atol=ATOL, rtol=0)


def test_local_spec_gets_sdpa_unless_local_asked():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_mcpo.models.attention import SDPAttention, with_sdpa_core_attention

    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    new = with_sdpa_core_attention(spec)
    assert new.submodules.self_attention.submodules.core_attention is SDPAttention
    assert spec.submodules.self_attention.submodules.core_attention is DotProductAttention  # not mutated
    assert new.submodules.mlp is spec.submodules.mlp


@pytest.mark.parametrize("backend,te", [("auto", True), ("sdpa", False), ("local", False)])
def test_explicit_backend_selects_the_local_spec(backend, te, monkeypatch):
    from megatron_mcpo.models import provider, te_support

    monkeypatch.setattr(te_support, "available", lambda: True)
    cfg = load_config(overrides=[f"model.attention_backend={backend}"])
    assert provider.use_transformer_engine(cfg.model, "cuda") is te


@pytest.mark.parametrize(
    "overrides",
    [["model.transformer_impl=transformer_engine", "model.attention_backend=sdpa"],
     ["model.fp8=hybrid", "model.params_dtype=bf16", "model.attention_backend=local"]],
)
def test_attention_backend_validated_against_te(overrides):
    with pytest.raises(ConfigError, match=r"model\.(attention_backend|fp8).*(attention|TE)"):
        validate(load_config(overrides=overrides), world_size=1, cuda_available=True, te_available=True)
