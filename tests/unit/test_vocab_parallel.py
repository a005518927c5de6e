"""Vocab-parallel log-probs/entropy equal a full-vocab reference, values and gradients (float64)."""
import torch

from dist_utils import run_distributed
from megatron_mcpo.models.vocab_parallel import vocab_parallel_logprobs_entropy


def _reference(logits, labels, valid_vocab):
    z = logits[..., :valid_vocab]
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _inputs(seed=0, v_padded=16, valid=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, v_padded, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, valid, (3, 5), generator=g)
    w_lp = torch.randn(3, 5, generator=g, dtype=torch.float64)
    w_h = torch.randn(3, 5, generator=g, dtype=torch.float64)
    return logits, labels, w_lp, w_h, valid


def test_single_shard_matches_full_vocab_with_padding():
    logits, labels, w_lp, w_h, valid = _inputs()
    a = logits.clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs_entropy(a, labels, 0, valid)
    ((logp * w_lp).sum() + (ent * w_h).sum()).backward()
    b = logits.clone().requires_grad_()
    rlogp, rent = _reference(b, labels, valid)
    ((rlogp * w_lp).sum() + (rent * w_h).sum()).backward()
    torch.testing.assert_close(logp, rlogp.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, rent.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)
    assert torch.all(a.grad[..., valid:] == 0)  # padded rows get no gradient


def _shard_worker(rank):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    logits, labels, w_lp, w_h, valid = _inputs(seed=1)
    shard = logits.shape[-1] // 2
    local = logits[..., rank * shard : (rank + 1) * shard].clone().requires_grad_()
    logp, ent = vocab_parallel_logprobs_entropy(local, labels, rank * shard, valid, dist.group.WORLD)
    ((logp * w_lp).sum() + (ent * w_h).sum()).backward()
    return logp, ent, local.grad


def test_two_shards_on_gloo_match_full_vocab():
    results = run_distributed(_shard_worker, world_size=2, timeout=120)
    logits, labels, w_lp, w_h, valid = _inputs(seed=1)
    full = logits.clone().requires_grad_()
    rlogp, rent = _reference(full, labels, valid)
    ((rlogp * w_lp).sum() + (rent * w_h).sum()).backward()
    for logp, ent, _ in results:
        torch.testing.assert_close(logp, rlogp.float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(ent, rent.float(), atol=1e-6, rtol=0)
    grad = torch.cat([r[2] for r in results], dim=-1)
    torch.testing.assert_close(grad, full.grad, atol=1e-6, rtol=0)
