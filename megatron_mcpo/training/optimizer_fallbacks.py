"""The Megatron optimizer where neither Transformer Engine nor Apex is installed: its step's kernels, and
the Adam state its distributed optimizer's checkpointing reads.

megatron-core then falls back to Python loops over the parameters (megatron.core.utils.local_multi_tensor_*):
the gradient norm takes one `torch.norm` per tensor and reads every result back to the host (a device
sync per tensor: `torch.tensor(list of GPU scalars)`), and clipping and the fp32 main -> bf16 model copy
launch two kernels per tensor; Adam is torch's multi-tensor (foreach) AdamW, about ten passes over the
optimizer state. `install()` swaps the norm and scale for torch's foreach kernels (a handful of launches,
no sync until megatron's own `.item()`); `use_fused_adam()` switches torch AdamW to its fused kernel on
CUDA (one pass, what TE's and Apex's FusedAdam do). The math is the same: the scale and the copy are bit
for bit megatron's, the norm agrees to float32 rounding (a different reduction order). On CPU the same
kernels run, so the CPU suite covers them; fused Adam stays CUDA-only (on CPU torch's default is its
single-tensor loop, kept so CPU runs keep their numbers). `init_adam_state()` gives torch Adam the state
its first step would create: megatron's distributed optimizer reads the step count from it to save or
load a checkpoint (TE's and Apex's Adam keep it in the param groups), so a fresh one could do neither;
it saves the count in the param groups and does not put it back on load: `restore_adam_step()` does.
`install()` also keeps its loader of a 'fully_reshardable' checkpoint from asking that format for the
step it does not store.
"""
from __future__ import annotations

import warnings

import torch

# megatron says so when its optimizer modules are imported (after this one: they are imported lazily);
# install() replaces exactly those local implementations, so the warning would name what does not run.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed. Falling back to local "
                        "implementations of multi_tensor_applier", category=UserWarning)


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """amp_C.multi_tensor_l2norm's contract: (||concat(tensor_lists[0])||_2 as a float32 [1] tensor, None)."""
    tensors = tensor_lists[0]
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """amp_C.multi_tensor_scale's contract: tensor_lists[1][i] = tensor_lists[0][i] * scale (in place when
    both lists hold the same tensors, as gradient clipping passes them)."""
    src, dst = tensor_lists
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
    elif scale == 1.0:  # megatron's main <-> model parameter copies
        torch._foreach_copy_(dst, src)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def install() -> bool:
    """Replace megatron's per-tensor Python fallbacks (only those: TE's or Apex's kernels stay) with the
    foreach ones; idempotent. Returns whether megatron runs on the fallbacks here."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    if clip_grads.multi_tensor_applier is not utils.local_multi_tensor_applier:
        return False
    clip_grads.l2_norm_impl = foreach_l2_norm
    clip_grads.multi_tensor_scale_impl = foreach_scale
    optimizer.multi_tensor_scale_impl = foreach_scale
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not getattr(DistributedOptimizer._set_main_param_and_optimizer_states, "_keeps_adam_step", False):
        DistributedOptimizer._set_main_param_and_optimizer_states = _keeping_adam_step(
            DistributedOptimizer._set_main_param_and_optimizer_states)
    return True


def _keeping_adam_step(set_states):
    """megatron's loader of a 'fully_reshardable' checkpoint copies every key of a parameter's optimizer
    state from the checkpoint's, torch Adam's `step` included, which that format keeps in the param groups
    instead (its loader skips it; megatron's load_state_dict has already put it in the state from there):
    a KeyError. The wrapped setter leaves the step as it is."""
    def set_main_param_and_optimizer_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state.get(self.optimizer.param_groups[group_index]["params"][group_order], {})
        precision_aware = getattr(self.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False)
        if "step" in state and "step" not in tensors and not precision_aware:  # (that path sets no step)
            tensors = {**tensors, "step": state["step"]}
        return set_states(self, model_param, tensors)

    set_main_param_and_optimizer_states._keeps_adam_step = True
    return set_main_param_and_optimizer_states


def inner_optimizers(megatron_optimizer) -> list:
    """The torch optimizers inside a Megatron optimizer (one, or one per chained optimizer)."""
    return [o.optimizer for o in getattr(megatron_optimizer, "chained_optimizers", [megatron_optimizer])]


def _torch_adams(megatron_optimizer) -> list:
    return [o for o in inner_optimizers(megatron_optimizer) if type(o) in (torch.optim.AdamW, torch.optim.Adam)]


def use_fused_adam(megatron_optimizer, device_type: str = "cuda") -> int:
    """Set torch AdamW/Adam inside a Megatron optimizer to the fused kernel where all of its parameters are
    on `device_type`, before its first step (its state, `step` included, is created there on the
    parameters' device). A checkpoint's own param-group flags win on load, as in torch. Returns the
    groups switched."""
    switched = 0
    for opt in _torch_adams(megatron_optimizer):
        if opt.state:
            continue
        for group in opt.param_groups:
            params = group["params"]
            if params and all(p.device.type == device_type and p.is_floating_point() for p in params):
                group["fused"], group["foreach"] = True, False
                switched += 1
    return switched


def _step_tensor(step: float, param: torch.Tensor, group: dict) -> torch.Tensor:
    """Torch Adam's step count: on the parameter's device when fused or capturable, else on the host."""
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(step, dtype=torch.float32, device=param.device if on_device else "cpu")


def init_adam_state(megatron_optimizer) -> None:
    """Torch Adam's state for every parameter that has none yet, as its first step creates it: step 0 (on
    the parameter's device when fused or capturable, else on the host) and zero moments. Adam's next step
    from there equals its first step from no state."""
    for opt in _torch_adams(megatron_optimizer):
        for group in opt.param_groups:
            for p in group["params"]:
                if opt.state.get(p):
                    continue
                state = {"step": _step_tensor(0.0, p, group),
                         "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                         "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                opt.state[p] = state


def restore_adam_step(megatron_optimizer) -> None:
    """After a checkpoint load: where a param group carries megatron's saved step count (its distributed
    optimizer's format without TE/Apex), make it every parameter's Adam step (the load leaves them at 0,
    which would restart Adam's bias correction)."""
    for opt in _torch_adams(megatron_optimizer):
        for group in opt.param_groups:
            if group.get("step") is None:
                continue
            for p in group["params"]:  # a tensor each: the load may leave one shared by all (+1 per parameter)
                opt.state[p]["step"] = _step_tensor(float(group["step"]), p, group)
