"""The reference policy of the KL term (`algorithm.kl_coef > 0`): a frozen copy of the initial policy.

Its own Megatron chunks in the training layout (same TP/PP/VPP, same packing), without DDP, optimizer or
gradients, loaded from the run's initial weights (the HF checkpoint or `model.megatron_checkpoint`, never
a resumed training checkpoint). It costs one more copy of the weights per rank (params dtype) and one
forward-only pass per RL step, like verl's reference worker.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from megatron_mcpo.config import Config
from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.models.policy import PolicyModel
from megatron_mcpo.models.provider import build_model_chunks
from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches


class ReferencePolicy:
    def __init__(self, cfg: Config, hf_config: dict, groups: ParallelGroups, load_weights: Callable[[list], None]):
        chunks = build_model_chunks(hf_config, cfg.model, cfg.parallel, groups)
        for chunk in chunks:
            chunk.requires_grad_(False)
        load_weights(chunks)
        self.policy = PolicyModel(chunks, hf_config, groups, sequence_packing=cfg.model.sequence_packing,
                                  temperature=cfg.rollout.temperature)  # π_ref at the sampling temperature too
        self.micro_batch_size = cfg.parallel.micro_batch_size

    @torch.no_grad()
    def logprobs(self, batch: dict) -> Optional[torch.Tensor]:
        """log π_ref(tokens[b, t] | tokens[b, <t]) [n, s] on the last pipeline stage, None elsewhere
        (collective over the pipeline)."""
        outs = forward_outputs(self.policy, split_microbatches(batch, self.micro_batch_size))
        return None if outs is None else concat_outputs(outs).logprobs
