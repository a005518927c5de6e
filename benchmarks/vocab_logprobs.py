"""Peak memory and time of per-token log-probs + entropy (forward and backward) over a large vocabulary.

Variants, on the same bf16 logits [N, V]:
  chunked       models/vocab_parallel.py with its default chunk (fp32 passes over chunks of tokens)
  single_chunk  the same function with one chunk of all N tokens (the whole [N, V] fp32 block at once)
  autograd      plain torch: log_softmax in fp32, gather, entropy, autograd backward (what an
                unfused implementation holds: fp32 log-probs and probabilities saved for backward)
Each variant runs in its own process. Memory on CPU: peak RSS above the RSS after the inputs exist
(Linux returns large freed blocks to the OS, so RSS follows live tensors); on CUDA:
max_memory_allocated above the allocation after the inputs exist. Time: median of `--reps` runs.

  python benchmarks/vocab_logprobs.py --device cpu --tokens 2048 --vocab 32768
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import write_result  # noqa: E402
from megatron_mcpo.models.vocab_parallel import default_chunk_tokens, vocab_parallel_logprobs_entropy  # noqa: E402

VARIANTS = ("chunked", "single_chunk", "autograd")


def _autograd(logits, labels):
    lp = torch.log_softmax(logits.float(), dim=-1)
    return lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(lp.exp() * lp).sum(-1)


def _run(variant: str, logits, labels):
    n = logits.shape[0]
    if variant == "autograd":
        logp, ent = _autograd(logits, labels)
    else:
        chunk = None if variant == "chunked" else n
        logp, ent = vocab_parallel_logprobs_entropy(logits, labels, 0, logits.shape[-1], chunk_tokens=chunk)
    (logp.sum() - 0.01 * ent.sum()).backward()
    logits.grad = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(variant: str, device: str, tokens: int, vocab: int, reps: int) -> dict:
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(tokens, vocab, generator=g, device=dev, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g, device=dev)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base, high_before = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    _run(variant, logits, labels)
    _sync(dev)
    times = [time.perf_counter() - t0]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = high - base if high > high_before else None  # None: an earlier peak masks this one
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        _run(variant, logits, labels)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return {"peak_extra_mib": None if peak is None else round(peak / 2**20, 1),
            "seconds_median": round(statistics.median(times), 4), "seconds_all": [round(t, 4) for t in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.tokens, args.vocab, args.reps)))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--device", args.device, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--reps", str(args.reps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(variant, results[variant])
    logits_mib = args.tokens * args.vocab * 2 / 2**20
    result = {
        "setup": {"device": args.device, "tokens": args.tokens, "vocab": args.vocab, "logits_dtype": "bf16",
                  "logits_mib": round(logits_mib, 1), "chunk_tokens": default_chunk_tokens(args.vocab),
                  "fp32_full_block_mib": round(logits_mib * 2, 1)},
        "results": results,
        "note": "peak_extra_mib: memory above the inputs during forward+backward; the bf16 gradient itself "
                "is logits_mib of it for every variant",
    }
    write_result(args.out or f"benchmarks/results/vocab_logprobs_{args.device}.json", result)


if __name__ == "__main__":
    main()
