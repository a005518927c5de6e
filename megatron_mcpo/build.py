"""Assembling a run: `build_trainer(cfg)` builds the components in dependency order (process groups,
metrics log, model and its starting weights, the KL reference, the MCPO projector and term, the rollout
engine from the factory, the reward scorer, colocated memory, the prompt data) and hands them to the
Trainer, which then resumes from a checkpoint if checkpoint.resume says so.

The config must be validated already (`validation.validate`, which the CLI runs before anything else): the
build checks nothing twice, and the data files validate's preflight parsed are not parsed again
(data/formats.py). The training prompts are read before the model is built and fitted to the engine
once it exists.
"""
from __future__ import annotations

import os
from functools import partial

import torch.distributed as dist

from megatron_mcpo.config import Config, ModelConfig, RewardsConfig, read_hf_config
from megatron_mcpo.data.dataset import PromptSampler
from megatron_mcpo.data.run_prompts import PromptFitter, read_prompts
from megatron_mcpo.distributed import init_distributed
from megatron_mcpo.metrics_log import MetricsLogger
from megatron_mcpo.models.projection import build_projector
from megatron_mcpo.progress import phase
from megatron_mcpo.trainer import Trainer
from megatron_mcpo.training.losses import policy_loss_from_config
from megatron_mcpo.training.mcpo_term import make_term
from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state


def build_trainer(cfg: Config) -> Trainer:
    """The run's Trainer, assembled from a validated `cfg` (collective: every rank calls it)."""
    if cfg.run.device not in ("cpu", "cuda"):
        raise ValueError(f"build_trainer: run.device is {cfg.run.device!r}; validate(cfg) first (it resolves it)")
    p, d, r = cfg.parallel, cfg.data, cfg.rollout
    groups = init_distributed(p.tp, p.pp, p.vpp, p.cp, cfg.run.device, cfg.run.seed)
    rank0 = groups.world_rank == 0
    metrics_log = MetricsLogger(cfg, rank0=rank0)  # a missing backend package fails here
    train_records = read_prompts(d.train_files, d.domains, d.seed, d.synthetic_per_domain, "train", rank0,
                                 d.synthetic_system_prompts)
    hf_dir = hf_checkpoint_dir(cfg.model.hf_path, os.path.join(cfg.run.output_dir, "tiny_models"), cfg.run.seed)
    hf_config = read_hf_config(hf_dir)
    load_initial = partial(load_initial_weights, cfg.model, hf_dir, groups=groups)
    state = setup_train_state(cfg, hf_config, groups)
    set_policy_weights(state, load_initial)
    reference = None
    if cfg.algorithm.kl_coef > 0:
        from megatron_mcpo.training.reference import ReferencePolicy

        reference = ReferencePolicy(cfg, hf_config, groups, load_initial)
    projector = None
    if cfg.algorithm.is_mcpo and groups.is_last_stage:
        projector = build_projector(cfg.mcpo, hf_config["hidden_size"], cfg.run.seed, groups.device)
    placement = rank_placement(cfg, groups)
    engine = None
    if placement.engine_id is not None:
        from megatron_mcpo.rollout.factory import make_engine

        with phase("rollout engine start"):
            # log-probs of the sampling distribution softmax(logits / T) (renormalised over the top-k/top-p
            # nucleus when those cut the vocabulary), like Megatron's tempered ones
            engine = make_engine(cfg, hf_dir, placement, logprobs_mode="processed_logprobs")
    scorer = make_scorer(cfg.rewards) if engine is not None else None  # evaluation scores on every engine
    memory = None
    if placement.colocated:
        from megatron_mcpo.rollout.memory import ColocatedMemory

        memory = ColocatedMemory(engine, state, r.sleep_level, r.offload_grad_buffers, r.offload_optimizer_states,
                                 groups.device)
    fit_prompts = PromptFitter(engine, r.max_prompt_length, d.domains, groups.mp, rank0)
    weights = dict(zip(d.domains, d.domain_weights)) if d.domain_weights else None
    sampler = PromptSampler(fit_prompts(train_records, d.train_files), d.seed, d.shuffle, weights)
    trainer = Trainer(
        cfg, groups=groups, metrics_log=metrics_log, hf_dir=hf_dir, hf_config=hf_config, state=state,
        reference=reference, projector=projector, term=make_term(cfg, projector, groups),
        policy_loss=policy_loss_from_config(cfg), placement=placement, engine=engine, scorer=scorer, memory=memory,
        sampler=sampler, fit_prompts=fit_prompts,
    )
    trainer.resume()
    return trainer


def hf_checkpoint_dir(hf_path: str, tiny_root: str, seed: int) -> str:
    """The HF checkpoint directory of model.hf_path; `tiny:<family>` is written under `tiny_root` (rank 0)."""
    if not hf_path.startswith("tiny:"):
        return hf_path
    from megatron_mcpo.models.tiny import tiny_checkpoint_dir

    if dist.get_rank() == 0:
        tiny_checkpoint_dir(hf_path.split(":", 1)[1], root=tiny_root, seed=seed)
    dist.barrier()
    return tiny_checkpoint_dir(hf_path.split(":", 1)[1], root=tiny_root, seed=seed)


def load_initial_weights(model: ModelConfig, hf_dir: str, chunks: list, groups) -> None:
    """The run's starting weights (also the KL reference's): model.megatron_checkpoint, else the HF ones."""
    if model.megatron_checkpoint:
        from megatron_mcpo.training.checkpoint import load_model_weights

        load_model_weights(chunks, model.megatron_checkpoint)
    else:
        from megatron_mcpo.weights.loader import load_hf_weights

        load_hf_weights(chunks, hf_dir, groups)


def rank_placement(cfg: Config, groups):
    """This rank's part of the rollout placement (rollout/placement.py)."""
    from megatron_mcpo.rollout.placement import plan_placement

    p, r = cfg.parallel, cfg.rollout
    plan = plan_placement(groups.world_size, p.tp, p.pp, p.cp, r.tp, r.placement, groups.device.type == "cuda",
                          r.gpus_per_node, r.dedicated_gpus_per_node, r.engine)
    return plan[groups.world_rank]


def make_scorer(r: RewardsConfig):
    from megatron_mcpo.rewards import RewardScorer, SandboxLimits

    limits = SandboxLimits(cpu_time_s=r.code_cpu_time_s, wall_time_s=r.code_wall_time_s, memory_mb=r.code_memory_mb)
    return RewardScorer(num_workers=r.num_workers, sandbox_limits=limits, math_timeout_s=r.math_timeout_s)
