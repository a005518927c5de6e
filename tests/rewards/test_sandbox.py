"""Hostile programs in the code sandbox: each scores 0, ends within its limit, leaves nothing behind,
and the scorer keeps working. Limits are the small ones of conftest.LIMITS (1 s CPU, 3 s wall)."""
import os
import socket
import threading
import time
import uuid

import pytest

from megatron_mcpo.rewards import Sandbox

ADD = {"inputs": ["1 2\n", "40 2\n"], "outputs": ["3\n", "42\n"]}
ADD_OK = "a, b = map(int, input().split())\nprint(a + b)\n"


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\n"


def sandbox_processes(sandbox, zombies=True) -> list:
    """PIDs of processes (with or without zombies) under any of the sandbox's slot uids."""
    uids = set(sandbox.slot_uids)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) in uids and (zombies or not fields["State"].strip().startswith("Z")):
            found.append(int(pid))
    return found


def run_hostile(scorer, program, ground_truth=ADD):
    start = time.monotonic()
    result = scorer.score("code", fenced(program), ground_truth)
    elapsed = time.monotonic() - start
    assert result["score"] == 0.0 and result["acc"] is False, result
    # Tests stop at the first failure, so one test's wall limit plus start-up and clean-up bounds the run
    # (a margin for a loaded machine: a fork bomb's clean-up took 3.5 s beyond the limit at load 7).
    assert elapsed < scorer.sandbox_limits.wall_time_s + 8.0, elapsed
    assert sandbox_processes(scorer.sandbox) == []
    follow_up = scorer.score("code", fenced(ADD_OK), ADD)
    assert follow_up["score"] == 1.0, follow_up
    return result


def test_correct_and_failing_program(scorer):
    assert scorer.score("code", fenced(ADD_OK), ADD)["score"] == 1.0
    wrong = scorer.score("code", fenced("print(3)"), ADD)
    assert wrong["score"] == 0.0 and wrong["details"]["status"] == "wrong_answer"
    assert wrong["details"]["passed"] == 1


def test_infinite_loop_is_a_cpu_timeout(scorer):
    result = run_hostile(scorer, "while True:\n    pass")
    assert result["details"]["status"] == "timeout"


def test_sleeping_program_hits_the_wall_backstop(scorer):
    result = run_hostile(scorer, "import time\ntime.sleep(60)")
    assert result["details"]["status"] == "timeout"


def test_fork_bomb_is_contained(scorer):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    # RLIMIT_NPROC caps the processes; the CPU limit holds for the whole tree, not per process
    assert run_hostile(scorer, program)["details"]["status"] == "timeout"


def test_daemonised_child_is_killed(scorer):
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               "        time.sleep(1000)\n    os._exit(0)\nprint('bye')")
    run_hostile(scorer, program)


@pytest.mark.parametrize("program", ["x = bytearray(1 << 34)",
                                     "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"])
def test_memory_bomb(scorer, program):
    result = run_hostile(scorer, program)
    assert result["details"]["status"] == "runtime_error"


def test_huge_output(scorer):
    result = run_hostile(scorer, "while True:\n    print('x' * 100000)")
    assert result["details"]["status"] == "output_limit"


def test_recursion_bomb(scorer):
    run_hostile(scorer, "def f(n):\n    return f(n + 1)\nf(0)")
    deep = "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)"
    # Python 3.11 frames live on the heap: this ends in MemoryError, a time-out or a crash
    assert run_hostile(scorer, deep)["details"]["status"] in ("signal", "runtime_error", "timeout")


def test_writes_outside_the_private_tmp_do_not_land(scorer, tmp_path):
    name = f"mcpo_leak_{uuid.uuid4().hex}"
    targets = [tmp_path / name, f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), name)]
    program = ("import os\nfor p in %r:\n    try:\n        open(p, 'w').write('x')\n    except OSError:\n"
               "        pass\nprint(sorted(os.listdir('/tmp')))\nopen('%s', 'w').write('x')") % (
        [str(t) for t in targets], targets[0])
    result = run_hostile(scorer, program)
    assert result["details"]["status"] == "runtime_error"  # the write to the host path failed
    assert not any(os.path.exists(t) for t in targets)


def test_environment_and_scorer_proc_are_hidden(scorer, monkeypatch):
    monkeypatch.setenv("MCPO_SECRET", "s3cret")
    program = ("import os\nsecret = os.environ.get('MCPO_SECRET', '')\ntry:\n"
               "    secret = secret or open('/proc/%d/environ').read()\nexcept OSError:\n    pass\n"
               "print('s3cret' if 's3cret' in secret else 'none')") % os.getpid()
    result = run_hostile(scorer, program, {"inputs": [""], "outputs": ["s3cret"]})
    assert result["details"]["status"] == "wrong_answer"


def test_network_is_unreachable(scorer):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    port = server.getsockname()[1]
    accepted = []

    def serve():
        try:
            conn, _ = server.accept()
            accepted.append(conn)
            conn.sendall(b"token\n")
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    program = ("import socket\ns = socket.create_connection(('127.0.0.1', %d), timeout=1)\n"
               "print(s.recv(100).decode().strip())") % port
    result = run_hostile(scorer, program, {"inputs": [""], "outputs": ["token"]})
    assert result["details"]["status"] == "runtime_error"
    server.close()
    thread.join(timeout=10)
    assert accepted == []


def test_killing_the_parent_and_init_fails(scorer):
    program = ("import os, signal\nfor pid in (os.getppid(), 1, %d):\n    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nprint('alive')") % os.getpid()
    result = run_hostile(scorer, program)
    assert result["details"]["status"] == "wrong_answer"  # it survived and printed 'alive'


def test_os_exit_loses_unflushed_output(scorer):
    run_hostile(scorer, "import os\n" + ADD_OK + "os._exit(0)")


@pytest.mark.parametrize("escape", ["import os\nos._exit(0)", "import sys\nsys.exit(0)",
                                    "raise SystemExit", "import os\nos.kill(os.getpid(), 9)"])
def test_skipping_asserts_scores_zero(scorer, escape):
    program = "def add(a, b):\n    return a - b\n" + escape
    run_hostile(scorer, program, {"assert": "assert add(1, 2) == 3"})


def test_privileges_are_dropped(scorer):
    program = ("import os\nprint(os.getuid() != 0 and os.geteuid() != 0, os.getpid(), "
               "os.access('/etc/passwd', os.W_OK), len(os.listdir('/proc/1/fd')) if os.access('/proc/1/fd', os.R_OK) else 0)")
    result = scorer.sandbox.run(program, [{"stdin": ""}])
    assert result[0].status == "ok", result
    # unprivileged, a small pid in its own namespace, nothing writable, PID 1's fds unreadable
    nonroot, pid, writable, fds = result[0].stdout.split()
    assert nonroot == "True" and int(pid) < 10 and writable == "False" and fds == "0"


def test_results_are_deterministic(scorer):
    program = "print(list({'apple', 'banana', 'cherry', 'damson', 'elder'}))"
    runs = [scorer.sandbox.run(program, [{"stdin": ""}])[0].stdout for _ in range(3)]
    assert runs[0] and runs.count(runs[0]) == 3


def test_pool_runs_programs_in_parallel(limits):
    with Sandbox(num_workers=2, limits=limits) as sandbox:
        assert len(set(sandbox.slot_uids)) == 2
        program = "import time\nt = time.time()\nwhile time.time() - t < 0.5:\n    pass\nprint(input())"
        results = [None] * 4
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, sandbox.run(program, [{"stdin": str(i)}]))) for i in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        elapsed = time.monotonic() - start
        assert [r[0].stdout.strip() for r in results] == ["0", "1", "2", "3"]
        # 4 runs of >= 0.5 s CPU on 2 slots cannot finish in under 1 s
        assert elapsed >= 1.0
    assert sandbox_processes(sandbox) == []


def test_a_dead_zygote_is_reported_and_replaced(limits):
    def zygotes():  # this test's zygotes: children of this process running sandbox_init.py, not seen before
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if ppid == os.getpid() and b"sandbox_init.py" in cmdline and int(pid) not in others:
                pids.append(int(pid))
        return pids

    others = set()
    others.update(zygotes())
    with Sandbox(num_workers=1, limits=limits) as sandbox:
        assert sandbox.run("print(1)", [{"stdin": ""}])[0].stdout == "1\n"
        (zygote,) = zygotes()
        runs = sandbox.run("print(input())", [{"stdin": "a"}, {"stdin": "b"}],
                           judge=lambda i, run: os.kill(zygote, 9) or True)
        assert [r.status for r in runs] == ["ok", "sandbox_error"]
        assert sandbox.run("print(2)", [{"stdin": ""}])[0].stdout == "2\n"
        assert zygotes() != [zygote]
    # The killed zygote's session died with it; only the host's init can reap that orphan, when it will.
    assert zygotes() == [] and sandbox_processes(sandbox, zombies=False) == []
