"""One training step of a Llama-3.2-1B-shaped model: our Megatron step next to the plain HF transformers
model, in the same run, same batch, sequence length, precision and optimizer family.

    python benchmarks/train_step_gpu.py [--steps 5] [--micro-batches 4] [--micro-batch-sizes 1,4]
                                        [--seq-len 2048] [--num-layers N] [--profile-dir DIR] [--out PATH]
    python benchmarks/train_step_gpu.py --preset tiny --device cpu   # the smoke run of the same code (< 1 min)

Systems (each built, measured at every micro-batch size, then freed before the next; HF first, so
nothing of Megatron's process-wide state is resident while the peers are measured):
  hf_amp   LlamaForCausalLM (attn_implementation="sdpa"), fp32 master weights and gradients, bf16 autocast,
           fused torch AdamW: the same precision recipe as Megatron's bf16 (fp32 main params and grads,
           fp32 Adam states) — compare memory against this one.
  hf_bf16  the same model held in bf16 (parameters, gradients and Adam states), fused AdamW: the fastest
           and smallest plain-HF set-up, reported beside it.
  ours     megatron_mcpo's train step (training/train_step.py, the model the provider builds for this
           device: TE where installed, else the local spec), bf16 params with fp32 main params, Adam.
Loss: ours -Σ log π(token)/N over every token (the RL loss path: vocab-parallel log-probs and entropy);
the peers HF's own causal-LM loss (labels = tokens). On CPU everything runs fp32 (hf_bf16 in bf16).

Model FLOPs per trained token (no recompute; forward x3 for forward + backward):
  6 * (P_layers + V * h)  +  6 * L * s * q      (the second term: QK^T and AV under a causal mask, s/2 keys
                                                 on average, 2 matmuls x 2 FLOPs x 3; q = heads * head_dim)
MFU = model FLOPs/s / 989e12 (H100/H200 SXM dense bf16), and against a bf16 matmul rate measured in the run.
Activation memory: the bytes each system's forward saves for backward per micro-batch (saved_for_backward()),
by dtype, on any device: the part of the peak that grows with tokens, measurable on CPU at the 1B shape
(`--num-layers 2 --seq-len 512 --cpu-swiglu-fusion` keeps that run to minutes) to predict the GPU ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
from typing import Callable

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
SYSTEMS = ("hf_amp", "hf_bf16", "ours")


def model_flops_per_token(hf: dict, seq_len: int) -> float:
    h, L, V = hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    q = hf["num_attention_heads"] * hf["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * hf["intermediate_size"]
    return 6 * (L * per_layer + V * h) + 6 * L * seq_len * q


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


# ---------------------------------------------------------------------------------------------- systems
# Each builder returns (step_fn(microbatches of token tensors [b, s]), description, release_fn, parameters_fn).


def build_hf(hf: dict, device: torch.device, recipe: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in hf.items() if k != "model_type"}, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    half = recipe == "hf_bf16"
    if half:
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=device.type == "cuda")
    autocast = device.type == "cuda" and not half

    def step(microbatches: list[torch.Tensor]) -> None:
        for tokens in microbatches:
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with ctx:
                loss = model(input_ids=tokens, labels=tokens).loss / len(microbatches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def release():
        nonlocal model, optimizer
        model = optimizer = None

    def parameters():
        return model.parameters()

    precision = ("bf16 params/grads/Adam states" if half else
                 "fp32 master params and grads, bf16 autocast" if autocast else "fp32")
    desc = {"implementation": "transformers LlamaForCausalLM, attn_implementation=sdpa",
            "precision": precision, "optimizer": f"torch AdamW (fused={device.type == 'cuda'}), grad clip 1.0",
            "loss": "HF causal-LM loss (labels = tokens)",
            "parameters": sum(p.numel() for p in model.parameters())}
    return step, desc, release, parameters


def build_ours(hf: dict, device: torch.device, transformer_impl: str, cpu_swiglu_fusion: bool = False):
    from megatron_mcpo.config import Config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.policy import unwrap
    from megatron_mcpo.models.provider import use_transformer_engine
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.optimizer_fallbacks import inner_optimizers
    from megatron_mcpo.training.train_step import train_step

    cfg = Config()
    cfg.run.device = device.type
    cfg.model.params_dtype = "bf16" if device.type == "cuda" else "fp32"
    cfg.model.transformer_impl = transformer_impl
    cfg.optimizer.lr = 1e-5
    groups = init_distributed(device=device.type)
    state = setup_train_state(cfg, hf, groups)
    if cpu_swiglu_fusion:  # the GPU build's fused SwiGLU (megatron reads the flag at forward time)
        for chunk in state.policy.chunks:
            unwrap(chunk).config.bias_activation_fusion = True
    fused_groups = [g for o in inner_optimizers(state.optimizer) for g in o.param_groups if g.get("fused")]

    def step(microbatches: list[torch.Tensor]) -> None:
        total = float(sum(t.numel() for t in microbatches))
        mbs = [{"tokens": t, "response_mask": torch.ones_like(t, dtype=torch.bool)} for t in microbatches]

        def loss_fn(out, mb):
            loss = -(out.logprobs * mb["response_mask"]).sum() / total
            return loss, {"loss": loss.detach()}

        train_step(state, mbs, loss_fn)

    def release():
        nonlocal state
        state = None

    def parameters():
        return state.policy.parameters()

    desc = {"implementation": "megatron_mcpo train_step (megatron-core GPTModel, DDP, Megatron optimizer)",
            "layer_spec": "transformer_engine" if use_transformer_engine(cfg.model, device) else "local",
            "swiglu": "fused" if unwrap(state.policy.chunks[0]).config.bias_activation_fusion else "unfused",
            "core_attention": type(_core_attention(state)).__name__,
            "precision": f"{cfg.model.params_dtype} params" + (", fp32 main params and grads" if device.type == "cuda" else ""),
            "optimizer": "megatron Adam (TE/apex fused where installed, else torch AdamW, fused="
                         f"{bool(fused_groups)}, with foreach grad norm and clipping), grad clip 1.0",
            "loss": "-sum log-prob / tokens via vocab-parallel log-probs + entropy",
            "parameters": sum(p.numel() for p in state.policy.parameters())}
    return step, desc, release, parameters


def _core_attention(state):
    from megatron_mcpo.models.policy import unwrap

    return unwrap(state.policy.chunks[0]).decoder.layers[0].self_attention.core_attention


# ---------------------------------------------------------------------------------------------- timing


def measure(step: Callable, batches: list[torch.Tensor], device: torch.device, steps: int, warmup: int = 2) -> dict:
    """Median step time over `steps` after `warmup` steps; peak memory since the first of them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        step(batches)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    out = {"step_s_median": round(statistics.median(times), 4), "steps": len(times)}
    if device.type == "cuda":
        out["peak_memory_gib"] = _gib(torch.cuda.max_memory_allocated(device))
    return out


def saved_for_backward(step: Callable, tokens: torch.Tensor, parameters) -> dict:
    """What autograd holds for backward after the forward of one micro-batch (`tokens` [b, s], run as a
    one-micro-batch step): every saved tensor counted once by its storage, the parameters' own storages
    left out (resident anyway). This is the activation memory a micro-batch costs, comparable across
    systems and between CPU and GPU, where the CUDA peak mixes it with the caching allocator and the
    optimizer's transients. Autocast's bf16 weight copies count: they live until the backward."""
    param_storages = {p.untyped_storage().data_ptr() for p in parameters}
    saved: dict[int, tuple[int, torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr not in saved:
            saved[ptr] = (storage.nbytes(), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step([tokens])
    by_dtype: dict[str, int] = {}
    for nbytes, dtype in saved.values():
        name = str(dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + nbytes
    total = sum(by_dtype.values())
    return {"mib": round(total / 2**20, 1), "kib_per_token": round(total / 2**10 / tokens.numel(), 1),
            "mib_by_dtype": {k: round(v / 2**20, 1) for k, v in sorted(by_dtype.items())}}


def profile_step(step: Callable, batches: list[torch.Tensor], device: torch.device, path: str, rows: int = 30) -> None:
    """One step under torch.profiler; the top kernels/ops by self time to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(batches)
        _sync(device)
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(path, "w") as f:
        if device.type == "cuda":
            busy = sum(e.self_device_time_total for e in averages) / 1e6
            f.write(f"GPU busy (sum of self device time): {busy:.4f} s\n\n")
        f.write(averages.table(sort_by=key, row_limit=rows))
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per system and micro-batch size (default 5; tiny: 2)")
    p.add_argument("--micro-batches", type=int, default=None, help="micro-batches per optimizer step (default 4; tiny: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; tiny: 1)")
    p.add_argument("--micro-batch-sizes", default="1,4", help="comma-separated sequences per micro-batch")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048; tiny: 128")
    p.add_argument("--num-layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--transformer-impl", choices=["auto", "local", "transformer_engine"], default="auto")
    p.add_argument("--cpu-swiglu-fusion", action="store_true",
                   help="on CPU, ours with the fused SwiGLU of the GPU build (torch.compile'd; compiles in the warm-up), "
                        "to predict the GPU's activation memory")
    p.add_argument("--profile-dir", default=None, help="write a torch.profiler top-kernel table per system (micro-batch size 1)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    tiny = args.preset == "tiny"
    args.steps = args.steps or (2 if tiny else 5)
    args.micro_batches = args.micro_batches or (2 if tiny else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.seq_len = args.seq_len or (128 if tiny else 2048)
    if args.cpu_swiglu_fusion and args.device != "cpu":
        sys.exit("train_step_gpu: --cpu-swiglu-fusion is for --device cpu (the GPU build fuses SwiGLU already)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_step_gpu: no CUDA device (use --device cpu --preset tiny for a smoke run)")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":  # fp32 matmuls stay fp32: the bf16 recipes run bf16 GEMMs either way
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"train_step_gpu: unknown systems {sorted(unknown)} (choose from {SYSTEMS})")
    systems.sort(key=SYSTEMS.index)  # HF peers first (see the module doc)
    sizes = [int(x) for x in args.micro_batch_sizes.split(",")]
    hf = {**PRESETS[args.preset], **COMMON}
    if args.num_layers:
        hf["num_hidden_layers"] = args.num_layers
    flops_per_token = model_flops_per_token(hf, args.seq_len)
    matmul = matmul_flops_per_s(device, 8192 if device.type == "cuda" else 1024)
    g = torch.Generator().manual_seed(0)
    batches = {mbs: [torch.randint(0, hf["vocab_size"], (mbs, args.seq_len), generator=g).to(device)
                     for _ in range(args.micro_batches)] for mbs in sizes}
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"train_step_gpu_{args.preset}{f'_{args.num_layers}l' if args.num_layers else ''}"
                                   f"{'_fused_swiglu' if args.cpu_swiglu_fusion else ''}_{args.device}.json")
    setup = {"device": args.device, "micro_batches_per_step": args.micro_batches, "seq_len": args.seq_len,
             "warmup_steps": args.warmup, "tokens_per_step": {f"micro_batch_{m}": m * args.micro_batches * args.seq_len for m in sizes}}
    runs, described = {}, {}
    for name in systems:
        gc.collect()
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        if name == "ours":
            step, desc, release, parameters = build_ours(hf, device, args.transformer_impl, args.cpu_swiglu_fusion)
        else:
            step, desc, release, parameters = build_hf(hf, device, name)
        desc["build_s"] = round(time.perf_counter() - t0, 2)
        if device.type == "cuda":
            desc["resident_before_build_gib"] = _gib(resident)  # what another system left behind (should be ~0)
        described[name] = desc
        runs[name] = {}
        for mbs in sizes:
            try:
                r = measure(step, batches[mbs], device, args.steps, args.warmup)
            except torch.OutOfMemoryError as e:  # recorded; the other sizes and systems still run
                r = {"error": f"out of memory: {str(e).splitlines()[0][:200]}"}
                gc.collect()
                torch.cuda.empty_cache()
            else:
                tokens = mbs * args.micro_batches * args.seq_len
                r["tokens_per_s"] = round(tokens / r["step_s_median"], 1)
                flops = flops_per_token * r["tokens_per_s"]
                r["model_tflops_per_s"] = round(flops / 1e12, 2)
                r["mfu_vs_989_tflops"] = round(flops / PEAK_BF16_FLOPS, 4)
                r["mfu_vs_measured_matmul"] = round(flops / matmul, 4)
                r["saved_for_backward"] = saved_for_backward(step, batches[mbs][0], parameters())
            runs[name][f"micro_batch_{mbs}"] = r
            print(name, f"micro-batch {mbs}:", r, flush=True)
        if args.profile_dir:
            profile_step(step, batches[sizes[0]], device, os.path.join(args.profile_dir, f"profile_{name}_{args.device}.txt"))
        release()
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # after every system: a run cut short by its time limit still leaves what it measured
        write_result(out, {
            "benchmark": "train_step_gpu",
            "model": {"preset": args.preset, **{k: hf[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size",
                                                                   "num_attention_heads", "num_key_value_heads")}},
            "setup": setup, "systems": described, "model_flops_per_token": flops_per_token,
            "matmul_tflops_per_s_same_run": round(matmul / 1e12, 2), "runs": runs, "ratios": ratios_vs_peers(runs),
            "complete": name == systems[-1],
            "target": ("ours >= 1.0x hf_amp and hf_bf16 tokens/s at every micro-batch size; peak memory <= hf_amp's; "
                       "saved-for-backward bytes <= hf_bf16's"),
        })


def ratios_vs_peers(runs: dict) -> dict:
    """ours / each peer: tokens/s and peak memory per micro-batch size both measured (none where one failed)."""
    ratios = {}
    for peer in (s for s in runs if s != "ours" and "ours" in runs):
        per = {}
        for key, ours in runs["ours"].items():
            other = runs[peer].get(key, {})
            if "tokens_per_s" not in ours or "tokens_per_s" not in other:
                continue
            per[key] = {"tokens_per_s": round(ours["tokens_per_s"] / other["tokens_per_s"], 3)}
            if "peak_memory_gib" in ours:
                per[key]["peak_memory"] = round(ours["peak_memory_gib"] / other["peak_memory_gib"], 3)
            per[key]["saved_for_backward"] = round(ours["saved_for_backward"]["mib"] / other["saved_for_backward"]["mib"], 3)
        ratios[f"ours_vs_{peer}"] = per
    return ratios


if __name__ == "__main__":
    main()
