"""Rollout engines behind one protocol (engine.py), built by factory.py from `rollout.engine`: vLLM
(vllm_engine.py, import it only where vllm is installed) or HF transformers in-process (hf_engine.py);
placement.py puts them on ranks/GPUs, memory.py hands a shared GPU between engine and training."""
