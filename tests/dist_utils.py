"""Run a function on N local processes (gloo), with a hard timeout so a hung collective fails."""
from __future__ import annotations

import os
import pickle
import traceback

import torch.multiprocessing as mp

from megatron_mcpo.distributed import free_port


def _worker(rank, world_size, port, fn, kwargs, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    try:
        import torch

        torch.set_num_threads(1)
        result = fn(rank, **kwargs)
        queue.put((rank, "ok", pickle.dumps(result)))  # by value: the child exits before the parent reads
    except BaseException:  # report everything, including assertion errors, to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def run_distributed(fn, world_size: int = 2, timeout: float = 300.0, **kwargs) -> list:
    """Call fn(rank, **kwargs) on `world_size` spawned processes; return results ordered by rank.

    fn must be importable (module level). Raises with the child's traceback on failure and kills all
    children when the timeout elapses.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, kwargs, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    import queue as _q
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"distributed test timed out after {timeout}s ({len(results)} ranks finished)")
            try:
                rank, status, payload = queue.get(timeout=min(left, 5.0))
            except _q.Empty:
                if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
                    dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                    raise RuntimeError(f"rank(s) died without reporting: {dead}")
                continue
            if status == "ok":
                results[rank] = pickle.loads(payload)
            else:
                errors.append(f"--- rank {rank} ---\n{payload}")
                break  # the other ranks are likely stuck in a collective now
    finally:
        for p in procs:
            p.join(timeout=2 if errors else 10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]


def _each(rank, each_fn, runs, fn_kwargs):
    from megatron.core import parallel_state as ps

    out = {}
    for name, args in runs.items():
        out[name] = each_fn(rank, **args, **fn_kwargs)
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()  # the next run builds its own layout's groups on the same process group
    return out


def run_each(fn, runs: dict, world_size: int = 2, timeout: float = 1200.0, **kwargs) -> dict:
    """{name: results ordered by rank} of fn(rank, **runs[name], **kwargs) for every named run (a parallel
    layout, say), one after another in the order given, in ONE launch of `world_size` processes: a launch
    costs seconds of CPU per process to start and import torch and megatron-core, the tiny model's steps
    far less."""
    per_rank = run_distributed(_each, world_size, timeout, each_fn=fn, runs=runs, fn_kwargs=kwargs)
    return {name: [r[name] for r in per_rank] for name in runs}


def rows_by_index(results: list, key: str, n: int):
    """Stack per-rank rows of `key` into global order using each last-stage rank's "index" (global row
    ids); replicas of a row (TP ranks) must agree."""
    import torch

    rows = {}
    for r in results:
        if r["last"]:
            for i, idx in enumerate(r["index"].tolist()):
                if idx in rows:
                    assert torch.allclose(rows[idx], r[key][i], atol=1e-6), "model-parallel replicas disagree"
                rows[idx] = r[key][i]
    return torch.stack([rows[i] for i in range(n)])
