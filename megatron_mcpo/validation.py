"""`validate(cfg)`: the whole config checked (and `run.device` resolved) before any process group or
accelerator is touched, each error naming its field. Apart from config.py so that the dataclasses sit at
the bottom of the package: the checks consult modules above them (placement, preflight, domains, TE)."""
from __future__ import annotations

import os
import sys
from typing import Optional

from megatron_mcpo.config import Config, model_family, read_hf_config, require, resolve_device, suggest_closest


def validate_launched(cfg: Config) -> Config:
    """`validate` in a launched process, for the world it runs in (torchrun's WORLD_SIZE; 1 run alone), and
    the reward verifiers of data.domains and the checkpoint writer on this machine (`mcpo validate` on a
    login node skips those)."""
    validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    from megatron_mcpo.preflight import check_checkpoint_writer, check_reward_backends

    check_reward_backends(cfg.data.domains)
    check_checkpoint_writer(cfg.checkpoint.save_dir)
    return cfg


def _te_installed() -> bool:
    from megatron_mcpo.models.te_support import installed

    return installed()


def validate(
    cfg: Config, world_size: Optional[int] = None, cuda_available: Optional[bool] = None,
    te_available: Optional[bool] = None, check_files: bool = True,
) -> Config:
    """Check the whole config; raise ConfigError naming the field. Resolves `run.device` in place
    ("auto" -> "cpu"|"cuda", see `resolve_device`). Touches no process group or GPU beyond
    `torch.cuda.is_available()` when `cuda_available` is not given; `te_available` (default: whether
    Transformer Engine is installed here) decides the TE-only features (looked up only off CPU).
    `check_files`: also the data files, model directory, checkpoints and the CPU engine's memory share
    (preflight.py)."""
    if cuda_available is None and cfg.run.device != "cpu":  # a CPU run never asks
        import torch

        cuda_available = torch.cuda.is_available()
    require(cfg.run.device != "cuda" or cuda_available, "run.device: 'cuda' requested but no CUDA device is visible")
    cfg.run.device = resolve_device(cfg.run.device, cuda_available)
    on_gpu = cfg.run.device == "cuda"
    te = (on_gpu and _te_installed()) if te_available is None else te_available
    # What models/provider.py builds: the TE layer spec only on CUDA with TE installed and not "local".
    te_spec = on_gpu and te and cfg.model.transformer_impl != "local"

    hf = read_hf_config(cfg.model.hf_path)
    model_family(hf)
    heads, kv = hf["num_attention_heads"], hf.get("num_key_value_heads", hf["num_attention_heads"])
    layers = hf["num_hidden_layers"]
    p = cfg.parallel
    for name in ("tp", "pp", "cp", "micro_batch_size"):
        require(getattr(p, name) >= 1, f"parallel.{name}: must be >= 1, got {getattr(p, name)}")
    require(heads % p.tp == 0, f"parallel.tp: {p.tp} does not divide num_attention_heads={heads}")
    require(kv % p.tp == 0, f"parallel.tp: {p.tp} does not divide num_key_value_heads={kv}")
    vpp = p.vpp or 1
    require(layers % (p.pp * vpp) == 0, f"parallel.pp: pp*vpp={p.pp * vpp} does not divide num_hidden_layers={layers}")
    require(p.vpp is None or p.pp > 1, "parallel.vpp: virtual pipeline stages need parallel.pp > 1")
    require(not p.sequence_parallel or on_gpu, "parallel.sequence_parallel: needs Transformer Engine norms (GPU only)")
    require(not p.sequence_parallel or te_spec,
             "parallel.sequence_parallel: needs the Transformer Engine layer spec (TE installed, model.transformer_impl not local)")
    require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel: needs parallel.tp > 1")
    # Nothing slices the sequence per CP rank yet: every CP rank would compute the whole loss (gradient cp× too large).
    require(p.cp == 1, "parallel.cp: context parallel > 1 is not supported yet (the loss is not sharded over the sequence)")
    if world_size is not None:
        require(world_size >= 1, f"world size: must be >= 1, got {world_size}")
        mp = p.tp * p.pp * p.cp
        require(world_size % mp == 0, f"parallel: tp*pp*cp={mp} does not divide the world size {world_size}")

    m = cfg.model
    require(m.fp8 is None or on_gpu, "model.fp8: FP8 needs a CUDA device with Transformer Engine")
    require(m.transformer_impl != "transformer_engine" or on_gpu, "model.transformer_impl: transformer_engine needs CUDA")
    require(m.transformer_impl != "transformer_engine" or te,
             "model.transformer_impl: transformer_engine requested but Transformer Engine is not installed")
    require(m.attention_backend == "auto" or m.transformer_impl != "transformer_engine",
             f"model.attention_backend: '{m.attention_backend}' is a local-spec attention; transformer_impl=transformer_engine uses TE's (set auto)")
    if m.fp8 is not None:
        require(m.transformer_impl != "local", "model.fp8: FP8 needs transformer_impl auto|transformer_engine")
        require(m.attention_backend == "auto", "model.fp8: FP8 needs the TE spec (model.attention_backend=auto)")
        require(te, "model.fp8: FP8 needs Transformer Engine, which is not installed")
        require(m.params_dtype == "bf16", "model.fp8: FP8 training expects model.params_dtype=bf16")
    if m.recompute_granularity == "full":  # megatron recomputes each stage's layers in groups of this size
        per_chunk = layers // (p.pp * (p.vpp or 1))
        require(m.recompute_num_layers >= 1 and per_chunk % m.recompute_num_layers == 0,
                f"model.recompute_num_layers: {m.recompute_num_layers} does not divide the {per_chunk} layers of each "
                f"pipeline stage (num_hidden_layers={layers}, pp={p.pp}, vpp={p.vpp or 1})")

    a = cfg.algorithm
    require(a.clip_ratio_low >= 0, f"algorithm.clip_ratio_low: must be >= 0, got {a.clip_ratio_low}")
    require(a.clip_ratio_high >= 0, f"algorithm.clip_ratio_high: must be >= 0, got {a.clip_ratio_high}")
    require(a.clip_ratio_c > 1, f"algorithm.clip_ratio_c: must be > 1, got {a.clip_ratio_c}")
    require(a.train_batch_prompts >= 1, f"algorithm.train_batch_prompts: must be >= 1, got {a.train_batch_prompts}")
    require(a.mini_batch_prompts >= 1, "algorithm.mini_batch_prompts: must be >= 1")
    require(
        a.train_batch_prompts % a.mini_batch_prompts == 0,
        f"algorithm.mini_batch_prompts: {a.mini_batch_prompts} does not divide train_batch_prompts={a.train_batch_prompts}",
    )
    require(a.ppo_epochs >= 1, "algorithm.ppo_epochs: must be >= 1")
    require(a.kl_coef >= 0, f"algorithm.kl_coef: must be >= 0, got {a.kl_coef}")
    require(a.overlong_buffer_len >= 1, "algorithm.overlong_buffer_len: must be >= 1")
    require(a.max_num_gen_batches >= 1, f"algorithm.max_num_gen_batches: must be >= 1, got {a.max_num_gen_batches}")
    if a.gen_batch_prompts is not None:
        require(a.dynamic_sampling,
                 "algorithm.gen_batch_prompts: only used with dynamic sampling (otherwise every round is train_batch_prompts)")
        require(a.gen_batch_prompts >= 1, f"algorithm.gen_batch_prompts: must be >= 1, got {a.gen_batch_prompts}")
    rc = a.rollout_correction
    for name in ("tis_cap", "seq_mask_c"):
        v = getattr(rc, name)
        require(v is None or v >= 1, f"algorithm.rollout_correction.{name}: must be >= 1, got {v}")
    require((rc.token_mask_low is None) == (rc.token_mask_high is None),
             "algorithm.rollout_correction.token_mask_low: set token_mask_low and token_mask_high together")
    require(rc.token_mask_low is None or 0 <= rc.token_mask_low < 1 < rc.token_mask_high,
             "algorithm.rollout_correction.token_mask_low: need 0 <= token_mask_low < 1 < token_mask_high")
    require(
        not a.overlong_buffer_enable or a.overlong_buffer_len <= cfg.rollout.max_response_length,
        f"algorithm.overlong_buffer_len: {a.overlong_buffer_len} exceeds rollout.max_response_length",
    )
    if world_size is not None:
        dp = world_size // (p.tp * p.pp * p.cp)
        for name in ("train_batch_prompts", "mini_batch_prompts"):
            require(getattr(a, name) % dp == 0, f"algorithm.{name}: {getattr(a, name)} is not divisible by the data-parallel size {dp}")
        seqs = a.mini_batch_prompts * cfg.rollout.n
        require(
            seqs % (dp * p.micro_batch_size) == 0,
            f"parallel.micro_batch_size: mini-batch of {seqs} sequences is not divisible by dp({dp}) * micro_batch_size({p.micro_batch_size})",
        )
        require(a.gen_batch_prompts is None or a.gen_batch_prompts % dp == 0,
                 f"algorithm.gen_batch_prompts: {a.gen_batch_prompts} is not divisible by the data-parallel size {dp}")

    mc = cfg.mcpo
    for name in ("cl_coef", "cross_coef", "in_coef", "warmup_batches", "proj_lr", "proj_weight_decay", "proj_grad_clip"):
        require(getattr(mc, name) >= 0, f"mcpo.{name}: must be >= 0, got {getattr(mc, name)}")
    require(mc.temperature > 0, f"mcpo.temperature: must be > 0, got {mc.temperature}")
    require(mc.proj_dim >= 1 and mc.proj_hidden_dim >= 1, "mcpo.proj_dim/proj_hidden_dim: must be >= 1")

    r = cfg.rollout
    require(r.n >= 1, "rollout.n: must be >= 1")
    # Training log-probs are those of the sampling distribution softmax(logits / T).
    require(r.temperature > 0, f"rollout.temperature: must be > 0, got {r.temperature} (training log-probs use "
             "softmax(logits / T); greedy sampling would also make the n samples of a prompt identical)")
    require(r.max_prompt_length >= 1, f"rollout.max_prompt_length: must be >= 1, got {r.max_prompt_length}")
    require(r.max_response_length >= 1, f"rollout.max_response_length: must be >= 1, got {r.max_response_length}")
    require(r.engine_timeout_s >= 0, f"rollout.engine_timeout_s: must be >= 0, got {r.engine_timeout_s}")
    require(0 < r.top_p <= 1, "rollout.top_p: must be in (0, 1]")
    require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization: must be in (0, 1]")
    require(r.tp == 1 or on_gpu, "rollout.tp: vLLM tensor parallel > 1 is GPU only")
    require(r.engine != "hf" or r.tp == 1, f"rollout.tp: the HF engine runs on one device (rollout.tp must be 1, got {r.tp})")
    require(r.max_num_seqs >= 1, f"rollout.max_num_seqs: must be >= 1, got {r.max_num_seqs}")
    require(r.sleep_level in (1, 2), f"rollout.sleep_level: must be 1 or 2, got {r.sleep_level}")
    require(r.gpus_per_node >= 1 and 0 <= r.dedicated_gpus_per_node <= r.gpus_per_node,
             "rollout.dedicated_gpus_per_node: must be in [0, rollout.gpus_per_node]")
    from megatron_mcpo.rollout.placement import plan_placement, resolve_placement

    colocated = resolve_placement(r.placement, on_gpu) == "colocated"
    for name in ("offload_grad_buffers", "offload_optimizer_states"):
        require(not getattr(r, name) or colocated, f"rollout.{name}: only with a colocated engine (rollout.placement)")
    plan_placement(world_size or p.tp * p.pp * p.cp, p.tp, p.pp, p.cp, r.tp, r.placement, on_gpu,
                   r.gpus_per_node, r.dedicated_gpus_per_node, r.engine)
    e = cfg.eval
    require(e.every >= 0, f"eval.every: must be >= 0, got {e.every}")
    require(e.n >= 1, f"eval.n: must be >= 1, got {e.n}")
    require(e.temperature >= 0, f"eval.temperature: must be >= 0, got {e.temperature}")
    require(e.temperature > 0 or e.n == 1, f"eval.n: {e.n} samples per prompt need eval.temperature > 0 "
             "(0 is greedy: every sample would be the same)")
    require(0 < e.top_p <= 1, "eval.top_p: must be in (0, 1]")
    require(e.prompts_per_domain >= 1, "eval.prompts_per_domain: must be >= 1")
    require(cfg.data.synthetic_per_domain >= 1, "data.synthetic_per_domain: must be >= 1")
    require(1 <= e.max_response_length <= r.max_response_length,
             "eval.max_response_length: must be in [1, rollout.max_response_length] (the engine's context is sized by it)")
    o = cfg.optimizer
    require(o.lr >= 0 and o.min_lr >= 0, "optimizer.lr: must be >= 0")
    require(o.clip_grad >= 0, "optimizer.clip_grad: must be >= 0")
    require(o.optimizer == "adam" or not cfg.parallel.use_distributed_optimizer,  # megatron asserts it, deep inside
            f"parallel.use_distributed_optimizer: megatron's distributed optimizer takes optimizer.optimizer=adam "
            f"only, got {o.optimizer}")
    require(o.lr_warmup_steps >= 0, "optimizer.lr_warmup_steps: must be >= 0 (optimizer steps)")
    require(o.lr_decay_steps is None or o.lr_decay_steps > o.lr_warmup_steps,
             f"optimizer.lr_decay_steps: must exceed lr_warmup_steps={o.lr_warmup_steps} (both in optimizer steps)")
    require(cfg.run.total_steps >= 0, "run.total_steps: must be >= 0")
    for field_name, files in (("data.train_files", cfg.data.train_files), ("eval.files", cfg.eval.files)):
        for f in files:
            require(f.endswith((".jsonl", ".parquet")), f"{field_name}: '{f}' is neither .jsonl nor .parquet")
    lg = cfg.logging
    require(len(set(lg.backends)) == len(lg.backends), f"logging.backends: duplicate entries in {lg.backends}")
    require(not cfg.checkpoint.export_hf or cfg.checkpoint.save_dir is not None,
             "checkpoint.export_hf: needs checkpoint.save_dir (the export is written to <save_dir>/hf_export)")
    from megatron_mcpo.domains import DOMAINS

    for name in cfg.data.domains:
        require(name in DOMAINS, f"data.domains: unknown domain '{name}'{suggest_closest(name, list(DOMAINS))}")
    w = cfg.data.domain_weights
    if w:
        require(len(w) == len(cfg.data.domains),
                 f"data.domain_weights: {len(w)} weights for {len(cfg.data.domains)} data.domains {cfg.data.domains}")
        require(min(w) >= 0 and sum(w) > 0, f"data.domain_weights: must be >= 0 with a positive sum, got {w}")
    if check_files:
        from megatron_mcpo.preflight import check_inputs

        for warning in check_inputs(cfg, hf, on_gpu):
            print(f"warning: {warning}", file=sys.stderr)
    return cfg
