"""GPU: sequence packing through Transformer Engine's THD attention (PackedSeqParams, per-sequence RoPE)
reproduces the padded forward and train step (skipped without CUDA or TE).

Same micro-batches, worker and checks as tests/distributed/test_packing_invariance.py, with the TE layer
spec in bf16 (TE's fused/flash THD kernels take no fp32). Padded (sbhd, causal) and packed (thd,
padding_causal) run different kernels, so the tolerance is bf16's: 5e-2 absolute on log-probs,
entropy, pooled states and gradients, 2e-2 relative on loss, grad norm and the gradient vector's norm.
Attention leaking across sequences changes log-probs by O(1), far outside it.
"""
import os
import sys

import pytest
import torch

from dist_utils import run_distributed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "distributed"))
from test_packing_invariance import _worker, check_packed_matches_padded  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_thd_packing_matches_padded_with_transformer_engine():
    pytest.importorskip("transformer_engine")
    overrides = ["model.transformer_impl=transformer_engine", "model.params_dtype=bf16"]
    (r,) = run_distributed(_worker, world_size=1, tp=1, pp=1, device="cuda", overrides=overrides)
    assert r["thd"]  # the TE spec takes PackedSeqParams
    check_packed_matches_padded([r], atol=5e-2, rel=2e-2)
