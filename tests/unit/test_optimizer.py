"""The Megatron optimizer's LR scheduler: linear warmup, then cosine decay to min_lr."""
import math

import pytest

from dist_utils import run_distributed


def _lrs(rank, style):
    from megatron_mcpo.config import load_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.families import tiny_hf_config
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
    (lrs,) = run_distributed(_lrs, world_size=1, timeout=300, style=style)
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)
    if style == "constant":
        assert lrs[2:] == pytest.approx([1e-3] * 5)
    else:  # cosine over the 4 decay steps after warmup: min + (max-min)/2 * (1 + cos(pi * k/4))
        expected = [1e-4 + 0.9e-3 / 2 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)] + [1e-4]
        assert lrs[2:] == pytest.approx(expected)


def _whole_run_lrs(overrides):
    """The LR of every optimizer step of a run, from the real scheduler set-up (stepped as train_step does)."""
    import torch

    from megatron_mcpo.config import load_config
    from megatron_mcpo.training.optimizer import build_scheduler

    cfg = load_config(overrides=overrides)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.run.total_steps * cfg.algorithm.optimizer_steps_per_rl_step):
        lrs.append(opt.param_groups[0]["lr"])  # the LR this optimizer step uses
        scheduler.step(increment=1)
    return lrs


def test_cosine_decay_spans_the_whole_run_in_optimizer_steps():
    """516 RL steps × 2 mini-batches = 1032 optimizer steps: the default decay length is all of them (it
    used to be 516, so the LR hit min_lr half-way, at RL step 258)."""
    lrs = _whole_run_lrs(["run.total_steps=516", "algorithm.train_batch_prompts=128", "algorithm.mini_batch_prompts=64",
                          "optimizer.lr=1e-6", "optimizer.min_lr=1e-7", "optimizer.lr_decay_style=cosine",
                          "optimizer.lr_warmup_steps=20"])
    assert len(lrs) == 1032
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.5e-6) and lrs[20] == pytest.approx(1e-6)
    assert all(b <= a for a, b in zip(lrs[20:], lrs[21:]))  # monotone decay after warmup
    # half-way through the decay (optimizer step 20 + 506 = RL step 263): the cosine's midpoint
    assert lrs[526] == pytest.approx(1e-7 + 0.9e-6 / 2, rel=1e-9)
    assert lrs[516] > 5e-7  # RL step 258 is not at min_lr
    assert lrs[-1] == pytest.approx(1e-7 + 0.45e-6 * (1 + math.cos(math.pi * 1011 / 1012)), rel=1e-9)
    assert min(lrs[20:]) > 1e-7  # min_lr is reached only after the last update


def test_ppo_epochs_count_in_the_schedule():
    lrs = _whole_run_lrs(["run.total_steps=3", "algorithm.ppo_epochs=2", "optimizer.lr=1.0",
                          "optimizer.lr_decay_style=linear"])
    # 3 RL steps × 2 mini-batches (8 / 4 prompts) × 2 epochs = 12 optimizer steps, linear from 1 to 0
    assert lrs == pytest.approx([1 - k / 12 for k in range(12)])


def _first_step_after_loading(rank, hf_dir, dtype, distributed_optimizer):
    """A zero-gradient Adam step (no weight decay) right after the HF weights were loaded: it must leave
    them as they are."""
    import torch

    from megatron_mcpo.config import load_config, read_hf_config
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.weights.loader import load_hf_weights

    cfg = load_config(overrides=["run.device=cpu", f"model.params_dtype={dtype}", "optimizer.lr=1e-2",
                                 "optimizer.weight_decay=0", f"parallel.use_distributed_optimizer={distributed_optimizer}"])
    groups = init_distributed(device="cpu")
    state = setup_train_state(cfg, read_hf_config(hf_dir), groups)
    set_policy_weights(state, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    loaded = [p.detach().clone() for p in state.policy.parameters()]
    for p in state.policy.parameters():
        p.main_grad.zero_()
    assert state.optimizer.step()[0]
    return {"dtypes": sorted({str(p.dtype) for p in loaded}),
            "unchanged": [torch.equal(a, p) for a, p in zip(loaded, state.policy.parameters())]}


@pytest.mark.parametrize("dtype,distributed_optimizer", [("bf16", False), ("bf16", True), ("fp32", False)])
def test_the_first_step_starts_from_the_loaded_weights(tiny_dirs, dtype, distributed_optimizer):
    """bf16 keeps fp32 main parameters, copied when the optimizer is built (before the weights are loaded):
    without set_policy_weights' reload, its first step wrote the random initial weights back (every bf16
    run's first update replaced the pretrained model)."""
    (r,) = run_distributed(_first_step_after_loading, world_size=1, timeout=300, hf_dir=tiny_dirs["qwen3"],
                           dtype=dtype, distributed_optimizer=distributed_optimizer)
    assert r["dtypes"] == ["torch.bfloat16" if dtype == "bf16" else "torch.float32"]  # norms included
    assert r["unchanged"] and all(r["unchanged"]), r["unchanged"]
