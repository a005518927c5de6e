"""SIGTERM/SIGINT during training (Slurm preemption, scancel, Ctrl-C): the first signal asks the loop to
stop after the current step (or to abandon it, if the engine went down with the signal), save and exit
non-zero; a second one ends the process at once.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import torch
import torch.distributed as dist


class TrainingInterrupted(Exception):
    """Training stopped by a signal after saving; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, saved: Optional[str]):
        self.signum, self.saved = signum, saved
        self.exit_code = 128 + signum
        where = f"saved {saved}" if saved else "nothing to save (checkpoint.save_dir is not set)"
        super().__init__(f"stopped by {signal.Signals(signum).name}: {where}")


class StopRequest:
    """Installs SIGTERM/SIGINT handlers for the duration of a with-block (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.signum = signum
        # The second signal gets the default action from the OS at once: a Python handler would only run
        # after the op in progress returns (a long backward pass or engine call ignored it for seconds).
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        print(f"\n{signal.Signals(signum).name} received: finishing the current step, then saving and exiting "
              f"(send it again to exit now)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, group=None) -> Optional[int]:
        """The signal any rank received (collective): every rank stops after the same step."""
        if not dist.is_initialized():
            return self.signum
        on_gpu = dist.get_backend(group) == "nccl"  # NCCL reduces CUDA tensors only
        flag = torch.tensor([self.signum or 0], device=torch.cuda.current_device() if on_gpu else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return int(flag.item()) or None
