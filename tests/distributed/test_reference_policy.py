"""The KL reference policy at PP2 (2 gloo ranks): before any update its log-probs equal the policy's
(the KL term is exactly 0); after real optimizer steps the policy moves and the reference does not; the
demo's start_rl_from_policy (after its warm start) makes the reference the trained policy again."""
from types import SimpleNamespace

import pytest
import torch

from dist_utils import run_distributed

pytestmark = pytest.mark.dist


def _rank_fn(rank, hf_dir):
    from weights.refit_helpers import fixed_tokens, hf_config, megatron_logprobs, sgd_steps, train_state

    from megatron_mcpo.algorithms.policy_loss import ppo_policy_loss
    from megatron_mcpo.config import Config
    from megatron_mcpo.demo import start_rl_from_policy
    from megatron_mcpo.training.reference import ReferencePolicy
    from megatron_mcpo.weights.loader import load_hf_weights

    state, groups = train_state(hf_dir, pp=2)
    cfg = Config()
    cfg.parallel.pp, cfg.parallel.micro_batch_size = 2, 2
    ref = ReferencePolicy(cfg, hf_config(hf_dir), groups, lambda chunks: load_hf_weights(chunks, hf_dir, groups))
    assert not any(p.requires_grad for p in ref.policy.parameters())
    tokens = fixed_tokens(n=4, length=16)
    batch = {"tokens": tokens, "response_mask": torch.ones_like(tokens, dtype=torch.bool)}

    def ref_lp():
        lp = ref.logprobs(batch)
        return None if lp is None else lp[:, 1:].double()

    before = (megatron_logprobs(state, tokens), ref_lp())
    sgd_steps(state, fixed_tokens(seed=11))
    after = (megatron_logprobs(state, tokens), ref_lp())
    start_rl_from_policy(SimpleNamespace(reference=ref, state=state, refit=lambda: None))
    adopted = (megatron_logprobs(state, tokens), ref_lp())
    if not groups.is_last_stage:
        assert before == (None, None) and after == (None, None) and adopted == (None, None)
        return None
    mask = torch.ones_like(before[0], dtype=torch.bool)
    kl = []
    for policy_lp, ref_lp_ in (before, after):
        _, m = ppo_policy_loss(policy_lp, policy_lp, torch.zeros(4), mask, clip_ratio_low=0.2, clip_ratio_high=0.2,
                               clip_ratio_c=3.0, loss_agg_mode="token-mean", global_num_tokens=float(mask.sum()),
                               global_num_seqs=4.0, ref_logprobs=ref_lp_, kl_coef=0.1, kl_estimator="k3")
        kl.append(float(m["kl_loss"]))
    return {"before": before, "after": after, "adopted": adopted, "kl": kl}


def test_reference_is_the_frozen_initial_policy(tiny_dirs):
    _, last = run_distributed(_rank_fn, world_size=2, timeout=300, hf_dir=tiny_dirs["llama"])
    (policy0, ref0), (policy1, ref1) = last["before"], last["after"]
    assert torch.equal(ref0, policy0) and torch.equal(ref1, ref0)  # same forward code, same weights
    assert (policy1 - ref1).abs().max() > 1e-2  # the policy trained away from it
    assert last["kl"][0] == 0.0 and last["kl"][1] > 1e-4
    policy2, ref2 = last["adopted"]
    assert torch.equal(policy2, policy1) and torch.equal(ref2, policy1)  # the reference took the trained weights
