"""`mcpo train|validate|demo` — the command line (also `python -m megatron_mcpo`).

  mcpo train --config examples/configs/qwen3_8b_8xh200.yaml --set mcpo.cl_coef=0.2   (under torchrun)
  mcpo eval --config C --set checkpoint.load_dir=D   held-out metrics of a checkpoint (eval.* settings)
  mcpo validate --config C [--world-size N]      check a config without touching a GPU
  mcpo demo                                      the embedded CPU default (tiny Qwen3, synthetic suite)
  mcpo plot LOG.jsonl --out DIR                  PNG curves of a run's metrics log (needs the [plot] extra)
  mcpo embed --config C --set checkpoint.load_dir=D [--out DIR]   t-SNE of held-out response embeddings
  (--quiet on any command: no progress bars)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate, validate_launched

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "configs", "tiny_cpu.yaml")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mcpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot")
    p.add_argument("log", help="a run's <log_dir>/<run.name>.jsonl")
    p.add_argument("--out", required=True, help="output directory for the PNGs")
    for name in ("train", "eval", "validate", "demo", "embed"):
        p = sub.add_parser(name)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--config", default=DEMO_CONFIG if name == "demo" else None, help="YAML config file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C", help="override a field")
        if name == "validate":
            p.add_argument("--world-size", type=int, default=None)
        if name == "demo":
            p.add_argument("--sft-steps", type=int, default=1000, help="supervised warm-start steps before RL")
            p.add_argument("--sft-lr", type=float, default=2e-3, help="warm-start learning rate")
            p.add_argument("--sft-batch", type=int, default=20, help="warm-start sequences per step")
            p.add_argument("--sft-abstain", type=float, default=0.4,
                           help="share of warm-start answers replaced by an abstention, for RL to teach answering")
            p.add_argument("--sft-length-window", type=int, default=8,
                           help="warm-start batches of similar length, sorted within runs of this many batches")
            p.add_argument("--warm-start-cache", default=None, metavar="FILE",
                           help="load the warmed-up weights from FILE if it exists, else warm up and save them there")
        if name == "embed":
            p.add_argument("--out", default="outputs/plots", help="output directory for the PNG")
    return ap


def _expected_errors() -> tuple:
    """Errors that are the input's fault (config, data, checkpoint): one line and exit code 2, no traceback."""
    from megatron_mcpo.data.dataset import DataError
    from megatron_mcpo.training.ckpt_files import CheckpointError

    return ConfigError, DataError, CheckpointError, FileNotFoundError


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plot":
        from megatron_mcpo.plots import plot_log

        for path in plot_log(args.log, args.out):
            print(path)
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        # Everything that can be checked is, before torch.distributed or a model exists (build_trainer
        # checks nothing again; the data files it reads were parsed here, once: data/formats.py).
        validate(cfg, world_size=args.world_size) if args.command == "validate" else validate_launched(cfg)
        if args.command == "validate":
            print(f"config OK ({args.config or 'defaults'})")
            return 0
    except _expected_errors() as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    from megatron_mcpo import progress
    from megatron_mcpo.rollout.engine import EngineDiedError
    from megatron_mcpo.build import build_trainer
    from megatron_mcpo.training.interrupt import TrainingInterrupted

    progress.configure(cfg.logging.progress and not args.quiet)

    try:
        trainer = build_trainer(cfg)
    except _expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "embed":
            from megatron_mcpo.embeddings import embed_command

            path = embed_command(trainer, args.out)
            if dist.get_rank() == 0:
                print(path)
            return 0
        if args.command == "eval":
            metrics = trainer.evaluate()
            if dist.get_rank() == 0:
                print(json.dumps({"step": trainer.rl_steps, **metrics}, indent=1, sort_keys=True))
            return 0
        if args.command == "demo" and args.sft_steps > 0:
            from megatron_mcpo.demo import cached_warm_start, sft_warm_start

            tic = time.perf_counter()
            nll = []
            how = cached_warm_start(trainer, args.warm_start_cache, lambda: nll.extend(
                sft_warm_start(trainer, args.sft_steps, batch_size=args.sft_batch, lr=args.sft_lr,
                               abstain=args.sft_abstain, length_window=args.sft_length_window)))
            if how == "loaded":
                print(f"supervised warm start: loaded from {args.warm_start_cache}", flush=True)
            elif how == "resumed":
                print("supervised warm start: none (resumed from a checkpoint)", flush=True)
            else:
                print(f"supervised warm start: {args.sft_steps} steps of {args.sft_batch} in {time.perf_counter() - tic:.0f} s,"
                      f" NLL {nll[0]:.3f} -> {nll[-1]:.3f}", flush=True)
        history = trainer.train()
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        return e.exit_code
    except EngineDiedError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except _expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        trainer.close()

    if history and (not dist.is_initialized() or dist.get_rank() == 0):
        last = history[-1]
        print("final:", " ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float) and "/" not in k))
        if args.command == "demo":
            from megatron_mcpo.demo import demo_report

            print(demo_report(cfg, history), flush=True)
    return 0
