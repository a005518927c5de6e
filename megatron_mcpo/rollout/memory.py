"""Colocated memory: the training state and the rollout engine take turns on the same GPU.

Each step (`rollout.placement: colocated`, GPU):
  generate -> to_training(): engine.sleep(level); Megatron's grad buffers / optimizer states back on the GPU
  -> train -> before_refit(): those states to host memory; engine weights awake -> refit
  -> after_refit(): the engine's KV cache awake -> generate ...
Offloading frees a tensor's *storage* in place (`untyped_storage().resize_(0)`) and later re-allocates and
refills it, so every view of it (parameters' `main_grad`, the optimizer's references) stays valid: the
approach of NeMo-RL and verl. An offloaded tensor must not be read (its storage is empty: a crash, not an
error), so a checkpoint save between steps runs inside training_state_resident(). The memory freed and
re-taken is reported per step (`torch.cuda.memory_allocated` deltas); on CPU nothing is measured or reported.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from megatron_mcpo.training.optimizer_fallbacks import inner_optimizers

_GB = float(1 << 30)


class StorageOffload:
    """Move the storages behind `tensors` to host memory and back (or discard and re-allocate them)."""

    def __init__(self, tensors: list[torch.Tensor]):
        storages, seen = [], set()
        for t in tensors:
            st = t.untyped_storage()
            if st.nbytes() and st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                storages.append(st)
        self._storages = storages
        self._sizes = [st.nbytes() for st in storages]
        self._host: Optional[list[Optional[torch.Tensor]]] = None

    @property
    def offloaded(self) -> bool:
        return self._host is not None

    @property
    def nbytes(self) -> int:
        return sum(self._sizes)

    @staticmethod
    def _bytes(st) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8, device=st.device).set_(st)

    def offload(self, keep: bool = True) -> None:
        """Free the storages; `keep` copies their bytes to (pinned, on GPU) host memory first."""
        if self.offloaded:
            raise RuntimeError("offload: already offloaded")
        host = []
        for st, n in zip(self._storages, self._sizes):
            if keep:
                copy = torch.empty(n, dtype=torch.uint8, pin_memory=st.device.type == "cuda")
                copy.copy_(self._bytes(st))
                host.append(copy)
            else:
                host.append(None)
            st.resize_(0)
        self._host = host

    def reload(self) -> None:
        """Re-allocate the storages (same size) and refill them from host memory where kept."""
        if not self.offloaded:
            raise RuntimeError("offload: nothing offloaded")
        for st, n, copy in zip(self._storages, self._sizes, self._host):
            st.resize_(n)
            if copy is not None:
                self._bytes(st).copy_(copy)
        self._host = None


def grad_buffer_tensors(model_chunks: list) -> list[torch.Tensor]:
    """Megatron DDP's contiguous gradient buffers (every parameter's `main_grad` is a view into one)."""
    return [b.grad_data for c in model_chunks
            for b in list(getattr(c, "buffers", [])) + list(getattr(c, "expert_parallel_buffers", []))]


def optimizer_state_tensors(optimizer, model_chunks: list) -> list[torch.Tensor]:
    """Tensors of the Megatron optimizer's inner torch optimizer(s): Adam's moments and the fp32 main
    parameters of mixed precision, leaving out anything sharing storage with the model's parameters
    (fp32 training optimizes the model parameters themselves, which generation and refit need)."""
    model = {p.untyped_storage().data_ptr() for c in model_chunks for p in c.parameters()}
    found = []
    for opt in inner_optimizers(optimizer):
        found += [p for g in opt.param_groups for p in g["params"]]
        found += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return [t for t in found if t.untyped_storage().data_ptr() not in model]


class ColocatedMemory:
    """The per-step hand-over between the engine and the training state on one GPU (module docstring)."""

    def __init__(self, engine, train_state, sleep_level: int, offload_grads: bool, offload_optimizer: bool,
                 device: torch.device):
        self.engine = engine
        self.sleep_level = sleep_level
        self.measure = device.type == "cuda"
        chunks = train_state.policy.chunks
        tensors = grad_buffer_tensors(chunks) if offload_grads else []
        # The optimizer's state exists after its first step: collected when first offloaded.
        self._optimizer = (train_state.optimizer, chunks) if offload_optimizer else None
        self._grads = StorageOffload(tensors) if tensors else None
        self._opt_offload: Optional[StorageOffload] = None

    def _allocated(self) -> float:
        return torch.cuda.memory_allocated() / _GB if self.measure else 0.0

    def _report(self, metrics: dict) -> dict:
        return metrics if self.measure else {}

    def to_training(self) -> dict:
        """After generation: put the engine to sleep and bring the training state back."""
        a0 = self._allocated()
        if self.engine is not None:
            self.engine.sleep(self.sleep_level)
            if self.measure:
                torch.cuda.empty_cache()
        a1 = self._allocated()
        for off in (self._grads, self._opt_offload):
            if off is not None and off.offloaded:
                off.reload()
        a2 = self._allocated()
        return self._report({"memory/engine_sleep_freed_gb": a0 - a1, "memory/train_state_retaken_gb": a2 - a1,
                             "memory/allocated_training_gb": a2})

    def before_refit(self) -> dict:
        """After training: move the training state to host memory and wake the engine's weights."""
        a0 = self._allocated()
        if self._optimizer is not None and self._opt_offload is None:
            self._opt_offload = StorageOffload(optimizer_state_tensors(*self._optimizer))
        for off in (self._grads, self._opt_offload):
            if off is not None:
                off.offload(keep=True)
        if self.measure:
            torch.cuda.empty_cache()
        a1 = self._allocated()
        if self.engine is not None:
            self.engine.wake_up(tags=["weights"])
        a2 = self._allocated()
        return self._report({"memory/train_state_freed_gb": a0 - a1, "memory/engine_weights_retaken_gb": a2 - a1})

    def after_refit(self) -> dict:
        """The engine's KV cache back (vLLM's second wake-up stage), ready for the next generation."""
        a0 = self._allocated()
        if self.engine is not None:
            self.engine.wake_up(tags=["kv_cache"])
        a1 = self._allocated()
        return self._report({"memory/engine_kv_retaken_gb": a1 - a0, "memory/allocated_generation_gb": a1})

    @contextmanager
    def training_state_resident(self) -> Iterator[None]:
        """The offloaded optimizer state back on the GPU while the body runs (a checkpoint save between steps
        reads it), the engine asleep meanwhile at level 1 (its weights wait in host memory: no refit after)."""
        off = self._opt_offload
        if off is None or not off.offloaded:
            yield
            return
        if self.engine is not None:
            self.engine.sleep(1)
            if self.measure:
                torch.cuda.empty_cache()
        off.reload()
        try:
            yield
        finally:
            off.offload(keep=True)
            if self.measure:
                torch.cuda.empty_cache()
            if self.engine is not None:
                self.engine.wake_up(tags=["weights", "kv_cache"])
