"""HF -> Megatron at TP1/TP2/PP2 (and PP2 x VPP2) on 2 gloo ranks: the model's per-token log-probs and
entropies equal transformers' (fp32, tolerance 1e-4), whether the weights come straight from the HF
files (`load_hf_weights`) or from the converted dist checkpoint (resharded on load); and streaming the
model back out (`megatron_to_hf_tensors`, TP gather + PP broadcast) reproduces the HF tensors bit-exactly."""
import pytest
import torch

from megatron_mcpo.models.families import FAMILIES
from megatron_mcpo.weights.dist_ckpt import convert_hf_to_megatron

pytestmark = pytest.mark.dist
LAYOUTS = ((1, 1, None), (2, 1, None), (1, 2, None), (1, 2, 2))  # (tp, pp, vpp)


def _rank_fn(rank, hf_dirs, ckpt_dirs, tokens):
    from safetensors.torch import load_file
    from weights.refit_helpers import hf_config, reset_parallel_state

    from megatron_mcpo.config import ModelConfig, ParallelConfig
    from megatron_mcpo.distributed import init_distributed
    from megatron_mcpo.models.policy import PolicyModel
    from megatron_mcpo.models.provider import build_model_chunks
    from megatron_mcpo.training.checkpoint import load_model_weights
    from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches
    from megatron_mcpo.weights.gather import megatron_to_hf_tensors
    from megatron_mcpo.weights.loader import load_hf_weights

    results = {}
    batch = {"tokens": tokens, "response_mask": torch.ones_like(tokens, dtype=torch.bool)}
    for tp, pp, vpp in LAYOUTS:
        groups = init_distributed(tp=tp, pp=pp, vpp=vpp, device="cpu", seed=0)
        for fam in FAMILIES:
            hf = hf_config(hf_dirs[fam])
            for source in ("hf", "ckpt"):
                chunks = build_model_chunks(hf, ModelConfig(), ParallelConfig(tp=tp, pp=pp, vpp=vpp), groups)
                if source == "hf":
                    load_hf_weights(chunks, hf_dirs[fam], groups)
                else:
                    load_model_weights(chunks, ckpt_dirs[fam])
                outs = forward_outputs(PolicyModel(chunks, hf, groups), split_microbatches(batch, 2))
                if outs is not None:
                    out = concat_outputs(outs)
                    results[(tp, pp, vpp, fam, source)] = (out.logprobs[:, 1:].double(), out.entropy[:, 1:].double())
                exported = dict(megatron_to_hf_tensors(chunks, hf, groups))
                original = load_file(f"{hf_dirs[fam]}/model.safetensors")
                assert sorted(exported) == sorted(original), (tp, pp, fam)
                bad = [k for k in original if not torch.equal(exported[k], original[k])]
                assert not bad, (tp, pp, vpp, fam, source, bad[:3])
        reset_parallel_state()
    return results


def test_hf_to_megatron_matches_transformers(tiny_dirs, tmp_path):
    from dist_utils import run_distributed
    from transformers import AutoModelForCausalLM

    ckpts = {}
    for fam in FAMILIES:
        ckpts[fam] = str(tmp_path / fam)
        convert_hf_to_megatron(tiny_dirs[fam], ckpts[fam], tp=2, dtype="fp32")  # saved at TP2, loaded anywhere
    tokens = torch.randint(3, 1000, (4, 24), generator=torch.Generator().manual_seed(5))
    per_rank = run_distributed(_rank_fn, world_size=2, timeout=1200, hf_dirs=dict(tiny_dirs), ckpt_dirs=ckpts, tokens=tokens)
    results = {**per_rank[0], **per_rank[1]}
    assert len(results) == len(LAYOUTS) * len(FAMILIES) * 2
    for fam in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs[fam], dtype=torch.float32).eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens).logits.double(), dim=-1)[:, :-1]
        ref_lp = logp.gather(-1, tokens[:, 1:, None])[..., 0]
        ref_ent = -(logp.exp() * logp).sum(-1)
        for (tp, pp, vpp, f, source), (lp, ent) in results.items():
            if f == fam:
                assert (lp - ref_lp).abs().max() < 1e-4, (tp, pp, vpp, fam, source)
                assert (ent - ref_ent).abs().max() < 1e-4, (tp, pp, vpp, fam, source)
