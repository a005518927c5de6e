"""How much MCPO adds to a training step.

Sections (run one or several; each writes its own key into the results JSON, the others are kept):
  loss        forward + backward of the projector and the MCPO loss on pools of N rollouts, from fp32
              last-layer hidden states (N, d_model) that require grad (the exact two-pass mode needs ∂/∂H).
              Baseline, measured side by side: the projector alone under a trivial loss.
  train_step  one PPO mini-batch (optimizer step) of a small Megatron model (d=512, 4 layers) on 32
              rollouts in 8 micro-batches: `grpo` (baseline) vs `mcpo_grpo` with grad_mode exact
              (pre-pass + gradient cache), exact reusing the old-log-prob states, and local_anchor;
              all in one process, interleaved, so the ratios compare like with like.

Usage:
  python benchmarks/mcpo_overhead.py --section loss [--device cpu|cuda] [--repeats 5] [--threads N] [--out PATH]
  python benchmarks/mcpo_overhead.py --smoke --repeats 1 --out /tmp/x.json   # the same code on tiny sizes (CPU smoke)
Results: benchmarks/results/mcpo_overhead_<device>.json, with the machine described.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch

from megatron_mcpo.training.mcpo_term import contrastive_kernel
from megatron_mcpo.config import MCPOConfig
from megatron_mcpo.domains import DOMAINS

from common import machine_info  # benchmarks/common.py (the script's directory is on sys.path)

POOL_SIZES = (256, 512, 1024, 2048, 4096)
D_MODEL = 4096
ROLLOUTS_PER_PROMPT = 8


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def synthetic_pool(n: int, device: torch.device, seed: int = 0):
    """Hidden states (n, D_MODEL) and pool metadata: groups of ROLLOUTS_PER_PROMPT, domains round-robin,
    about half the rollouts correct (the paper's positive ratio is 0.47–0.60)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, D_MODEL, generator=g).to(device)
    prompts = torch.arange(n) // ROLLOUTS_PER_PROMPT
    domains = prompts % len(DOMAINS)
    rewards = (torch.rand(n, generator=g) < 0.5).float()
    return hidden, rewards.to(device), prompts.to(device), domains.to(device)


def bench_loss(device: torch.device, repeats: int, smoke: bool = False) -> dict:
    """Projector (Linear(4096,256)-ReLU-Linear(256,256), fp32) + MCPO loss, forward + backward."""
    cfg = MCPOConfig()
    kernel = contrastive_kernel(cfg)
    torch.manual_seed(0)
    projector = torch.nn.Sequential(
        torch.nn.Linear(D_MODEL, cfg.proj_hidden_dim),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.proj_hidden_dim, cfg.proj_dim),
    ).to(device)
    rows = []
    for n in POOL_SIZES[:1] if smoke else POOL_SIZES:
        hidden, rewards, prompts, domains = synthetic_pool(n, device)
        hidden.requires_grad_()

        def projector_only():
            projector(hidden).square().mean().backward()

        def projector_and_loss():
            u = projector(hidden)
            kernel(u, rewards, prompts, domains)[0].backward()

        u_leaf = projector(hidden).detach().requires_grad_()

        def loss_only():
            kernel(u_leaf, rewards, prompts, domains)[0].backward()

        base = median_ms(projector_only, device, repeats)
        full = median_ms(projector_and_loss, device, repeats)
        loss = median_ms(loss_only, device, repeats)
        row = {"pool_size": n, "projector_ms": round(base, 2), "projector_and_loss_ms": round(full, 2),
               "loss_only_ms": round(loss, 2), "ratio_vs_projector": round(full / base, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        projector.zero_grad(set_to_none=True)
    return {
        "what": "median ms of forward+backward over repeats; hidden (N, 4096) fp32 requires grad; projector "
                "Linear(4096,256)-ReLU-Linear(256,256); MCPO loss with the default MCPOConfig; "
                f"{ROLLOUTS_PER_PROMPT} rollouts per prompt, {len(DOMAINS)} domains, ~50% correct",
        "baseline": "projector_ms: the projector alone under a trivial loss, measured in the same run",
        "repeats": repeats,
        "rows": rows,
    }


def bench_train_step(device: torch.device, repeats: int, smoke: bool = False) -> dict:
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.projection import ProjectionHead, ProjectionTrainer
    from megatron_mcpo.training.losses import policy_loss_from_config
    from megatron_mcpo.training.mcpo_term import make_term
    from megatron_mcpo.training.minibatch import train_minibatch
    from megatron_mcpo.training.optimizer import setup_train_state

    d = 128 if smoke else 512
    hf = dict(model_type="qwen3", vocab_size=1024 if smoke else 8192, hidden_size=d, intermediate_size=3 * d,
              num_hidden_layers=2 if smoke else 4, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
              hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    base = [f"run.device={device.type}", "parallel.micro_batch_size=4", "mcpo.warmup_batches=0", "rollout.n=4"]
    variants = {
        "grpo": ["algorithm.name=grpo"],
        "mcpo_exact": ["algorithm.name=mcpo_grpo", "mcpo.grad_mode=exact"],
        "mcpo_exact_reuse_old": ["algorithm.name=mcpo_grpo", "mcpo.grad_mode=exact"],
        "mcpo_local_anchor": ["algorithm.name=mcpo_grpo", "mcpo.grad_mode=local_anchor"],
    }
    cfgs = {k: load_config(overrides=base + v) for k, v in variants.items()}
    groups = init_distributed(device=device.type)
    state = setup_train_state(cfgs["grpo"], hf, groups)
    projector = ProjectionTrainer(ProjectionHead(d, 256, 256).to(device), lr=1e-3, weight_decay=0.01, grad_clip=1.0)
    terms = {k: make_term(c, projector, groups) for k, c in cfgs.items()}
    g = torch.Generator().manual_seed(0)
    n, seq = (16, 64) if smoke else (32, 128)
    batch = {
        "tokens": torch.randint(0, hf["vocab_size"], (n, seq), generator=g),
        "response_mask": torch.arange(seq).expand(n, -1) >= seq // 4,
        "old_logprobs": -torch.rand(n, seq, generator=g) * 5,
        "advantages": torch.randn(n, generator=g),
        "rewards": (torch.rand(n, generator=g) > 0.5).float(),
        "group_ids": torch.arange(n) // 4,
        "domain_ids": (torch.arange(n) // 4) % len(DOMAINS),
        "pooled_old": torch.randn(n, d, generator=g),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    times: dict[str, list] = {k: [] for k in variants}
    for i in range(repeats + 1):
        for name, cfg in cfgs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            train_minibatch(state, terms[name], policy_loss_from_config(cfg), batch, cfg.parallel.micro_batch_size,
                            reuse_old_pooled=name == "mcpo_exact_reuse_old")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first round warms up
                times[name].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: {"step_ms": round(v, 1), "ratio_vs_grpo": round(v / med["grpo"], 3)} for k, v in med.items()}
    print(json.dumps(rows), flush=True)
    return {
        "what": f"median ms of one optimizer step ({n} rollouts x {seq} tokens, micro-batches of 4) of a d={d}, "
                f"{hf['num_hidden_layers']}-layer fp32 Megatron model, single process; variants interleaved in each round",
        "smoke": smoke,
        "baseline": "grpo: the same step without the contrastive term",
        "repeats": repeats,
        "rows": rows,
    }


SECTIONS: dict[str, Callable[[torch.device, int, bool], dict]] = {"loss": bench_loss, "train_step": bench_train_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append",
                        help="section(s) to run (repeatable; default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path, measures nothing")
    parser.add_argument("--out", default=None,
                        help="results JSON (default: benchmarks/results/mcpo_overhead_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"mcpo_overhead_{device.type}.json")
    results = {"sections": {}}
    if os.path.exists(out):
        with open(out) as f:
            results = json.load(f)
    for name in args.section or sorted(SECTIONS):  # each section records its own machine
        results["sections"][name] = {"machine": machine_info(device=str(device)), **SECTIONS[name](device, args.repeats, args.smoke)}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
