"""Tokens/s of one train step of a small Megatron model on CPU (gloo), in two sections.

layouts: TP1 / TP2 / PP2 / DP2. Each layout runs in its own spawned process group; the same global
  batch (sequences x length) and the same token-mean policy-gradient-style loss are used everywhere,
  so the numbers compare layouts.
packing: TP1 with sequence lengths spread uniformly over [16, seq_len] (as RL rollouts are), padded
  vs packed (model.sequence_packing) steps alternating in one process, so load on the shared machine
  hits both alike; tokens/s counts real (unpadded) tokens.
Usage: python benchmarks/train_step.py [--section layouts|packing] [--steps 5] [--out PATH]
  (default out: benchmarks/results/train_step_cpu.json, train_step_packing_cpu.json)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

SMALL = dict(  # ~20M parameters: small enough for 2 CPU cores, large enough that matmuls dominate
    model_type="qwen3", vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=4, head_dim=64, hidden_act="silu", max_position_embeddings=4096,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
)
LAYOUTS = {"tp1": (1, 1, 1), "tp2": (2, 1, 2), "pp2": (1, 2, 2), "dp2": (1, 1, 2)}  # name: (tp, pp, world)


def _batch(seqs: int, seq_len: int, spread: bool) -> dict:
    """Right-padded tokens [seqs, seq_len] with a prompt of seq_len // 4 tokens; with `spread` each
    sequence's length is uniform in [16, seq_len] (prompt min(seq_len // 4, length - 1)), else full."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SMALL["vocab_size"], (seqs, seq_len), generator=g)
    mask = torch.zeros(seqs, seq_len, dtype=torch.bool)
    lengths = torch.randint(16, seq_len + 1, (seqs,), generator=g) if spread else torch.full((seqs,), seq_len)
    for i, n in enumerate(lengths.tolist()):
        mask[i, min(seq_len // 4, n - 1) : n] = True
    return {"tokens": tokens, "response_mask": mask}


def _worker(rank, world, port, tp, pp, seqs, seq_len, mbs, steps, spread, modes, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    from megatron_mcpo.config import Config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.training.optimizer import setup_train_state
    from megatron_mcpo.training.train_step import split_microbatches, train_step

    cfg = Config()
    cfg.run.device = "cpu"
    cfg.parallel.tp, cfg.parallel.pp = tp, pp
    groups = init_distributed(tp=tp, pp=pp, device="cpu")
    state = setup_train_state(cfg, SMALL, groups)
    batch = _batch(seqs, seq_len, spread)
    n = seqs // groups.dp_size
    local = {k: v[groups.dp_rank * n : (groups.dp_rank + 1) * n] for k, v in batch.items()}
    total = batch["response_mask"].sum()

    def loss_fn(out, mb):
        m = mb["response_mask"].float()
        loss = -(out.logprobs * m).sum() / total
        return loss, {"loss": loss.detach()}

    times = {packing: [] for packing in modes}
    for i in range(steps + 2):
        for packing in modes:  # alternating: a load change on the machine hits every mode alike
            state.policy.sequence_packing = packing
            t0 = time.perf_counter()
            train_step(state, split_microbatches(local, mbs), loss_fn)
            if i >= 2:  # two warm-up steps
                times[packing].append(time.perf_counter() - t0)
    if rank == 0:
        queue.put(times)


def _spawn(tp: int, pp: int, world: int, seqs: int, seq_len: int, mbs: int, steps: int, spread: bool, modes) -> dict:
    """{packing flag: step times} from rank 0 of a fresh process group."""
    from megatron_mcpo.distributed import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (tp, pp, seqs, seq_len, mbs, steps, spread, modes, queue)
    procs = [ctx.Process(target=_worker, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    times = queue.get(timeout=900)
    for p in procs:
        p.join()
    return times


def run_layout(name: str, seqs: int, seq_len: int, mbs: int, steps: int) -> dict:
    tp, pp, world = LAYOUTS[name]
    times = _spawn(tp, pp, world, seqs, seq_len, mbs, steps, spread=False, modes=[False])[False]
    med = statistics.median(times)
    return {"tp": tp, "pp": pp, "dp": world // (tp * pp), "world": world, "step_s_median": round(med, 4),
            "tokens_per_s": round(seqs * seq_len / med, 1), "steps": len(times)}


def layouts_section(args) -> dict:
    results = {}
    for name in args.layouts.split(","):
        results[name] = run_layout(name, args.seqs, args.seq_len, args.micro_batch, args.steps)
        print(name, results[name], flush=True)
    base = results.get("tp1", {}).get("tokens_per_s")
    if base:
        for r in results.values():
            r["ratio_vs_tp1"] = round(r["tokens_per_s"] / base, 3)
    return {
        "benchmark": "train_step", "model": {k: SMALL[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "global_batch": {"sequences": args.seqs, "seq_len": args.seq_len, "micro_batch": args.micro_batch},
        "note": "fp32, local layer spec, gloo; all ranks share the same 2 cores, so TP/PP/DP add communication without adding compute",
        "layouts": results,
    }


def packing_section(args) -> dict:
    times = _spawn(1, 1, 1, args.seqs, args.seq_len, args.micro_batch, args.steps, spread=True, modes=[False, True])
    from megatron_mcpo.models.packing import sequence_lengths

    real = int(sequence_lengths(_batch(args.seqs, args.seq_len, spread=True)["response_mask"]).sum())
    results = {}
    for packing, name in ((False, "padded"), (True, "packed")):
        med = statistics.median(times[packing])
        results[name] = {"step_s_median": round(med, 4), "real_tokens_per_s": round(real / med, 1), "steps": len(times[packing])}
        print(name, results[name], flush=True)
    return {
        "benchmark": "train_step_packing", "model": {k: SMALL[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "global_batch": {"sequences": args.seqs, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                         "lengths": "uniform in [16, seq_len]", "real_tokens": real, "padded_tokens": args.seqs * args.seq_len},
        "note": "TP1, fp32, local layer spec (packed rows use a block-diagonal causal mask); padded and packed steps alternate in one process",
        "results": results,
        "speedup_packed_vs_padded": round(results["padded"]["step_s_median"] / results["packed"]["step_s_median"], 3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", choices=["layouts", "packing"], default="layouts")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--layouts", default="tp1,tp2,pp2,dp2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = "train_step_cpu.json" if args.section == "layouts" else "train_step_packing_cpu.json"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", name)
    write_result(out, layouts_section(args) if args.section == "layouts" else packing_section(args))


if __name__ == "__main__":
    main()
