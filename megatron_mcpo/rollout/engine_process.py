"""Set-up of vLLM's engine processes (engine core and workers), run in each by vLLM's general-plugin hook
(`engine_process_setup`, registered by `register_plugin`); imports no vllm.

In each engine process (a colocated worker lives in the trainer rank and is left alone):
- die with the parent, and only then: PR_SET_PDEATHSIG makes the kernel kill the engine process when
  the process that started it (the trainer rank) dies, kill -9 included, so an engine never outlives its
  trainer holding memory; a watchdog thread covers systems without prctl. SIGTERM and SIGINT are
  ignored: a preemption signal reaches every process of the job, and the trainer, which handles it,
  still needs its engine to finish the step; the trainer ends the engine itself (VLLMEngine.shutdown)
  with SHUTDOWN_SIGNAL, on which the processes unwind as vLLM's SIGTERM would have them (shared memory
  unlinked, workers ended through their death pipes) and leave without the interpreter's finalization.
- the reload warnings are explained once: an in-place refit sends no tensors for modules that have none
  in a checkpoint (rotary embeddings, an LM head tied to the embedding), and vLLM's layerwise reload
  logs "<Layer>: Failed to load weights" for each at every refit; those layers keep their (correct)
  weights, so the message is replaced by one line saying so.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time

_HARMLESS_RELOAD = ("RotaryEmbedding", "LMHead", "ParallelLMHead")


def _die_with_parent() -> None:
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass

    def watch():
        while True:
            if os.getppid() != parent:  # re-parented: the trainer is gone
                os._exit(1)
            time.sleep(1.0)

    if parent != 1:
        threading.Thread(target=watch, daemon=True, name="mcpo-parent-watch").start()


class _ExplainReloadWarnings(logging.Filter):
    def __init__(self):
        super().__init__()
        self.explained = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "%s: Failed to load weights" or not record.args:
            return True
        if not any(name in str(record.args[0]) for name in _HARMLESS_RELOAD):
            return True
        if self.explained:
            return False
        self.explained = True
        record.msg = ("refit: no new tensors for %s-like layers (rotary embeddings, a tied LM head): they have "
                      "none in a checkpoint and keep their weights; vLLM's 'Failed to load weights' for them is "
                      "expected and not shown again")
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# The trainer's "end now" (VLLMEngine.shutdown), in place of SIGTERM: a real-time signal, which no scheduler
# sends job-wide (Slurm's --signal and scancel users pick TERM, USR1 or USR2) and glibc leaves to programs.
SHUTDOWN_SIGNAL = signal.SIGRTMIN + 4


def _end_on_request(signum, frame):
    """The trainer is ending the engine. The engine core unwinds its busy loop as on vLLM's own SIGTERM,
    so it closes its queues, unlinks its shared memory and ends its workers through their death pipes;
    a worker waits for that. Either then leaves without the interpreter's finalization (seconds of
    module teardown in a process that holds nothing to save)."""
    signal.signal(signum, signal.SIG_IGN)
    atexit.register(_leave_now)  # registered last, so it runs first of the exit handlers
    if multiprocessing.current_process().name.startswith("EngineCore"):
        raise SystemExit()


def _leave_now() -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_ENGINE_PROCESSES = ("EngineCore", "VllmWorker")  # multiprocessing names vLLM gives its processes
PLUGIN = "mcpo_engine_process_setup"


def engine_process_setup() -> None:
    """vLLM general plugin: runs in every process that loads plugins, the trainer's included."""
    if not multiprocessing.current_process().name.startswith(_ENGINE_PROCESSES):
        return
    _die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(SHUTDOWN_SIGNAL, _end_on_request)
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_ExplainReloadWarnings())


def register_plugin() -> None:
    """Make `engine_process_setup` a `vllm.general_plugins` entry point of this interpreter and of the
    processes it spawns (they inherit sys.path): a metadata-only distribution in a temporary directory,
    so it works from a source checkout without reinstalling the package."""
    if any(PLUGIN in p for p in sys.path):
        return
    root = tempfile.mkdtemp(prefix=PLUGIN + "_")
    info = os.path.join(root, "mcpo_engine_process_setup-1.0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: mcpo-engine-process-setup\nVersion: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[vllm.general_plugins]\n{PLUGIN} = {__name__}:engine_process_setup\n")
    sys.path.append(root)
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN not in allowed.split(","):
        os.environ["VLLM_PLUGINS"] = f"{allowed},{PLUGIN}" if allowed else PLUGIN
