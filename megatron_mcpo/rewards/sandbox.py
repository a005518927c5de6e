"""Code sandbox, scorer side: a pool of isolated program runners with bounded concurrency.

`Sandbox.run(program, tests, ...)` executes one untrusted Python program against a list of tests in a
fresh set of Linux namespaces (PID, mount, network, IPC, UTS) as an unprivileged uid, each test in a
forked process under rlimits; see `sandbox_init.py` for how the isolation is built. Every call takes
a pool slot; each slot has its own uid (so RLIMIT_NPROC, which counts per uid, binds each program
separately) and its own warm zygote process that forks the sessions. Needs root and Linux >= 5.12
(mount_setattr); the first call says clearly if they are missing.

Verdicts: CPU time (RLIMIT_CPU plus the measured rusage) decides time-outs, so they do not depend on
machine load; `wall_time_s` is only a backstop for programs that sleep or fork-bomb. The expected
outputs never enter the sandbox: the caller's `judge` compares each test result outside it and may
stop the run early.
"""
import dataclasses
import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")
_SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp",
                "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_UID_BASE = 100_000  # slot uids: _UID_BASE + (pid << 8) + slot, unique per live scorer process
_slot_ids = iter(range(1 << 30))
_slot_lock = threading.Lock()
STATUSES = ("ok", "runtime_error", "compile_error", "timeout", "signal", "output_limit", "incomplete",
            "sandbox_error")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built on this machine (not root, no namespaces, old kernel)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-test limits of one program run (the CPU limit decides time-outs; wall is a backstop)."""
    cpu_time_s: float = 5.0
    wall_time_s: float = 20.0
    memory_mb: int = 1024  # RLIMIT_AS
    max_processes: int = 32  # RLIMIT_NPROC of the slot uid: threads and processes together
    file_size_mb: int = 16  # RLIMIT_FSIZE
    output_mb: int = 8  # stdout beyond this is an output_limit verdict
    tmp_mb: int = 64  # private tmpfs on /tmp and /dev/shm
    tmp_inodes: int = 4096
    open_files: int = 256

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"SandboxLimits.{f.name} must be > 0, got {getattr(self, f.name)!r}")


@dataclass
class RunResult:
    """Outcome of one test: `status` is one of STATUSES; `payload` is the JSON return value (call mode)."""
    status: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    payload: Optional[str] = None


class _Zygote:
    """One slot's privileged runner process (sandbox_init.py), restarted whenever it misbehaves."""

    def __init__(self, uid: int):
        self.uid = uid
        self.proc: Optional[subprocess.Popen] = None
        self._buf = bytearray()

    def start(self):
        # Its own process group, so that stop() can kill the zygote and its session at once.
        self.proc = subprocess.Popen([sys.executable, "-s", "-P", _INIT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=_SANDBOX_ENV, cwd="/", bufsize=0,
                                     start_new_session=True)
        self._buf.clear()

    def stop(self, grace_s: float = 1.0):
        """End of input lets a healthy session and the zygote exit (each reaping its children);
        whatever is still there after `grace_s` is killed (a dead session's namespace goes with it)."""
        if self.proc is None:
            return
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def send(self, obj):
        body = json.dumps(obj).encode()
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)

    def recv(self, timeout: float) -> Optional[dict]:
        """Next reply line, or None on time-out or end of output."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        return json.loads(line)


class Sandbox:
    """A pool of `num_workers` sandbox slots (0: one per CPU core); `run` is thread-safe and blocks
    until a slot is free. Close it (or use it as a context manager) to stop the zygotes."""

    def __init__(self, num_workers: int = 0, limits: SandboxLimits = SandboxLimits()):
        self.num_workers = num_workers or os.cpu_count() or 1
        if self.num_workers > 256:
            raise ValueError(f"at most 256 sandbox slots per process, got {self.num_workers}")
        self.limits = limits
        self._slots: "queue.Queue[_Zygote]" = queue.Queue()
        with _slot_lock:  # uids unique across Sandbox objects of this process
            for _ in range(self.num_workers):
                self._slots.put(_Zygote(_UID_BASE + (os.getpid() << 8) + next(_slot_ids) % 256))
        self.slot_uids = tuple(z.uid for z in self._slots.queue)
        self._closed = False

    def run(self, program: str, tests: list, mode: str = "stdio", fn_name: Optional[str] = None,
            entry_point: Optional[str] = None, judge: Optional[Callable[[int, RunResult], bool]] = None,
            limits: Optional[SandboxLimits] = None) -> list:
        """Run `program` on `tests` and return one RunResult per test executed.

        mode "stdio": each test is {"stdin": str}; "call": {"args": list} calls `fn_name` (a function,
        or the method of `class Solution`); "assert": {"code": str} runs test code after the program
        (then `check(entry_point)` if given). `judge(i, run)` returns False to stop after test i.
        """
        if mode not in ("stdio", "call", "assert"):
            raise ValueError(f"unknown sandbox mode {mode!r}")
        if mode == "call" and not fn_name:
            raise ValueError("mode 'call' needs fn_name")
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        limits = limits or self.limits
        header = {"uid": 0, "limits": dataclasses.asdict(limits), "mode": mode, "program": program,
                  "fn_name": fn_name, "entry_point": entry_point}
        zygote = self._slots.get()
        try:
            return self._session(zygote, header, tests, limits, judge)
        finally:
            if self._closed:
                zygote.stop()
            self._slots.put(zygote)

    def _session(self, zygote: _Zygote, header, tests, limits, judge):
        if zygote.proc is None or zygote.proc.poll() is not None:
            zygote.start()
        header["uid"] = zygote.uid
        runs = []
        try:
            zygote.send(header)
            reply = zygote.recv(timeout=30.0)
            if reply is None or "error" in reply:
                raise SandboxUnavailable(
                    (reply or {}).get("error", "sandbox did not start") + " (the code sandbox needs root, "
                    "Linux >= 5.12 and permission to create namespaces)")
            for i, test in enumerate(tests):
                zygote.send(test)
                reply = zygote.recv(timeout=limits.wall_time_s + 10.0)
                if reply is None or "status" not in reply:  # backstop, or the session ended early
                    runs.append(RunResult("sandbox_error", stderr=f"sandbox session failed: {reply!r}"))
                    zygote.stop()
                    return runs
                runs.append(RunResult(**reply))
                if judge is not None and not judge(i, runs[-1]):
                    break
            zygote.send({"end": True})
            if zygote.recv(timeout=10.0) != {"done": True}:
                zygote.stop()
        except (BrokenPipeError, ValueError) as e:  # the zygote died or spoke garbage: start afresh
            zygote.stop()
            runs.append(RunResult("sandbox_error", stderr=f"sandbox failed: {e}"))
        except BaseException:
            zygote.stop()
            raise
        return runs

    def close(self):
        self._closed = True
        while True:
            try:
                self._slots.get_nowait().stop()
            except queue.Empty:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
