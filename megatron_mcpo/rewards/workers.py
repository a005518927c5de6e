"""A pool of persistent worker processes for CPU-bound checks, with a hard time limit per call.

Each worker is a separate Python process that runs one call at a time in its main thread, so
libraries whose own time-outs rely on SIGALRM (math-verify) work there whatever thread the caller is
on. The limit is also enforced from outside: a call that has not answered by its deadline gets its
worker killed and replaced, and raises `WorkerTimeout`. Workers are started lazily and reused.
Calls are `(module, function_name, args)` so nothing but plain data crosses the pipe.
"""
import importlib
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Optional

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SERVE = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from megatron_mcpo.rewards.workers import serve; serve(sys.argv[2:])")


STARTUP_TIMEOUT_S = 120.0


class WorkerTimeout(RuntimeError):
    """A call did not finish within its time limit (its worker was killed)."""


class WorkerError(RuntimeError):
    """A call raised in the worker, or the worker died."""


def _write_msg(fd, obj):
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(struct.pack(">Q", len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd, n, deadline: Optional[float]):
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _read_msg(fd, deadline: Optional[float] = None):
    (n,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    return pickle.loads(_read_exact(fd, n, deadline))


def serve(preload):
    """Worker main loop: answer (module, function, args) calls on stdin until end of input."""
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # stray prints must not corrupt the reply stream
    for name in preload:
        importlib.import_module(name)
    _write_msg(fd_out, ("ready", None))
    # A preemption signal reaches every process of the job: the trainer handles it and still needs its
    # scorers for the step it finishes; a worker ends when its pipe closes (the trainer exited or killed it).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            module, name, args = _read_msg(fd_in)
        except EOFError:
            return
        try:
            reply = ("ok", getattr(importlib.import_module(module), name)(*args))
        except Exception as e:  # report, keep serving
            reply = ("error", f"{type(e).__name__}: {e}")
        _write_msg(fd_out, reply)


class _Worker:
    def __init__(self, preload):
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, _PKG_ROOT, *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def kill(self):
        self.proc.kill()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait()


class WorkerPool:
    """`num_workers` (0: one per CPU core) worker processes; `call` is thread-safe and blocking."""

    def __init__(self, num_workers: int = 0, preload: tuple = ()):
        self.num_workers = num_workers or os.cpu_count() or 1
        self.preload = tuple(preload)
        self._idle: "queue.Queue[Optional[_Worker]]" = queue.Queue()
        for _ in range(self.num_workers):
            self._idle.put(None)  # started on first use
        self._closed = False
        self._lock = threading.Lock()

    def call(self, module: str, name: str, args: tuple, timeout_s: float):
        """Run `module.name(*args)` in a worker; raise WorkerTimeout after `timeout_s` seconds."""
        worker = self._idle.get()
        try:
            if worker is None or worker.proc.poll() is not None:
                worker = _Worker(self.preload)
                # start-up (imports) does not count against the call's limit
                _read_msg(worker.proc.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT_S)
            _write_msg(worker.proc.stdin.fileno(), (module, name, args))
            status, value = _read_msg(worker.proc.stdout.fileno(), time.monotonic() + timeout_s)
        except TimeoutError:
            worker.kill()
            worker = None
            raise WorkerTimeout(f"{module}.{name} took longer than {timeout_s:g} s") from None
        except (EOFError, BrokenPipeError, pickle.UnpicklingError, struct.error) as e:
            worker.kill()
            worker = None
            raise WorkerError(f"worker died during {module}.{name}: {type(e).__name__}") from None
        finally:
            with self._lock:
                if self._closed and worker is not None:
                    worker.kill()
                    worker = None
            self._idle.put(worker)
        if status != "ok":
            raise WorkerError(f"{module}.{name} failed in the worker: {value}")
        return value

    def close(self):
        with self._lock:
            self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.kill()
