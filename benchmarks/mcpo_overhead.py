"""How much MCPO adds to a training step.

Sections (run one or several; each writes its own key into the results JSON, the others are kept):
  loss        forward + backward of the projector and the MCPO loss on pools of N rollouts, from fp32
              last-layer hidden states (N, d_model) that require grad (the exact two-pass mode needs ∂/∂H).
              Baseline, measured side by side: the projector alone under a trivial loss.
  (train_step is added with the Megatron train step: a policy step with and without MCPO.)

Usage:
  python benchmarks/mcpo_overhead.py --section loss [--device cpu|cuda] [--repeats 5] [--threads N] [--out PATH]
Results: benchmarks/results/mcpo_overhead_<device>.json, with the machine described.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from megatron_mcpo.algorithms.mcpo import mcpo_contrastive_loss
from megatron_mcpo.config import MCPOConfig
from megatron_mcpo.domains import DOMAINS

POOL_SIZES = (256, 512, 1024, 2048, 4096)
D_MODEL = 4096
ROLLOUTS_PER_PROMPT = 8


def machine(device: torch.device) -> dict:
    """The machine a result was measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "date": datetime.date.today().isoformat(),
        # other jobs on a shared machine slow every measurement (ratios are measured side by side)
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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


def bench_loss(device: torch.device, repeats: int) -> dict:
    """Projector (Linear(4096,256)-ReLU-Linear(256,256), fp32) + MCPO loss, forward + backward."""
    cfg = MCPOConfig()
    torch.manual_seed(0)
    projector = torch.nn.Sequential(
        torch.nn.Linear(D_MODEL, cfg.proj_hidden_dim),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.proj_hidden_dim, cfg.proj_dim),
    ).to(device)
    rows = []
    for n in POOL_SIZES:
        hidden, rewards, prompts, domains = synthetic_pool(n, device)
        hidden.requires_grad_()

        def projector_only():
            projector(hidden).square().mean().backward()

        def projector_and_loss():
            u = projector(hidden)
            mcpo_contrastive_loss(u, rewards, prompts, domains, cfg)[0].backward()

        u_leaf = projector(hidden).detach().requires_grad_()

        def loss_only():
            mcpo_contrastive_loss(u_leaf, rewards, prompts, domains, cfg)[0].backward()

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


SECTIONS: dict[str, Callable[[torch.device, int], dict]] = {"loss": bench_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append",
                        help="section(s) to run (repeatable; default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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
        results["sections"][name] = {"machine": machine(device), **SECTIONS[name](device, args.repeats)}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
