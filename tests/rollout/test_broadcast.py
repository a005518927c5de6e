"""The broadcast refit transport's wire protocol (no vLLM): one sender and its receivers on a group of
their own built from a TCPStore (as the trainer rank and an engine's TP workers are): gloo with three CPU
processes, NCCL with one GPU per process where there are enough GPUs."""
import os

import pytest
import torch

from dist_utils import run_distributed


def _buckets():
    g = torch.Generator().manual_seed(0)
    return [
        [("a.weight", torch.randn(7, 3, generator=g)), ("a.bias", torch.randn(3, generator=g).to(torch.bfloat16))],
        [],  # skipped, not sent
        [("b.weight", torch.randn(5, 1, 2, generator=g).to(torch.float16)), ("c", torch.arange(9).view(3, 3))],
    ]


def _rank_fn(rank, device="cpu", fail_after=None):
    from megatron_mcpo.rollout.broadcast import WeightStreamAborted, receive_buckets, rendezvous, send_buckets

    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    group = rendezvous("127.0.0.1", int(os.environ["MASTER_PORT"]) + 1, rank, int(os.environ["WORLD_SIZE"]), dev, timeout_s=60)
    if rank == 0:
        def produce():
            for i, bucket in enumerate(_buckets()):
                if i == fail_after:
                    raise OSError("gather failed")
                yield [(n, t.to(dev)) for n, t in bucket]
        try:
            return {"sent": send_buckets(group, produce(), dev)}
        except OSError as e:
            return {"error": str(e)}
    received = []
    try:
        for name, t in receive_buckets(group, dev):
            assert t.device == dev
            received.append((name, t.cpu()))
    except WeightStreamAborted:
        return {"received": received, "aborted": True}
    return {"received": received, "aborted": False}


_NCCL = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="NCCL needs 2 GPUs")])


@pytest.mark.parametrize("device", ["cpu", _NCCL])
def test_receivers_get_every_tensor_bit_exact_in_order(device):
    world = 3 if device == "cpu" else 2
    sender, *receivers = run_distributed(_rank_fn, world_size=world, timeout=300, device=device)
    expected = [nt for bucket in _buckets() for nt in bucket]
    assert sender["sent"] == sum(t.nbytes for _, t in expected)
    for r in receivers:
        assert not r["aborted"] and [n for n, _ in r["received"]] == [n for n, _ in expected]
        for (_, got), (_, want) in zip(r["received"], expected):
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("fail_after", [0, 2])
def test_a_failing_sender_aborts_the_receivers(fail_after):
    sender, *receivers = run_distributed(_rank_fn, world_size=3, timeout=300, fail_after=fail_after)
    assert sender == {"error": "gather failed"}
    for r in receivers:
        assert r["aborted"] and len(r["received"]) == (0 if fail_after == 0 else 2)
