"""megatron_mcpo: Megatron-core RL post-training with MCPO."""
__version__ = "0.1.0"
