"""One device from the config (run.device): resolved once, bad requests rejected in validate() naming the
field, and a CPU run on a machine that reports CUDA stays a plain CPU run (no code of ours asks
torch.cuda.is_available(); every model, optimizer, batch, projector and metric tensor is on the CPU).
"""
import pytest

from dist_utils import run_distributed
from megatron_mcpo.config import ConfigError, load_config, resolve_device
from megatron_mcpo.validation import validate


def test_resolve_device_once():
    assert resolve_device("auto", cuda_available=True) == "cuda"
    assert resolve_device("auto", cuda_available=False) == "cpu"
    assert resolve_device("cpu", cuda_available=True) == "cpu"
    assert resolve_device("cuda", cuda_available=False) == "cuda"  # validate() is the one that refuses it
    cfg = load_config(overrides=["run.device=auto"])
    assert validate(cfg, cuda_available=True, te_available=False).run.device == "cuda"
    cfg = load_config(overrides=["run.device=auto"])
    assert validate(cfg, cuda_available=False).run.device == "cpu"


def test_cuda_without_cuda_names_run_device():
    with pytest.raises(ConfigError, match=r"^run\.device: 'cuda' requested but no CUDA device"):
        validate(load_config(overrides=["run.device=cuda"]), cuda_available=False)


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["model.transformer_impl=transformer_engine"], "model.transformer_impl"),
        (["model.fp8=hybrid", "model.params_dtype=bf16"], "model.fp8"),
        (["parallel.sequence_parallel=true", "parallel.tp=2"], "parallel.sequence_parallel"),
    ],
)
def test_te_only_features_need_te(overrides, field):
    """On a CUDA machine without Transformer Engine each TE-only feature fails naming its field; the same
    config passes where TE is installed, and with transformer_impl=local the TE spec is never built."""
    base = ["run.device=cuda"]
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + ":"):
        validate(load_config(overrides=base + overrides), cuda_available=True, te_available=False)
    validate(load_config(overrides=base + overrides), cuda_available=True, te_available=True)
    if field != "model.transformer_impl":
        with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + ":"):
            validate(load_config(overrides=base + overrides + ["model.transformer_impl=local"]),
                     cuda_available=True, te_available=True)


def trainer_pieces(rank, hf_dir, device="cpu", claim_cuda=True):
    """Everything the trainer builds for a run on `device` (policy, KL reference, projector, a batch from
    rollouts, old/reference log-probs, MCPO exact and local-anchor optimizer steps); returns the device of
    every tensor. `claim_cuda`: torch.cuda.is_available() says True, as on a GPU machine. Also used by
    tests/gpu/test_gpu_device.py."""
    import os
    import traceback

    import torch

    ours = os.path.dirname(os.path.abspath(__import__("megatron_mcpo").__file__))
    asked = []

    def is_available():
        caller = traceback.extract_stack(limit=2)[0].filename
        if os.path.abspath(caller).startswith(ours):
            asked.append(caller)
        return True  # what a GPU machine says

    if claim_cuda:
        torch.cuda.is_available = is_available
    from megatron_mcpo.config import load_config, read_hf_config
    from megatron_mcpo.validation import validate
    from megatron_mcpo.data.batch import Rollout, build_train_batch
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.projection import build_projector
    from megatron_mcpo.training.losses import policy_loss_from_config
    from megatron_mcpo.training.mcpo_term import make_term
    from megatron_mcpo.training.minibatch import train_minibatch
    from megatron_mcpo.training.optimizer import set_policy_weights, setup_train_state
    from megatron_mcpo.training.optimizer_fallbacks import inner_optimizers
    from megatron_mcpo.training.reference import ReferencePolicy
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches
    from megatron_mcpo.weights.loader import load_hf_weights

    cfg = load_config(overrides=[
        f"run.device={device}", "model.transformer_impl=auto", "algorithm.name=mcpo_grpo", "algorithm.kl_coef=0.01",
        "mcpo.warmup_batches=0", "mcpo.proj_dim=16", "mcpo.proj_hidden_dim=16", "rollout.n=2",
        "algorithm.mini_batch_prompts=2", "algorithm.train_batch_prompts=2", "parallel.micro_batch_size=2",
    ])
    validate(cfg, world_size=1)
    groups = init_distributed(device=cfg.run.device)
    hf = read_hf_config(hf_dir)
    state = setup_train_state(cfg, hf, groups)
    set_policy_weights(state, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    reference = ReferencePolicy(cfg, hf, groups, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    projector = build_projector(cfg.mcpo, hf["hidden_size"], cfg.run.seed, groups.device)
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout(prompt_uid=i // 2, domain="math", prompt_ids=torch.randint(0, 500, (5,), generator=g).tolist(),
                        response_ids=torch.randint(0, 500, (3 + i,), generator=g).tolist(),
                        sample_logprobs=[-1.0] * (3 + i), finish_reason="stop", score=float(i % 2))
                for i in range(4)]
    batch = build_train_batch(rollouts, adv_estimator="grpo", adv_eps=1e-6, device=groups.device)
    old = concat_outputs(forward_outputs(state.policy, split_microbatches(batch, 2)))
    batch.update(old_logprobs=old.logprobs, pooled_old=old.pooled, ref_logprobs=reference.logprobs(batch))
    metrics = {}
    for mode in ("exact", "local_anchor"):
        cfg.mcpo.grad_mode = mode
        metrics[mode] = train_minibatch(state, make_term(cfg, projector, groups), policy_loss_from_config(cfg), batch,
                                        cfg.parallel.micro_batch_size, reuse_old_pooled=mode == "exact")
    tensors = {"batch/" + k: v for k, v in batch.items()}
    for i, p in enumerate(state.policy.parameters()):
        tensors[f"param{i}"] = p
        tensors[f"main_grad{i}"] = p.main_grad
    for i, p in enumerate(reference.policy.parameters()):
        tensors[f"ref{i}"] = p
    for i, p in enumerate(projector.head.parameters()):
        tensors[f"proj{i}"] = p
    for name, opt in (("opt", state.optimizer), ("proj_opt", projector.optimizer)):
        for j, st in enumerate(opt.state_dict()["state"].values()):
            # torch Adam keeps its step counter on the host unless fused/capturable: not a device tensor
            tensors.update({f"{name}{j}/{k}": v for k, v in st.items() if torch.is_tensor(v) and k != "step"})
    inner = inner_optimizers(state.optimizer)
    return {"asked": asked, "devices": {k: str(v.device) for k, v in tensors.items()},
            "optimizer_states": sum(k.startswith("opt") for k in tensors), "metrics": metrics,
            "adam_fused": [g["fused"] for o in inner for g in o.param_groups]}


def test_cpu_run_on_a_cuda_machine_is_a_plain_cpu_run(tiny_dirs):
    (r,) = run_distributed(trainer_pieces, world_size=1, timeout=600, hf_dir=tiny_dirs["qwen3"])
    assert r["asked"] == []  # nothing of ours asked torch.cuda.is_available() in a CPU run
    assert r["optimizer_states"] > 0 and any(k.startswith("proj_opt") for k in r["devices"])
    assert {d for d in r["devices"].values()} == {"cpu"}, {k: d for k, d in r["devices"].items() if d != "cpu"}
    assert not any(r["adam_fused"])  # fused Adam is for CUDA: CPU runs keep torch's default loop
    for mode, m in r["metrics"].items():
        assert m["update_successful"] == 1.0 and m["grad_norm"] > 0, (mode, m)
        assert "mcpo/loss_cl" in m, mode
