"""Megatron-side helpers shared by the weight and rollout tests: build a policy from an HF directory,
change its weights with real optimizer steps, and compute the reference per-token log-probs."""
from __future__ import annotations

import json
import os

import torch


def hf_config(hf_dir: str) -> dict:
    with open(os.path.join(hf_dir, "config.json")) as f:
        return json.load(f)


def train_state(hf_dir: str, tp: int = 1, pp: int = 1, vpp=None, lr: float = 3e-3, temperature: float = 1.0,
                recipe: bool = False):
    """(TrainState, groups) for this process's layout, HF weights loaded; log-probs at `temperature`;
    `recipe`: the example configs' bf16 parameters and distributed optimizer."""
    from megatron_mcpo.config import Config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.weights.loader import load_hf_weights

    groups = init_distributed(tp=tp, pp=pp, vpp=vpp, device="cpu", seed=1)
    cfg = Config()
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp = tp, pp, vpp
    cfg.optimizer.lr, cfg.optimizer.weight_decay = lr, 0.0
    cfg.rollout.temperature = temperature
    if recipe:
        cfg.model.params_dtype, cfg.parallel.use_distributed_optimizer = "bf16", True
    state = setup_train_state(cfg, hf_config(hf_dir), groups)
    set_policy_weights(state, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    return state, groups


def reset_parallel_state() -> None:
    """Drop Megatron's model-parallel groups, keeping the process group (to re-init another layout)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()


def fixed_tokens(n: int = 4, length: int = 16, vocab: int = 1000, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g)


def _nll_loss(out, mb):
    mask = mb["response_mask"][:, 1:].to(torch.float32)
    loss = -(out.logprobs[:, 1:] * mask).sum() / mb["denominator"][0]
    return loss, {"n": mask.sum()}


def sgd_steps(state, tokens: torch.Tensor, steps: int = 3) -> None:
    """A few real optimizer steps (maximum likelihood on `tokens`), changing every weight."""
    from megatron_mcpo.training.train_step import split_microbatches, train_step

    mask = torch.ones_like(tokens, dtype=torch.bool)
    batch = {"tokens": tokens, "response_mask": mask,
             "denominator": torch.full((tokens.shape[0],), float(mask[:, 1:].sum()))}
    for _ in range(steps):
        metrics = train_step(state, split_microbatches(batch, 2), _nll_loss)
        assert metrics["update_successful"] == 1.0, metrics


def megatron_logprobs(state, tokens: torch.Tensor):
    """log p(x_t | x_<t) for t >= 1, float64 [n, len-1], on the last pipeline stage (None elsewhere)."""
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

    batch = {"tokens": tokens, "response_mask": torch.ones_like(tokens, dtype=torch.bool)}
    outs = forward_outputs(state.policy, split_microbatches(batch, 2))
    return None if outs is None else concat_outputs(outs).logprobs[:, 1:].double()
