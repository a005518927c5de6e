"""Launch training with nemo-run: torchrun on this node, or sbatch + srun + torchrun on Slurm. The only
module that imports nemo_run; it needs neither torch nor a GPU (run it from a login node):

  python -m megatron_mcpo.launch --config examples/configs/qwen3_8b_8xh200.yaml --executor local
  python -m megatron_mcpo.launch --config C --executor slurm --nodes 4 --account A --partition P \\
      --container-image nvcr.io/... --container-mounts /lustre:/lustre --time 24:00:00 [--dryrun]

The config (file + --set overrides) is validated for the job's world size before anything is
submitted. Each node runs one training rank per training GPU; with dedicated rollout engines on GPU
(`rollout.placement`), the last `rollout.dedicated_gpus_per_node` of a node's `--gpus-per-node` GPUs are the
engines' (the job requests all of them, torchrun starts ranks on the others only). `--gpus-per-node`
(default: the config's `rollout.gpus_per_node`) is passed to the job as `rollout.gpus_per_node`. With `--packager git` (default) nemo-run ships this repository's committed tree as the job's
working directory, so repo-relative config paths work; with `--packager none` the image must hold the
package and the config path must be visible on the compute nodes.
"""
from __future__ import annotations

import argparse
import sys

from megatron_mcpo.config import ConfigError, load_config, resolve_device
from megatron_mcpo.validation import validate
from megatron_mcpo.rollout.placement import resolve_placement


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m megatron_mcpo.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML config (repo-relative with --packager git)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C")
    ap.add_argument("--executor", choices=["local", "slurm"], default="local")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=None,
                    help="GPUs per node, training + dedicated rollout (default: the config's rollout.gpus_per_node)")
    ap.add_argument("--name", default=None, help="experiment name (default: run.name)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable for the job")
    ap.add_argument("--packager", choices=["git", "none"], default="git")
    ap.add_argument("--dryrun", action="store_true", help="print the job (sbatch script / command) only")
    slurm = ap.add_argument_group("slurm")
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", default="04:00:00")
    slurm.add_argument("--container-image")
    slurm.add_argument("--container-mounts", action="append", default=[], metavar="SRC:DST")
    slurm.add_argument("--job-dir", default="nemo_experiments", help="where nemo-run keeps job files and logs")
    slurm.add_argument("--ssh", default=None, metavar="USER@HOST", help="submit through this login node (SSH tunnel)")
    return ap


def training_ranks_per_node(cfg) -> int:
    """Ranks torchrun starts per node: every GPU trains, except a dedicated placement's engine GPUs (GPU only)."""
    r = cfg.rollout
    on_gpu = resolve_device(cfg.run.device, cuda_available=True) == "cuda"
    if resolve_placement(r.placement, on_gpu) != "dedicated" or not on_gpu:
        return r.gpus_per_node
    ranks = r.gpus_per_node - r.dedicated_gpus_per_node
    if ranks < 1:
        raise ConfigError(f"rollout.dedicated_gpus_per_node: {r.dedicated_gpus_per_node} of the node's "
                          f"{r.gpus_per_node} GPUs leaves none for training")
    return ranks


def build_executor(args, ranks_per_node: int, gpus_per_node: int):
    import nemo_run as run

    env = dict(kv.split("=", 1) for kv in args.env)
    packager = run.GitArchivePackager() if args.packager == "git" else run.Packager()
    if args.executor == "local":
        if args.nodes != 1:
            raise ValueError("--executor local runs on this node: --nodes must be 1")
        return run.LocalExecutor(ntasks_per_node=ranks_per_node, launcher="torchrun", env_vars=env)
    if not (args.account and args.partition):
        raise ValueError("--executor slurm needs --account and --partition")
    if args.ssh:
        user, _, host = args.ssh.rpartition("@")
        tunnel = run.SSHTunnel(host=host, user=user or None, job_dir=args.job_dir)
    else:
        tunnel = run.LocalTunnel(job_dir=args.job_dir)
    return run.SlurmExecutor(
        account=args.account, partition=args.partition, nodes=args.nodes, ntasks_per_node=ranks_per_node,
        gpus_per_node=gpus_per_node, time=args.time, container_image=args.container_image,
        container_mounts=list(args.container_mounts), launcher="torchrun", packager=packager, tunnel=tunnel,
        env_vars=env,
    )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    bad_env = [kv for kv in args.env if "=" not in kv]
    try:
        if bad_env:
            raise ValueError(f"--env expects K=V, got {bad_env}")
        if args.nodes < 1 or (args.gpus_per_node is not None and args.gpus_per_node < 1):
            raise ValueError("--nodes and --gpus-per-node must be >= 1")
        if args.gpus_per_node is not None:  # the job's placement plan sees the node's real GPU count
            args.overrides.append(f"rollout.gpus_per_node={args.gpus_per_node}")
        cfg = load_config(args.config, args.overrides)
        ranks_per_node = training_ranks_per_node(cfg)
        # before anything is submitted; CUDA and TE are the job's (checked again on the nodes by the trainer)
        validate(cfg, world_size=args.nodes * ranks_per_node, cuda_available=True, te_available=True)
        executor = build_executor(args, ranks_per_node, cfg.rollout.gpus_per_node)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 2
    import nemo_run as run

    sets = [a for kv in args.overrides for a in ("--set", kv)]
    train = run.Script(path="megatron_mcpo", m=True, entrypoint="python",
                       args=["train", "--config", args.config, *sets])
    with run.Experiment(args.name or cfg.run.name, executor=executor) as exp:
        exp.add(train, name="train")
        if args.dryrun:
            exp.dryrun()
        else:
            exp.run(detach=args.executor == "slurm", tail_logs=args.executor == "local")
    return 0


if __name__ == "__main__":
    sys.exit(main())
