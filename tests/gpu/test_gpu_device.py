"""GPU: a run with run.device=cuda keeps every tensor the trainer builds on the GPU (policy, gradients,
optimizer states, KL reference, projection head and its optimizer, the batch from rollouts, old and
reference log-probs), its Adam is torch's fused kernel, and its MCPO optimizer steps (exact and
local-anchor) match the same steps on the CPU: fp32, TF32 off, 1e-4 relative on the losses and grad norms.
"""
import os
import sys

import pytest
import torch

from dist_utils import run_distributed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "unit"))
from test_device import trainer_pieces  # noqa: E402

pytestmark = pytest.mark.gpu


def _pieces_fp32(rank, **kwargs):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return trainer_pieces(rank, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_trainer_tensor_on_the_gpu_and_mcpo_steps_match_cpu(tiny_dirs):
    (gpu,) = run_distributed(_pieces_fp32, world_size=1, hf_dir=tiny_dirs["qwen3"], device="cuda", claim_cuda=False)
    (cpu,) = run_distributed(_pieces_fp32, world_size=1, hf_dir=tiny_dirs["qwen3"], device="cpu", claim_cuda=False)
    off = {k: d for k, d in gpu["devices"].items() if d != "cuda:0"}
    assert not off, off
    assert gpu["optimizer_states"] > 0 and any(k.startswith("proj_opt") for k in gpu["devices"])
    assert gpu["adam_fused"] and all(gpu["adam_fused"])  # torch's fused AdamW on CUDA (optimizer_fallbacks.py)
    for mode in ("exact", "local_anchor"):
        g, c = gpu["metrics"][mode], cpu["metrics"][mode]
        for key in ("pg_loss", "mcpo/loss_cl", "grad_norm", "proj_grad_norm"):
            assert g[key] == pytest.approx(c[key], rel=1e-4, abs=1e-7), (mode, key)
