"""Reward throughput: sandboxed programs/s vs the same programs unsandboxed, and math checks/s.

    python benchmarks/rewards.py [--programs 200] [--repeats 3] [--out benchmarks/results/rewards_cpu.json]

The program batch is half correct, half failing (wrong answer, runtime error) small stdin/stdout
programs with 3 tests each. "Sandboxed" runs them through `Sandbox` (namespaces, dropped uid,
rlimits, one forked process per test) with one slot per core; "unsandboxed" runs the same tests with
plain `exec` in a `ProcessPoolExecutor` of the same size (no isolation at all). Both are timed side by
side, alternating, and the medians are reported with their ratio. Math: `RewardScorer.score_batch` on
math items (worker processes running math-verify), timed after the pool is warm.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_mcpo.rewards import RewardScorer, Sandbox, SandboxLimits  # noqa: E402
from megatron_mcpo.rewards.code import same_stdout  # noqa: E402

from common import machine_info  # noqa: E402  (benchmarks/common.py)

PROGRAMS = [  # (program, passes its tests)
    ("a, b = map(int, input().split())\nprint(a + b)", True),
    ("n = int(input())\nprint(n)", False),
    ("import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))", True),
    ("a, b = map(int, input().split())\nprint(a - b)", False),
    ("x = input().split()\nprint(int(x[0]) + int(x[1]))", True),
    ("raise RuntimeError('bug')", False),
    ("from functools import reduce\nprint(reduce(lambda s, t: s + int(t), input().split(), 0))", True),
    ("print(int(input()) + 1)", False),
]
SUBPROCESS_PROGRAMS = 40  # the slow baseline runs on a prefix of the batch
TESTS = [("1 2\n", "3"), ("40 2\n", "42"), ("-5 5\n", "0")]
MATH = [  # (answer, gold) templates in k: every item is distinct, so no parse cache helps
    ("\\frac{{{k}}}{{{k1}}}", "{k}/{k1}"), ("{k}\\sqrt{{2}}", "\\sqrt{{{kk2}}}"), ("[{k},{k1})", "[{k}, {k1})"),
    ("x^2+{k2}x+{kk}", "(x+{k})^2"), ("\\{{{k},{k1}\\}}", "\\{{{k1},{k}\\}}"), ("{k}.14", "{k}+\\pi"),
    ("{k}\\%", "{k}"), ("\\frac{{{k}}}{{4}}", "{k}.7")]
MATH_EQUAL = [True, True, True, True, True, False, True, False]


def _unsandboxed(program: str) -> bool:
    """Run one program's tests in this (pool worker) process with plain exec."""
    for stdin, expected in TESTS:
        out = io.StringIO()
        sys.stdin = io.StringIO(stdin)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(program, "solution.py", "exec"), {"__name__": "__main__"})
        except Exception:
            return False
        finally:
            sys.stdin = sys.__stdin__
        if not same_stdout(out.getvalue(), expected):
            return False
    return True


def _subprocess(program: str) -> bool:
    """Run one program's tests the common unisolated way: a fresh interpreter per test."""
    for stdin, expected in TESTS:
        proc = subprocess.run([sys.executable, "-c", program], input=stdin, capture_output=True, text=True,
                              timeout=30)
        if proc.returncode != 0 or not same_stdout(proc.stdout, expected):
            return False
    return True


def _sandboxed(sandbox: Sandbox, program: str) -> bool:
    ok = []
    sandbox.run(program, [{"stdin": s} for s, _ in TESTS],
                judge=lambda i, run: ok.append(run.status == "ok" and same_stdout(run.stdout, TESTS[i][1])) or ok[-1])
    return len(ok) == len(TESTS) and all(ok)


def bench_programs(n: int, repeats: int, workers: int) -> dict:
    batch = [PROGRAMS[i % len(PROGRAMS)] for i in range(n)]
    expected = [p for _, p in batch]
    programs = [p for p, _ in batch]
    sandboxed, unsandboxed, spawned = [], [], []
    with Sandbox(workers, SandboxLimits()) as sandbox, ThreadPoolExecutor(workers) as threads, \
            ProcessPoolExecutor(workers) as pool:
        list(threads.map(lambda p: _sandboxed(sandbox, p), programs[:workers * 2]))  # warm the zygotes
        list(pool.map(_unsandboxed, programs[:workers * 2]))
        for _ in range(repeats):
            t = time.perf_counter()
            got = list(threads.map(lambda p: _sandboxed(sandbox, p), programs))
            sandboxed.append(n / (time.perf_counter() - t))
            assert got == expected, "sandboxed verdicts differ from the intended ones"
            t = time.perf_counter()
            got = list(pool.map(_unsandboxed, programs, chunksize=4))
            unsandboxed.append(n / (time.perf_counter() - t))
            assert got == expected, "unsandboxed verdicts differ from the intended ones"
            t = time.perf_counter()
            got = list(threads.map(_subprocess, programs[:SUBPROCESS_PROGRAMS]))
            spawned.append(len(got) / (time.perf_counter() - t))
            assert got == expected[:SUBPROCESS_PROGRAMS], "subprocess verdicts differ from the intended ones"
    s, u = statistics.median(sandboxed), statistics.median(unsandboxed)
    return {"programs": n, "tests_per_program": len(TESTS), "workers": workers,
            "sandboxed_programs_per_s": round(s, 1), "unsandboxed_programs_per_s": round(u, 1),
            "sandboxed_over_unsandboxed": round(s / u, 4),
            "subprocess_per_test_programs_per_s": round(statistics.median(spawned), 1),
            "sandboxed_over_subprocess_per_test": round(s / statistics.median(spawned), 3),
            "runs_subprocess_per_test": [round(x, 1) for x in spawned], "runs_sandboxed": [round(x, 1) for x in sandboxed],
            "runs_unsandboxed": [round(x, 1) for x in unsandboxed]}


def _math_items(n: int, offset: int) -> list:
    items = []
    for i in range(n):
        k = offset + i // len(MATH) + 2
        answer, gold = (t.format(k=k, k1=k + 1, k2=2 * k, kk=k * k, kk2=2 * k * k) for t in MATH[i % len(MATH)])
        items.append(("math", f"so \\boxed{{{answer}}}", gold))
    return items


def bench_math(n: int, repeats: int, workers: int) -> dict:
    rates, accs = [], []
    expected = sum(MATH_EQUAL[i % len(MATH)] for i in range(n)) / n
    with RewardScorer(num_workers=workers) as scorer:
        t = time.perf_counter()
        scorer.score_batch(_math_items(workers, 10 ** 6))
        warmup = time.perf_counter() - t
        for r in range(repeats):
            items = _math_items(n, offset=r * n)
            t = time.perf_counter()
            results = scorer.score_batch(items)
            rates.append(n / (time.perf_counter() - t))
            accs.append(sum(x["acc"] for x in results) / n)
    assert all(a == expected for a in accs), (accs, expected)
    return {"checks": n, "workers": workers, "math_checks_per_s": round(statistics.median(rates), 1),
            "runs": [round(x, 1) for x in rates], "pool_start_s": round(warmup, 2), "acc": expected}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--math", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "rewards_cpu.json"))
    args = parser.parse_args()
    result = {"machine": machine_info(math_verify=metadata.version("math-verify")), "code": bench_programs(args.programs, args.repeats, args.workers),
              "math": bench_math(args.math, args.repeats, args.workers),
              "note": "shared 2-core machine: other jobs may have run at the same time; the ratio is measured "
                      "side by side, alternating, and is the figure to compare"}
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
