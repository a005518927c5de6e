"""Megatron training plumbing: model + optimizer setup, the pluggable-loss train step."""
