"""HF <-> Megatron weights: the per-family mapping, HF loading, export/refit streaming, dist checkpoints."""
