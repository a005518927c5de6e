"""The nemo-run launcher, run in the launch environment (.venv-launch: nemo-run, no torch; `make test`
builds it): the Slurm job and the local torchrun command it would submit (dry runs), and config errors
caught before anything is submitted."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH_PY = os.environ.get("MCPO_LAUNCH_PYTHON", os.path.join(ROOT, ".venv-launch", "bin", "python"))
pytestmark = pytest.mark.skipif(not os.path.exists(LAUNCH_PY), reason="no launch environment: run `make launch-venv`")
CONFIG = ["--config", "examples/configs/tiny_cpu.yaml", "--set", "parallel.micro_batch_size=1",
          "--set", "algorithm.train_batch_prompts=8", "--set", "algorithm.mini_batch_prompts=4"]  # divisible by DP 2 and 4


def _launch(tmp_path, *args):
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path / "nemo_run"), "COLUMNS": "400"}
    proc = subprocess.run([LAUNCH_PY, "-m", "megatron_mcpo.launch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())  # rich wraps and pads lines


def test_slurm_job_runs_torchrun_on_every_node(tmp_path):
    rc, out = _launch(tmp_path, *CONFIG, "--executor", "slurm", "--nodes", "2", "--gpus-per-node", "2",
                      "--account", "acct", "--partition", "batch", "--time", "01:30:00", "--container-image", "img:1",
                      "--container-mounts", "/data:/data", "--env", "NCCL_DEBUG=WARN", "--job-dir", str(tmp_path / "jobs"),
                      "--dryrun")
    assert rc == 0, out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --account=acct", "#SBATCH --partition=batch", "#SBATCH --time=01:30:00",
                 "export NCCL_DEBUG=WARN", "--container-image img:1"):
        assert line in out, line
    assert ("torchrun --rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500" in out
            and "--nnodes 2 --nproc-per-node 2 --node-rank $SLURM_NODEID" in out)
    assert "-m megatron_mcpo train --config examples/configs/tiny_cpu.yaml --set parallel.micro_batch_size=1" in out


DEDICATED = ["--set", "run.device=cuda", "--set", "rollout.placement=dedicated", "--set", "rollout.dedicated_gpus_per_node=2"]


def test_dedicated_rollout_gpus_are_requested_but_get_no_rank(tmp_path):
    # 4 GPUs per node: ranks on GPUs 0-1, the two replicas' engines on GPUs 2-3; world size 2 nodes x 2 ranks
    rc, out = _launch(tmp_path, *CONFIG, *DEDICATED, "--executor", "slurm", "--nodes", "2", "--gpus-per-node", "4",
                      "--account", "acct", "--partition", "batch", "--job-dir", str(tmp_path / "jobs"), "--dryrun")
    assert rc == 0, out
    assert "#SBATCH --gpus-per-node=4" in out and "--nnodes 2 --nproc-per-node 2 --node-rank $SLURM_NODEID" in out
    assert "--set rollout.dedicated_gpus_per_node=2 --set rollout.gpus_per_node=4" in out  # the job plans the same


def test_local_job_with_dedicated_rollout_gpus(tmp_path):
    # 6 GPUs: 4 TP2 ranks (2 replicas) on GPUs 0-3, their 2 engines on GPUs 4-5
    rc, out = _launch(tmp_path, *CONFIG, *DEDICATED, "--set", "parallel.tp=2", "--executor", "local",
                      "--gpus-per-node", "6", "--dryrun")
    assert rc == 0, out
    assert "'--nnodes', '1', '--nproc-per-node', '4'" in out


def test_local_job_is_torchrun_with_one_rank_per_gpu(tmp_path):
    rc, out = _launch(tmp_path, *CONFIG, "--executor", "local", "--gpus-per-node", "2", "--dryrun")
    assert rc == 0, out
    assert "'--nnodes', '1', '--nproc-per-node', '2'" in out
    assert "'-m', 'megatron_mcpo', 'train', '--config', 'examples/configs/tiny_cpu.yaml', '--set', 'parallel.micro_batch_size=1'" in out


@pytest.mark.parametrize("args,message", [
    (["--set", "parallel.tp=3"], "parallel.tp"),  # the tiny model has 4 heads
    (["--set", "parallel.micro_batch_size=3"], "parallel.micro_batch_size"),  # 16 sequences over 4 ranks
    (["--executor", "slurm", "--account", "a"], "--account and --partition"),
    (["--env", "NOEQUALS"], "--env expects K=V"),
    # 4 training ranks = 4 replicas, each with an engine, on a node with 1 dedicated GPU
    (["--gpus-per-node", "5", *DEDICATED[:4], "--set", "rollout.dedicated_gpus_per_node=1"],
     "rollout.dedicated_gpus_per_node: node 0 hosts 2"),
    ([*DEDICATED[:4], "--set", "rollout.dedicated_gpus_per_node=4"], "rollout.dedicated_gpus_per_node: 4 of the node's 4 GPUs"),
])
def test_bad_input_fails_before_submitting(tmp_path, args, message):
    rc, out = _launch(tmp_path, *CONFIG, "--gpus-per-node", "4", *args, "--dryrun")  # valid without `args`
    assert rc == 2 and "launch error" in out and message in out, out
    assert not (tmp_path / "nemo_run").exists()  # nemo-run was never reached


def test_launcher_needs_no_torch():
    code = "import sys, megatron_mcpo.launch, megatron_mcpo.config; assert 'torch' not in sys.modules; import nemo_run"
    assert subprocess.run([LAUNCH_PY, "-c", code], cwd=ROOT, timeout=120).returncode == 0
