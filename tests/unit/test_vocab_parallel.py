"""Vocab-parallel log-probs/entropy equal a full-vocab float64 log_softmax reference, values and
gradients, for any token chunking, sharded over gloo, and with bf16 logits.

Tolerances: 1e-6 absolute for fp32/float64 logits (the function computes in fp32). bf16 logits: values
1e-5 absolute (fp32 math on exactly representable inputs); gradients are returned in bf16, so
2^-8 relative (bf16 rounding) plus 1e-6 absolute against the float64 gradient of the same inputs.
"""
import pytest
import torch

from dist_utils import run_distributed
from megatron_mcpo.models.vocab_parallel import default_chunk_tokens, vocab_parallel_logprobs_entropy

CHUNKS = [None, 1, 2, 4, 7, 15, 64]  # 15 tokens: most do not divide it


def _reference(logits, labels, valid_vocab):
    z = logits[..., :valid_vocab].double()
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _inputs(seed=0, v_padded=16, valid=13, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 5, v_padded, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, valid, (3, 5), generator=g)
    w_lp = torch.randn(3, 5, generator=g, dtype=torch.float64)
    w_h = torch.randn(3, 5, generator=g, dtype=torch.float64)
    return logits, labels, w_lp, w_h, valid


def _loss(logp, ent, w_lp, w_h):
    return (logp.double() * w_lp).sum() + (ent.double() * w_h).sum()


def _reference_grad(logits, labels, w_lp, w_h, valid, temperature=1.0):
    full = logits.double().requires_grad_()
    rlogp, rent = _reference(full / temperature, labels, valid)
    _loss(rlogp, rent, w_lp, w_h).backward()
    return rlogp, rent, full.grad


@pytest.mark.parametrize("chunk", CHUNKS)
def test_single_shard_matches_full_vocab_with_padding(chunk):
    logits, labels, w_lp, w_h, valid = _inputs()
    a = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs_entropy(a, labels, 0, valid, chunk_tokens=chunk)
    _loss(logp, ent, w_lp, w_h).backward()
    rlogp, rent, rgrad = _reference_grad(logits, labels, w_lp, w_h, valid)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == labels.shape
    torch.testing.assert_close(logp, rlogp.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, rent.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad, rgrad, atol=1e-6, rtol=0)
    assert torch.all(a.grad[..., valid:] == 0)  # padded columns get no gradient


@pytest.mark.parametrize("temperature", [0.6, 1.7])
@pytest.mark.parametrize("chunk", [None, 4])
def test_temperature_is_softmax_of_scaled_logits(chunk, temperature):
    """logits / T inside the kernel: the float64 reference of log_softmax(x / T), gradients w.r.t. x."""
    logits, labels, w_lp, w_h, valid = _inputs(seed=5)
    a = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs_entropy(a, labels, 0, valid, chunk_tokens=chunk, temperature=temperature)
    _loss(logp, ent, w_lp, w_h).backward()
    rlogp, rent, rgrad = _reference_grad(logits, labels, w_lp, w_h, valid, temperature)
    torch.testing.assert_close(logp, rlogp.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, rent.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad, rgrad, atol=1e-6, rtol=0)
    assert torch.equal(a.detach(), logits)  # no scaled copy written back
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs_entropy(a, labels, 0, valid, temperature=0.0)


def test_fp32_logits_are_not_modified_and_strided_input_works():
    logits, labels, w_lp, w_h, valid = _inputs(seed=2, dtype=torch.float32)
    base = logits.clone().requires_grad_()
    sliced = base[:, :-1]  # non-contiguous: copied once inside
    logp, ent = vocab_parallel_logprobs_entropy(sliced, labels[:, :-1], 0, valid, chunk_tokens=3)
    _loss(logp, ent, w_lp[:, :-1], w_h[:, :-1]).backward()
    assert torch.equal(base.detach(), logits)  # fp32 chunks are copies, never the caller's logits
    _, _, rgrad = _reference_grad(logits[:, :-1], labels[:, :-1], w_lp[:, :-1], w_h[:, :-1], valid)
    torch.testing.assert_close(base.grad[:, :-1], rgrad.float(), atol=1e-6, rtol=0)
    assert torch.all(base.grad[:, -1] == 0)


def test_only_the_logits_and_per_token_vectors_are_saved():
    """No fp32 [tokens, V] tensor survives to backward: the saved tensors are the input logits (shared
    storage, their own dtype) and vectors of one value per token."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 40, 256, generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 250, (2, 40), generator=g)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, ent = vocab_parallel_logprobs_entropy(logits, labels, 0, 250, chunk_tokens=16)
    big = [t for t in saved if t.numel() >= 80]
    assert len(big) == 1 + 4  # the logits; idx, local, lse, entropy (one per token)
    assert big[0].data_ptr() == logits.data_ptr() and big[0].dtype == torch.bfloat16
    assert all(t.numel() == 80 for t in big[1:])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_logits(temperature):
    """At T != 1 the scaling happens in fp32 (no bf16 rounding of logits / T): the same tolerances."""
    logits, labels, w_lp, w_h, valid = _inputs(seed=3, dtype=torch.bfloat16)
    a = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs_entropy(a, labels, 0, valid, chunk_tokens=4, temperature=temperature)
    _loss(logp, ent, w_lp, w_h).backward()
    rlogp, rent, rgrad = _reference_grad(logits, labels, w_lp, w_h, valid, temperature)
    torch.testing.assert_close(logp, rlogp.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, rent.float(), atol=1e-5, rtol=0)
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad.double(), rgrad, atol=1e-6, rtol=2**-8)


def test_default_chunk_bounds_the_fp32_buffer():
    assert default_chunk_tokens(128 * 1024) == 512
    assert default_chunk_tokens(1024) == 65536
    with pytest.raises(ValueError, match="chunk_tokens"):
        vocab_parallel_logprobs_entropy(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 0, 4, chunk_tokens=0)


def _shard_worker(rank, valid, chunks, temperature=1.0):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    logits, labels, w_lp, w_h, _ = _inputs(seed=1, v_padded=32, valid=valid)
    shard = logits.shape[-1] // 2
    out = []
    for chunk in chunks:
        local = logits[..., rank * shard : (rank + 1) * shard].clone().requires_grad_()
        logp, ent = vocab_parallel_logprobs_entropy(local, labels, rank * shard, valid, dist.group.WORLD, chunk,
                                                    temperature=temperature)
        _loss(logp, ent, w_lp, w_h).backward()
        out.append((logp, ent, local.grad))
    return out


@pytest.mark.parametrize("valid,temperature", [(13, 1.0), (21, 1.0), (21, 0.6)],
                         ids=["rank1_all_padding", "rank1_part_padding", "tempered"])
def test_two_shards_on_gloo_match_full_vocab(valid, temperature):
    chunks = [None, 2, 4, 7]
    results = run_distributed(_shard_worker, world_size=2, timeout=300, valid=valid, chunks=chunks,
                              temperature=temperature)
    logits, labels, w_lp, w_h, _ = _inputs(seed=1, v_padded=32, valid=valid)
    rlogp, rent, rgrad = _reference_grad(logits, labels, w_lp, w_h, valid, temperature)
    rtol = 0 if temperature == 1.0 else 1e-6  # x / 0.6 grows the values 1.7x: fp32 rounding is relative
    for i in range(len(chunks)):
        for r in results:
            logp, ent, _ = r[i]
            torch.testing.assert_close(logp, rlogp.float(), atol=1e-6, rtol=rtol)
            torch.testing.assert_close(ent, rent.float(), atol=1e-6, rtol=rtol)
        grad = torch.cat([r[i][2] for r in results], dim=-1)
        torch.testing.assert_close(grad, rgrad, atol=1e-6, rtol=rtol)
