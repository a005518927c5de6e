"""Preemption, for real: `mcpo train` gets SIGTERM in its whole process group (as Slurm's scancel sends
it) mid-run; it finishes the step, saves, exits 143 and leaves no engine or reward process behind. The
relaunch with the same command resumes from that save and its last step equals the uninterrupted run's
(sampling is seeded per generation batch, prompt and sample). The uninterrupted run goes alongside the
other two (its own output and process group): each run is mostly one busy process at a time."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3
SMALL = ["rollout.n=2", "rollout.max_response_length=16", "algorithm.train_batch_prompts=2",
         "algorithm.mini_batch_prompts=2", "parallel.micro_batch_size=4", "data.domains=[math,science]",
         "eval.before_train=false", "eval.every=0", "rewards.num_workers=1", "rollout.gpu_memory_utilization=0.1",
         f"run.total_steps={STEPS}", "checkpoint.save_interval=0"]


def _train(out, name, console=subprocess.PIPE):
    args = [sys.executable, "-m", "megatron_mcpo", "train", "--config", "examples/configs/tiny_cpu.yaml"]
    for o in SMALL + [f"run.output_dir={out}", f"logging.log_dir={out}/logs", f"run.name={name}",
                      f"checkpoint.save_dir={out}/ckpt_{name}"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, like a batch job's


def _steps(out, name):
    with open(f"{out}/logs/{name}.jsonl") as f:
        return {m["step"]: m for m in map(json.loads, f)}


def _finish(proc, timeout):
    try:
        text, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return text


def test_sigterm_saves_exits_and_resume_repeats_the_run(tmp_path):
    out = str(tmp_path)
    with open(f"{out}/a.log", "w") as console:  # a file: nobody drains a pipe while run b is watched
        straight = _train(out, "a", console)
    try:
        stopped_at = _preempt_and_resume(out)
    except BaseException:
        os.killpg(straight.pid, signal.SIGKILL)
        straight.wait()
        raise
    _finish(straight, 1800)
    with open(f"{out}/a.log") as f:
        assert straight.returncode == 0, f.read()[-3000:]
    a, b = _steps(out, "a"), _steps(out, "b")
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in range(stopped_at + 1, STEPS + 1):
        for key in ("reward/all/score", "rollout/response_length_mean", "pg_loss", "grad_norm",
                    "rollout/logprob_abs_diff_max"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
        assert b[step]["samples"] == a[step]["samples"]
    assert a[1]["samples"] and {"prompt", "response", "score"} <= set(a[1]["samples"][0])


def _preempt_and_resume(out) -> int:
    """Run b: SIGTERM to its process group after step 1, then the same command again; the step it stopped at."""
    run = _train(out, "b")
    engine_procs, lines = [], []
    for line in run.stdout:  # wait for the first step's console line, then preempt the whole group
        lines.append(line)
        if line.startswith("step=1 "):
            engine_procs = psutil.Process(run.pid).children(recursive=True)
            os.killpg(run.pid, signal.SIGTERM)
            break
    assert engine_procs, "".join(lines)[-3000:]
    text = "".join(lines) + _finish(run, 900)
    assert run.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "SIGTERM received: finishing the current step" in text and "stopped by SIGTERM: saved" in text
    stopped_at = max(_steps(out, "b"))
    assert 1 <= stopped_at < STEPS
    assert open(f"{out}/ckpt_b/latest_iteration.txt").read().strip() == str(stopped_at)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engine_procs):
        time.sleep(0.5)
    left = [p.pid for p in engine_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind after SIGTERM: {left}"

    resumed = _train(out, "b")  # the same command: checkpoint.resume=auto continues from save_dir
    text = _finish(resumed, 1800)
    assert resumed.returncode == 0, text[-3000:]
    assert f"resumed from {out}/ckpt_b/iter_{stopped_at:07d} (RL step {stopped_at})" in text
    return stopped_at
