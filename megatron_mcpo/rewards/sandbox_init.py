"""The privileged side of the code sandbox: a zygote that builds one isolated session per program.

`sandbox.py` starts one zygote per pool slot: `python -s -P sandbox_init.py` as root, with an empty
environment. The zygote never runs untrusted code. For each program it forks; the child unshares
mount, network, IPC, UTS and PID namespaces and forks again, so the grandchild is the init (PID 1)
of a fresh PID namespace, still root. That session process:
  1. masks directories the dropped uid could not traverse (e.g. a 0700 /root holding the interpreter)
     with an empty tmpfs, re-exposing only the interpreter's own directories inside it;
  2. makes every mount read-only and nosuid (one recursive mount_setattr), then mounts a private,
     size-limited tmpfs on /tmp (the working directory) and /dev/shm, and a fresh /proc that shows
     only this namespace (the scorer's /proc/<pid>/environ is unreachable); all of it vanishes with
     the namespace;
  3. switches to the slot's unprivileged uid/gid (no supplementary groups, no capabilities,
     no_new_privs so setuid binaries cannot regain root), and makes itself non-dumpable so the
     program can neither ptrace it nor open /proc/1/fd.
Then it runs each test in a forked child under rlimits (CPU, address space, file size, processes,
open files, no core), holds the test's whole process tree to the CPU limit as well, and, as the namespace's init, SIGKILLs and reaps every other process after each
test (signals sent from inside the namespace cannot kill its init). Untrusted code only ever runs in
those children, and no process here ever sees an expected output, so a program cannot forge a
verdict. Forking a warm zygote instead of starting Python per program is what makes this cheap.

Protocol: messages to the zygote are length-prefixed JSON (4-byte big-endian length), so a forked
session can go on reading the same pipe without either process reading ahead of the other:
  header {"uid", "limits": {...}, "mode": "stdio"|"call"|"assert", "program", "fn_name"?,
  "entry_point"?}, then per test {"stdin": str} | {"args": list} | {"code": str}, then {"end": true}.
Replies are JSON lines: {"ready": true} | {"error": str} after setup, one result per test ({"status",
"exit_code", "signal", "cpu_s", "wall_s", "stdout", "stderr", "payload"}), and {"done": true} from the
zygote once the session and everything in it are gone.
Stand-alone on purpose (stdlib only): it must not import the package it is protecting.
"""
import atexit
import ctypes
import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000)
AT_FDCWD, AT_RECURSIVE, AT_EMPTY_PATH = -100, 0x8000, 0x1000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 0x1, os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 alike
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
CHUNK = 1 << 16
STDERR_TAIL = 4096
CPU_POLL_S = 0.1  # how often a running test's whole process tree is checked against the CPU limit
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPILE_ERROR = '"compile_error"'


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option, value):
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _hidden_ancestor(path):
    """First ancestor of `path` that others may not traverse (mode lacks o+x), or None."""
    cur = ""
    for part in path.strip("/").split("/")[:-1]:
        cur += "/" + part
        if not os.stat(cur).st_mode & 0o001:
            return cur
    return None


def runtime_masks():
    """{non-traversable dir: [interpreter dirs below it to re-expose]} for the running interpreter."""
    wanted = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if os.path.isdir(p)}
    # Expose outermost directories only: binding a parent already carries its children.
    roots = sorted(p for p in wanted if not any(p.startswith(q + "/") for q in wanted))
    masks = {}
    for p in roots:
        hidden = _hidden_ancestor(p)
        if hidden is not None:
            masks.setdefault(hidden, []).append(p)
    return masks


def _apply_masks(masks):
    for hidden, paths in masks.items():
        clones = []
        for p in paths:
            flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
            clones.append((p, _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, p.encode(), flags), f"open_tree {p}")))
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for p, fd in clones:
            os.makedirs(p, exist_ok=True)
            _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, p.encode(), MOVE_MOUNT_F_EMPTY_PATH),
                   f"move_mount {p}")
            os.close(fd)


def setup(uid, limits, masks):
    """In the fresh namespaces: build the filesystem view and drop privileges (module docstring)."""
    _apply_masks(masks)
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)), "mount_setattr /")
    tmp_opts = f"mode=0700,uid={uid},gid={uid},size={limits['tmp_mb']}m,nr_inodes={limits['tmp_inodes']}"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir("/tmp")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # from root: clears every capability
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the uid change cleared the earlier one


def kill_and_reap_all():
    """As the namespace's init: SIGKILL every other process here and reap them all."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _exit_status(code):
    """Exit status Python itself would give for SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _jsonable(obj):
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"result of type {type(obj).__name__} is not JSON serialisable")


def _child(job, test, limits, nonce):
    """Runs in the forked test process: apply limits, run the program, never return."""
    os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _prctl(PR_SET_DUMPABLE, 1)
    mb = 1 << 20
    cpu = max(1, int(limits["cpu_time_s"] + 0.999))
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
                       (resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb,) * 2),
                       (resource.RLIMIT_NPROC, (limits["max_processes"],) * 2),
                       (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", line_buffering=True)
    sys.argv = ["solution.py"]
    main = types.ModuleType("__main__")
    main.__file__ = "/tmp/solution.py"
    sys.modules["__main__"] = main
    status, payload = 0, None
    try:
        try:
            code = compile(job["program"], "solution.py", "exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
            traceback.print_exc(limit=0)
            os.write(3, COMPILE_ERROR.encode() + b"\n")
            os._exit(1)
        exec(code, main.__dict__)
        mode = job["mode"]
        if mode == "call":
            name = job["fn_name"]
            solution = main.__dict__.get("Solution")
            target = getattr(solution(), name) if isinstance(solution, type) and hasattr(solution, name) \
                else main.__dict__[name]
            payload = json.dumps(target(*test["args"]), default=_jsonable)
        elif mode == "assert":
            exec(compile(test["code"], "tests.py", "exec"), main.__dict__)
            if job.get("entry_point"):
                main.__dict__["check"](main.__dict__[job["entry_point"]])
            payload = nonce
    except SystemExit as e:
        status, payload = _exit_status(e.code), None
    except BaseException:
        traceback.print_exc()
        status, payload = 1, None
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # what interpreter exit does: join non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if payload is not None:
            os.write(3, payload.encode() + b"\n")
    except BaseException:
        status = status or 1
    os._exit(status)


def _memfd_with(data):
    fd = os.memfd_create("stdin")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _pump(fd, buf, tail_only):
    """Append one chunk read from `fd` to `buf`; False at end of file."""
    chunk = os.read(fd, CHUNK)
    buf += chunk
    if tail_only and len(buf) > STDERR_TAIL:
        del buf[:len(buf) - STDERR_TAIL]
    return bool(chunk)


def _tree_cpu():
    """CPU seconds used so far by every process in this namespace except init (zombies included)."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_test(job, test, limits):
    """Run one test in a fresh child; return its result record (see the protocol)."""
    nonce = os.urandom(16).hex()
    in_fd = _memfd_with(test.get("stdin", "").encode())
    (out_r, out_w), (err_r, err_w), (res_r, res_w) = os.pipe(), os.pipe(), os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            for src, dst in ((in_fd, 0), (out_w, 1), (err_w, 2), (res_w, 3)):
                os.dup2(src, dst)
            _child(job, test, limits, nonce)
        finally:
            os._exit(127)
    for fd in (in_fd, out_w, err_w, res_w):
        os.close(fd)
    cap = limits["output_mb"] << 20
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (pidfd, *bufs):
        poller.register(fd, select.POLLIN)
    deadline = start + limits["wall_time_s"]
    cpu_before = _children_cpu()
    next_cpu_check = start + CPU_POLL_S
    exited = wall_timeout = overflow = cpu_exceeded = False
    while not (exited or overflow or cpu_exceeded):
        now = time.monotonic()
        if now >= deadline:
            wall_timeout = True
            break
        for fd, _ in poller.poll(max(0.0, min(deadline, next_cpu_check) - now) * 1000):
            if fd == pidfd:
                exited = True
            elif not _pump(fd, bufs[fd], fd == err_r):
                poller.unregister(fd)
        overflow = len(bufs[out_r]) > cap or len(bufs[res_r]) > cap
        # RLIMIT_CPU binds each process alone: the limit is on the whole tree (e.g. a fork bomb).
        if not exited and time.monotonic() >= next_cpu_check:
            cpu_exceeded = _tree_cpu() >= limits["cpu_time_s"]
            next_cpu_check = time.monotonic() + CPU_POLL_S
    if not exited:
        os.kill(pid, signal.SIGKILL)
    _, wstatus, _ = os.wait4(pid, 0)
    wall = time.monotonic() - start
    kill_and_reap_all()  # whatever the program started dies with it
    cpu = _children_cpu() - cpu_before  # everything the test started has been reaped by now
    for fd, buf in bufs.items():  # every writer is dead now: drain to end of file
        while len(buf) <= cap and _pump(fd, buf, fd == err_r):
            pass
        os.close(fd)
    os.close(pidfd)
    overflow = overflow or len(bufs[out_r]) > cap or len(bufs[res_r]) > cap
    sig = os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None
    exit_code = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None
    lines = bytes(bufs[res_r]).decode("utf-8", "replace").splitlines()
    payload = lines[-1] if lines else None
    if overflow:
        status = "output_limit"
    elif wall_timeout or cpu_exceeded or cpu >= limits["cpu_time_s"] or sig == signal.SIGXCPU:
        status = "timeout"
    elif sig is not None:
        status = "signal"
    elif exit_code != 0:
        status = "compile_error" if payload == COMPILE_ERROR else "runtime_error"
    elif job["mode"] == "assert" and payload != nonce or job["mode"] == "call" and payload is None:
        status = "incomplete"  # exited cleanly without reaching the end of the tests
    else:
        status = "ok"
    return {"status": status, "exit_code": exit_code, "signal": sig, "cpu_s": round(cpu, 4),
            "wall_s": round(wall, 4), "stdout": bytes(bufs[out_r][:cap]).decode("utf-8", "replace"),
            "stderr": bytes(bufs[err_r]).decode("utf-8", "replace"),
            "payload": payload if job["mode"] == "call" else None}


def _read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv():
    """Next length-prefixed JSON message on stdin, or None at end of input."""
    head = _read_exact(4)
    body = head and _read_exact(struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def _send(obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def session(header, masks):
    """PID 1 of the new namespaces: set up, then answer test messages until the end message."""
    limits = header["limits"]
    try:
        setup(int(header["uid"]), limits, masks)
    except OSError as e:
        _send({"error": f"sandbox setup failed: {e}"})
        return 1
    _send({"ready": True})
    while True:
        msg = _recv()
        if msg is None or msg.get("end"):
            return 0
        _send(run_test(header, msg, limits))


def _spawn_session(header, masks):
    """Fork a child that enters new namespaces and forks the session as their PID 1."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID),
               "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here may reach the host's mounts
        init = os.fork()
        if init == 0:
            code = 1
            try:
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                code = session(header, masks)
            finally:
                os._exit(code)
        status = os.waitstatus_to_exitcode(os.waitpid(init, 0)[1])
    except OSError as e:
        _send({"error": f"sandbox setup failed: {e}"})
    finally:
        os._exit(status & 0xFF)


def main():
    masks = runtime_masks()
    while True:
        header = _recv()
        if header is None:
            return 0
        pid = _spawn_session(header, masks)
        os.waitpid(pid, 0)
        _send({"done": True})


if __name__ == "__main__":
    sys.exit(main())
