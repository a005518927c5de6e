"""A checkpoint save that ends with an error, not a hang, when one of its writer processes dies.

megatron-core's dist_checkpointing.save forks writer processes (FileSystemWriterAsync: `thread_count` per
rank) and waits on a JoinableQueue that only they complete. A writer that dies without completing it
(killed by the host's OOM killer or a stray `kill -9`, or failing outside its try block, as on a missing
psutil) leaves the rank waiting forever: a job holding its GPUs with no message. Its sibling writers
then block at exit flushing their results into a pipe nobody reads, and a process that ends normally
joins them first, so the process would hang at exit as well.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import signal
import threading
from typing import Iterator

from megatron_mcpo.training.ckpt_files import CheckpointError

# A real-time signal nothing else uses (the engine processes' shutdown is SIGRTMIN + 4): delivered to the
# main thread, it ends its blocking wait (a semaphore wait returns EINTR) with the handler's exception.
INTERRUPT_SIGNAL = signal.SIGRTMIN + 5


def _children() -> list:
    """Every child multiprocessing has started and not yet joined, the ended ones included (what
    `active_children()` would reap and drop before we could read their exit codes)."""
    return list(multiprocessing.process._children)


def _writers(started: set) -> list:
    """The writer processes among children started during a save: not the multiprocessing Manager
    (named SyncManager-N) that megatron starts at its first save to hold its results queue and keeps for
    every later save."""
    return [p for p in started if not p.name.startswith("SyncManager")]


def _ending(exitcode: int) -> str:
    if exitcode == -signal.SIGKILL:
        return "was killed by SIGKILL (what the host's out-of-memory killer sends: `dmesg` tells)"
    if exitcode < 0:
        return f"was killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
    return f"exited with code {exitcode} (its error is printed above)"


# The watcher's message, for the signal handler to raise; emptied when the watched block ends, so a
# signal arriving late raises nothing (the handler stays installed: a pending real-time signal meeting its
# default action would end the process).
_pending: list[str] = []


def _raise_pending(signum, frame) -> None:
    if _pending:
        raise CheckpointError(_pending.pop())


@contextlib.contextmanager
def dead_writer_raises(path: str, poll_s: float = 0.2) -> Iterator[None]:
    """Run the block (one checkpoint save into `path`) with a watcher over the child processes it starts:
    the first to exit non-zero ends the block with a CheckpointError naming it, after its surviving
    siblings are killed. Main thread only (elsewhere the block runs unwatched: only the main thread can
    take the signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(INTERRUPT_SIGNAL, _raise_pending)
    before = set(_children())
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            for p in set(_children()) - before:
                if p.exitcode:  # None: running, 0: done
                    _pending.append(f"checkpoint save into '{path}': writer process {p.pid} {_ending(p.exitcode)}; "
                                    f"the checkpoint is incomplete and was not marked latest")
                    signal.pthread_kill(threading.main_thread().ident, INTERRUPT_SIGNAL)
                    return

    watcher = threading.Thread(target=watch, name="checkpoint-writer-watch", daemon=True)
    watcher.start()
    try:
        yield
    except CheckpointError:
        for p in _writers(set(_children()) - before):  # the dead one's siblings would hang this process's exit
            p.kill()
            p.join()
        raise
    finally:
        stop.set()
        watcher.join()
        _pending.clear()
