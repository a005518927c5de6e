"""Single-GPU train step of a ~1B Megatron model (local layer spec, bf16): tokens/s and MFU, next to the
same GPU's measured bf16 matmul rate in the same run.

    python benchmarks/train_step_gpu.py [--steps 10] [--micro-batches 4] [--seq-len 2048] [--out PATH]
    python benchmarks/train_step_gpu.py --preset tiny --device cpu   # a smoke run of the same code path

Model FLOPs per trained token (no recompute; forward x3 for forward + backward):
  6 * (P_layers + V * h)  +  6 * L * s * h      (the second term: QK^T and AV under a causal mask, s/2 keys
                                                 on average, 2 matmuls x 2 FLOPs x 3)
MFU = model FLOPs/s / 989e12 (H100/H200 SXM dense bf16); also reported against the measured matmul rate.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM, dense
PRESETS = {
    # Llama-3.2-1B's shape (1.24B parameters with the tied embedding), randomly initialised.
    "1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "tiny": dict(model_type="llama", vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
}
COMMON = dict(hidden_act="silu", max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
              attention_bias=False, mlp_bias=False)


def model_flops_per_token(hf: dict, seq_len: int) -> float:
    h, L, V = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    q = hf["num_attention_heads"] * hf["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * hf["intermediate_size"]
    return 6 * (L * per_layer + V * h) + 6 * L * seq_len * q


def matmul_flops_per_s(device: torch.device, n: int, repeats: int = 10) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_step_gpu: no CUDA device (use --device cpu --preset tiny for a smoke run)")
    if args.device == "cuda":  # fp32 matmuls stay fp32: the bf16 model runs bf16 GEMMs either way
        torch.backends.cuda.matmul.allow_tf32 = False
    from megatron_mcpo.config import Config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.train_step import split_microbatches, train_step

    hf = {**PRESETS[args.preset], **COMMON}
    cfg = Config()
    cfg.run.device = args.device
    cfg.model.params_dtype = "bf16" if args.device == "cuda" else "fp32"
    cfg.model.transformer_impl = "local"  # the GPU baseline; TE is measured separately when installed
    cfg.optimizer.lr = 1e-5
    groups = init_distributed(device=args.device)
    state = setup_train_state(cfg, hf, groups)
    n_params = sum(p.numel() for p in state.policy.parameters())
    dev = groups.device
    n_seqs = args.micro_batches * args.micro_batch_size
    g = torch.Generator().manual_seed(0)
    batch = {"tokens": torch.randint(0, hf["vocab_size"], (n_seqs, args.seq_len), generator=g).to(dev),
             "response_mask": torch.ones(n_seqs, args.seq_len, dtype=torch.bool, device=dev)}
    total = float(batch["response_mask"].sum())

    def loss_fn(out, mb):
        loss = -(out.logprobs * mb["response_mask"]).sum() / total
        return loss, {"loss": loss.detach()}

    times = []
    for i in range(args.steps + 2):  # two warm-up steps
        _sync(dev)
        t = time.perf_counter()
        train_step(state, split_microbatches(batch, args.micro_batch_size), loss_fn)
        _sync(dev)
        if i >= 2:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens_per_s = n_seqs * args.seq_len / step_s
    flops = model_flops_per_token(hf, args.seq_len) * tokens_per_s
    matmul = matmul_flops_per_s(dev, 8192 if dev.type == "cuda" else 1024)
    result = {
        "benchmark": "train_step_gpu",
        "model": {"preset": args.preset, "parameters": n_params, **{k: hf[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}},
        "setup": {"device": args.device, "params_dtype": cfg.model.params_dtype, "transformer_impl": "local",
                  "optimizer": "adam (megatron, fp32 main params)", "micro_batches": args.micro_batches,
                  "micro_batch_size": args.micro_batch_size, "seq_len": args.seq_len},
        "step_s_median": round(step_s, 4), "steps": len(times),
        "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops_per_s": round(flops / 1e12, 2),
        "mfu_vs_989_tflops": round(flops / PEAK_BF16_FLOPS, 4),
        "matmul_tflops_per_s_same_run": round(matmul / 1e12, 2),
        "ratio_to_matmul": round(flops / matmul, 4),
    }
    if dev.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"train_step_{args.device}_{args.preset}.json")
    write_result(out, result)
    print(result)


if __name__ == "__main__":
    main()
