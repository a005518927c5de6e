"""Model chunks wrapped in Megatron DDP, the Megatron optimizer and its LR scheduler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from megatron_mcpo.config import Config
from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.models.policy import PolicyModel
from megatron_mcpo.models.provider import build_model_chunks
from megatron_mcpo.training import optimizer_fallbacks


@dataclass
class TrainState:
    policy: PolicyModel
    optimizer: object  # megatron MegatronOptimizer
    scheduler: object  # megatron OptimizerParamScheduler
    step: int = 0  # optimizer steps taken (the MCPO warmup counter counts these)


def wrap_ddp(chunks: list, cfg: Config) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        check_for_nan_in_grad=True,
    )
    return [
        # Only the first chunk gets bucketing: megatron's convention for interleaved pipelines.
        DistributedDataParallel(config=c.config, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
        for i, c in enumerate(chunks)
    ]


def build_optimizer(chunks: list, cfg: Config):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = cfg.optimizer
    bf16 = cfg.model.params_dtype == "bf16"
    opt_config = OptimizerConfig(
        optimizer=o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    optimizer_fallbacks.install()
    optimizer = get_megatron_optimizer(opt_config, chunks)
    optimizer_fallbacks.use_fused_adam(optimizer)
    return optimizer, build_scheduler(optimizer, cfg)


def lr_decay_steps(cfg: Config) -> int:
    """Optimizer steps from the start to min_lr: optimizer.lr_decay_steps, else the whole run
    (run.total_steps RL steps of algorithm.optimizer_steps_per_rl_step optimizer steps each)."""
    o = cfg.optimizer
    if o.lr_decay_steps is not None:
        return o.lr_decay_steps
    return max(cfg.run.total_steps * cfg.algorithm.optimizer_steps_per_rl_step, o.lr_warmup_steps + 1)


def build_scheduler(optimizer, cfg: Config):
    """Megatron's OptimizerParamScheduler, stepped once per optimizer step (training/train_step.py):
    linear warmup over optimizer.lr_warmup_steps, then the decay style until lr_decay_steps(cfg)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    decay_steps = lr_decay_steps(cfg)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.lr_warmup_steps > 0 else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )


def set_policy_weights(state: TrainState, load: Callable[[list], None]) -> None:
    """Write the policy's weights with `load(model_chunks)` (initial weights, a warm start), then hand them to
    the optimizer: a bf16 run's fp32 main parameters are the copy taken when the optimizer was built, and
    its next step would write those back over the loaded weights (megatron's reload_model_params)."""
    load(state.policy.chunks)
    state.optimizer.reload_model_params()


def setup_train_state(cfg: Config, hf_config: dict, groups: ParallelGroups) -> TrainState:
    """Build this rank's model chunks on groups.device (DDP-wrapped), the optimizer and the scheduler."""
    from megatron.core.distributed import finalize_model_grads

    chunks = wrap_ddp(build_model_chunks(hf_config, cfg.model, cfg.parallel, groups), cfg)
    optimizer, scheduler = build_optimizer(chunks, cfg)
    for c in chunks:
        # DP gradient reduction and tied-embedding sync across PP happen here after each backward.
        c.config.finalize_model_grads_func = finalize_model_grads
        c.config.grad_scale_func = optimizer.scale_loss
        if cfg.parallel.overlap_grad_reduce:
            c.config.no_sync_func = [x.no_sync for x in chunks] if len(chunks) > 1 else chunks[0].no_sync
    policy = PolicyModel(chunks, hf_config, groups, sequence_packing=cfg.model.sequence_packing,
                         temperature=cfg.rollout.temperature)
    return TrainState(policy=policy, optimizer=optimizer, scheduler=scheduler)
