"""Weight broadcast from a trainer rank to rollout-engine workers in other processes (the "broadcast"
refit transport): gloo on CPU, NCCL on GPU, over a process group of its own.

The group is built directly on a TCPStore (rank 0 = the trainer rank that hosts the engine, ranks
1..W-1 = the engine's workers, one per rollout TP rank), not through `init_process_group`: the trainer
already has its default group, and the engine workers have vLLM's.

Wire format, per bucket: header length (int64 [1]) -> pickled header (uint8) -> one flat uint8 buffer
holding every tensor of the bucket, each at an offset aligned to 64 bytes. Every worker receives every
full (HF-layout) tensor and slices its own TP shard when it loads. A zero length ends the stream; a
negative one aborts it (the sender failed mid-refit), so the receivers raise instead of waiting forever.
"""
from __future__ import annotations

import datetime
import pickle
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

Named = tuple[str, torch.Tensor]
_ALIGN = 64
_END, _ABORT = 0, -1


class WeightStreamAborted(RuntimeError):
    pass


def rendezvous(host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float = 600.0):
    """This process's handle on the broadcast group; rank 0 hosts the store. Blocks until all ranks join."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("mcpo_weight_broadcast", store)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def _broadcast(group, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def _send_length(group, n: int, device: torch.device) -> None:
    _broadcast(group, torch.tensor([n], dtype=torch.int64, device=device))


def send_buckets(group, buckets: Iterable[list[Named]], device: torch.device) -> int:
    """Root side: broadcast every bucket, then the end marker; returns the payload bytes. If producing a
    bucket fails, the receivers get the abort marker and the original error propagates here."""
    sent = 0
    try:
        for bucket in buckets:
            if not bucket:
                continue
            entries, offset = [], 0
            for name, t in bucket:
                entries.append((name, t.dtype, tuple(t.shape), offset, t.nbytes))
                offset += -(-t.nbytes // _ALIGN) * _ALIGN
            flat = torch.empty(offset, dtype=torch.uint8, device=device)
            for (_, t), (_, _, _, start, nbytes) in zip(bucket, entries):
                flat[start : start + nbytes].view(t.dtype).view(t.shape).copy_(t)
            header = pickle.dumps({"size": offset, "tensors": entries})
            payload = torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device)
            _send_length(group, payload.numel(), device)
            _broadcast(group, payload)
            _broadcast(group, flat)
            sent += sum(t.nbytes for _, t in bucket)
    except BaseException:
        _send_length(group, _ABORT, device)
        raise
    _send_length(group, _END, device)
    return sent


def receive_buckets(group, device: torch.device) -> Iterator[Named]:
    """Receiver side: yield (name, tensor) in the sender's order until the end marker. The tensors are views
    of one receive buffer per bucket (valid until the caller drops them)."""
    while True:
        length = torch.empty(1, dtype=torch.int64, device=device)
        _broadcast(group, length)
        n = int(length.item())
        if n == _END:
            return
        if n == _ABORT:
            raise WeightStreamAborted("refit: the trainer aborted the weight stream (see the trainer's error)")
        payload = torch.empty(n, dtype=torch.uint8, device=device)
        _broadcast(group, payload)
        header = pickle.loads(payload.cpu().numpy().tobytes())  # from our own trainer rank, same job
        flat = torch.empty(header["size"], dtype=torch.uint8, device=device)
        _broadcast(group, flat)
        for name, dtype, shape, start, nbytes in header["tensors"]:
            yield name, flat[start : start + nbytes].view(dtype).view(shape)
