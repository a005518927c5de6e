"""Rollout engines (vLLM). Import `megatron_mcpo.rollout.vllm_engine` only where vllm is installed."""
