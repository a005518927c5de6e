"""Load an HF checkpoint straight into a live, already-sharded Megatron model (any TP/PP/VPP).

Each rank reads only the slices its own shards need (safetensors `get_slice`), so no rank ever holds
the full model; every parameter of the model must be covered, with exactly the expected shape.
"""
from __future__ import annotations

from typing import Iterator

import torch

from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.models.families import read_hf_config
from megatron_mcpo.models.policy import unwrap
from megatron_mcpo.progress import bar
from megatron_mcpo.weights.hf_io import HFCheckpointReader
from megatron_mcpo.weights.hf_mapping import LAYER_PREFIX, WeightMappingError, family_mapping


def global_named_parameters(chunk) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, param) with the chunk-local layer index replaced by the global one (PP/VPP offset)."""
    model = unwrap(chunk)
    for name, param in model.named_parameters():
        if name.startswith(LAYER_PREFIX):
            idx, _, rest = name[len(LAYER_PREFIX):].partition(".")
            layer = model.decoder.layers[int(idx)].layer_number - 1  # layer_number is global and 1-based
            name = f"{LAYER_PREFIX}{layer}.{rest}"
        yield name, param


@torch.no_grad()
def load_hf_weights(model_chunks: list, hf_dir: str, groups: ParallelGroups) -> None:
    """Copy the HF weights of `hf_dir` into this rank's shards of `model_chunks` (its TP rank in `groups`).

    Raises WeightMappingError naming the tensor on a missing HF tensor, a Megatron parameter without a
    mapping, or a shape mismatch; FileNotFoundError on missing shard files.
    """
    hf = read_hf_config(hf_dir)
    mapping = family_mapping(hf)
    tp_rank, tp_size = groups.tp_rank, groups.tp_size
    with HFCheckpointReader(hf_dir) as reader:
        params = [p for chunk in model_chunks for p in global_named_parameters(chunk)]
        for name, param in bar(params, desc=f"loading {hf_dir}", unit="tensor"):
            kind, layer = mapping.kind(name)
            padded_vocab = param.shape[0] * tp_size
            shard = kind.shard_from_hf(reader, mapping.dims, layer, tp_rank, tp_size, padded_vocab)
            if tuple(shard.shape) != tuple(param.shape):
                raise WeightMappingError(
                    f"shape mismatch for Megatron '{name}' (TP rank {tp_rank}/{tp_size}): model shard "
                    f"{list(param.shape)}, from HF {kind.hf_names(layer)} {list(shard.shape)} — does config.json "
                    f"match the weights and the model?"
                )
            param.data.copy_(shard)
