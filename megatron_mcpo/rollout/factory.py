"""The one place that turns `rollout.engine` into an engine: a new engine is a module + an entry here."""
from __future__ import annotations

import torch

from megatron_mcpo.config import Config
from megatron_mcpo.rollout.engine import RolloutEngine
from megatron_mcpo.rollout.placement import RankPlacement


def engine_device(placement: RankPlacement) -> torch.device:
    """The device of this rank's engine (its first worker's GPU, or the CPU)."""
    if not placement.engine_devices:
        return torch.device("cpu")
    index = placement.engine_devices[0]
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"rollout: the placement puts this rank's engine on GPU {index}, but only "
                           f"{torch.cuda.device_count()} are visible (check rollout.gpus_per_node)")
    return torch.device("cuda", index)


def make_engine(cfg: Config, hf_dir: str, placement: RankPlacement, logprobs_mode: str) -> RolloutEngine:
    """This rank's engine (or engine worker) for `cfg.rollout`, seeded per engine, on its placement."""
    r = cfg.rollout
    seed = r.seed + placement.engine_id  # the workers of one engine share it (vLLM SPMD needs equal seeds)
    max_model_len = r.max_prompt_length + r.max_response_length
    if r.engine == "hf":
        from megatron_mcpo.rollout.hf_engine import HFEngine

        return HFEngine(hf_dir, seed=seed, dtype=cfg.model.params_dtype, device=engine_device(placement),
                        logprobs_mode=logprobs_mode, max_model_len=max_model_len, max_num_seqs=r.max_num_seqs)
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(hf_dir, seed=seed, gpu_memory_utilization=r.gpu_memory_utilization,
                      enforce_eager=r.enforce_eager, max_model_len=max_model_len, tensor_parallel_size=r.tp,
                      dtype=cfg.model.params_dtype, transport=r.refit_transport, logprobs_mode=logprobs_mode,
                      colocated=placement.colocated, devices=placement.engine_devices,
                      call_timeout_s=r.engine_timeout_s, log_level=r.engine_log_level)
