"""Rollouts -> training batch: padding, masks, aligned log-probs, shaping, advantages, scattered order."""
import torch

from megatron_mcpo.data.batch import Rollout, build_train_batch


def _rollouts():
    return [
        Rollout(7, "math", [1, 2, 3], [4, 5], [-0.1, -0.2], "stop", score=1.0),
        Rollout(7, "math", [1, 2, 3], [6, 7, 8, 9], [-0.3, -0.4, -0.5, -0.6], "length", score=0.0),
        Rollout(9, "code", [10, 11], [12], [-0.7], "stop", score=1.0),
        Rollout(9, "code", [10, 11], [13, 14], [-0.8, -0.9], "stop", score=1.0),
    ]


def test_padding_masks_and_alignment():
    b = build_train_batch(_rollouts(), adv_estimator="grpo", adv_eps=1e-6)
    assert b["tokens"].shape == (4, 8)  # longest is 7 tokens, padded to a multiple of 8
    assert b["tokens"][1].tolist() == [1, 2, 3, 6, 7, 8, 9, 0]
    assert b["response_mask"][1].tolist() == [False] * 3 + [True] * 4 + [False]
    assert b["sample_logprobs"][1, 3:7].tolist() == torch.tensor([-0.3, -0.4, -0.5, -0.6]).tolist()
    assert b["domain_ids"].tolist() == [0, 0, 1, 1]
    # GRPO: group 7 has rewards (1, 0) -> ±0.7071; group 9 is all-equal -> 0
    torch.testing.assert_close(b["advantages"], torch.tensor([0.707106, -0.707106, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_overlong_shaping_uses_response_length():
    # max 4 tokens, buffer 2: length 4 gets -(4 - 2) / 2 = -1, length 2 gets 0
    b = build_train_batch(_rollouts(), adv_estimator="grpo", adv_eps=1e-6, overlong=(4, 2, 1.0))
    torch.testing.assert_close(b["rewards"], torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_scattered_order_moves_whole_rows():
    plain = build_train_batch(_rollouts(), adv_estimator="grpo", adv_eps=1e-6)
    scattered = build_train_batch(_rollouts(), adv_estimator="grpo", adv_eps=1e-6, scatter_seed=3)
    order = [plain["tokens"].tolist().index(row) for row in scattered["tokens"].tolist()]
    assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
    for key in ("response_mask", "sample_logprobs", "rewards", "group_ids", "advantages"):
        assert torch.equal(scattered[key], plain[key][order]), key
