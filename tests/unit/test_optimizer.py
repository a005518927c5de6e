"""The Megatron optimizer's LR scheduler: linear warmup, then cosine decay to min_lr."""
import math

import pytest

from dist_utils import run_distributed


def _lrs(rank, style):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.tiny import tiny_hf_config
    from megatron_mcpo.training.optimizer import setup_train_state

    cfg = load_config(overrides=["run.device=cpu", "optimizer.lr=1e-3", "optimizer.min_lr=1e-4",
                                 "optimizer.lr_warmup_steps=2", f"optimizer.lr_decay_style={style}",
                                 "optimizer.lr_decay_steps=6"])
    state = setup_train_state(cfg, tiny_hf_config("qwen3", num_layers=2), init_distributed(device="cpu"))
    lrs = []
    for _ in range(7):
        state.scheduler.step(increment=1)
        lrs.append(state.optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("style", ["cosine", "constant"])
def test_warmup_then_decay(style):
    (lrs,) = run_distributed(_lrs, world_size=1, timeout=120, style=style)
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)
    if style == "constant":
        assert lrs[2:] == pytest.approx([1e-3] * 5)
    else:  # cosine over the 4 decay steps after warmup: min + (max-min)/2 * (1 + cos(pi * k/4))
        expected = [1e-4 + 0.9e-3 / 2 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)] + [1e-4]
        assert lrs[2:] == pytest.approx(expected)
