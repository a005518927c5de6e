"""The engine's life cycle: sampling reproducible after a reseed, its processes die with the process that
started it (kill -9 included), and a killed engine core fails the next call within seconds, naming the
engine, instead of blocking forever. One engine per test (each ends it)."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytest.importorskip("vllm")

from megatron_mcpo.rollout.engine import EngineDiedError, SamplingSpec  # noqa: E402

pytestmark = pytest.mark.vllm
PROMPTS = [[{"role": "user", "content": "What is 12 + 30?"}], [5, 17, 99, 240, 7]]
SPEC = SamplingSpec(n=3, temperature=1.0, max_tokens=12)


def _running(pids: list[int]) -> list[int]:
    """The pids whose processes still run (neither gone nor zombies)."""
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _tokens(out):
    return [[s.token_ids for s in group] for group in out]


def test_reseeded_sampling_repeats_and_a_killed_engine_fails_fast(tiny_dirs):
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(tiny_dirs["qwen3"], seed=0, dtype="fp32", gpu_memory_utilization=0.1, max_model_len=128)
    try:
        eng.set_sampling_seed(7)
        a = _tokens(eng.generate(PROMPTS, SPEC))
        eng.generate(PROMPTS, SPEC)  # moves the generator on
        eng.set_sampling_seed(7)
        assert _tokens(eng.generate(PROMPTS, SPEC)) == a
        eng.set_sampling_seed(8)
        assert _tokens(eng.generate(PROMPTS, SPEC)) != a

        assert eng._procs, "the engine core process was not found"
        os.kill(eng._procs[0].pid, signal.SIGKILL)
        tic = time.monotonic()
        with pytest.raises(EngineDiedError, match=r"rollout engine of rank 0 .* died during generate"):
            eng.generate(PROMPTS, SamplingSpec(n=2, temperature=1.0, max_tokens=200))
        assert time.monotonic() - tic < 30
    finally:
        eng.shutdown()
    assert not [p for p in eng._procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


CHILD = """
import sys
from megatron_mcpo.rollout.vllm_engine import VLLMEngine
eng = VLLMEngine(sys.argv[1], seed=0, dtype="fp32", gpu_memory_utilization=0.1, max_model_len=128)
print("PIDS", *(p.pid for p in eng._procs), flush=True)
sys.stdin.read()
"""


def test_engine_dies_with_its_trainer(tiny_dirs):
    """kill -9 of the process that started the engine leaves no engine process behind."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, tiny_dirs["qwen3"]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while not line.startswith("PIDS"):  # vLLM logs to stdout too
            line = proc.stdout.readline()
            assert line, "the child exited before starting its engine"
        pids = [int(p) for p in line.split()[1:]]
        assert pids and all(psutil.pid_exists(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = _running(pids)
    assert not alive, f"engine processes {alive} outlived their parent"


ENDED = """
import sys, time
from megatron_mcpo.rollout.engine import SamplingSpec
from megatron_mcpo.rollout.vllm_engine import VLLMEngine
if __name__ == "__main__":
    eng = VLLMEngine(sys.argv[1], seed=0, dtype="fp32", gpu_memory_utilization=0.1, max_model_len=128,
                     log_level=sys.argv[2])
    eng.generate([[5, 17, 99]], SamplingSpec(n=2, temperature=1.0, max_tokens=8))
    pids = [p.pid for p in eng._procs]
    tic = time.monotonic()
    eng.shutdown()
    print("ENDED", round(time.monotonic() - tic, 2), *pids, flush=True)
"""


def _end_an_engine(model_dir: str, log_level: str) -> tuple[str, str]:
    """(stdout, stdout + stderr) of a process that starts an engine, generates and shuts it down."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", ENDED, model_dir, log_level], capture_output=True, text=True,
                          env=env, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    return done.stdout, log


def test_shutdown_ends_the_engine_cleanly(tiny_dirs):
    """A deliberate end: the engine's processes unwind (queues closed, shared memory unlinked) instead of
    being killed, within seconds, and the trainer's interpreter exits without vLLM signalling a pid it
    no longer owns or the resource tracker finding leaked shared memory. At INFO: vLLM's "send sigterm"
    is an INFO line."""
    stdout, log = _end_an_engine(tiny_dirs["qwen3"], "INFO")
    ended = next(line.split() for line in stdout.splitlines() if line.startswith("ENDED"))
    seconds, pids = float(ended[1]), [int(p) for p in ended[2:]]
    assert len(pids) >= 2  # the engine core and its worker
    assert seconds < 10, f"shutdown took {seconds} s"
    assert "(EngineCore pid=" in log and " INFO " in log  # the level reached the engine processes
    # vLLM's process manager signalling the engine core means its liveness monitor raced our shutdown for it
    for unclean in ("leaked shared_memory", "leaked semaphore", "WorkerProc was terminated", "force killing",
                    "Process manager: send sigterm"):
        assert unclean not in log, f"'{unclean}' in the log:\n{log[-3000:]}"
    assert not _running(pids)


def test_engine_log_level_reaches_every_engine_process(tiny_dirs):
    """rollout.engine_log_level's default, WARNING: none of vLLM's INFO start-up report (about 60 lines per
    engine, from this process, the engine core and its worker) reaches the run's output."""
    _, log = _end_an_engine(tiny_dirs["qwen3"], "WARNING")
    info = [line for line in log.splitlines() if " INFO " in line]
    assert not info, "\n".join(info[:10])
