"""`make demo`: the real MCPO loop on the embedded CPU default.

A randomly initialised tiny model almost never earns a reward, which leaves GRPO advantages and the
MCPO pool empty. So the demo first warms the policy up with a few supervised steps on the synthetic
suite's reference answers (the same Megatron train step, an NLL loss), pushes those weights into the
rollout engine, and then runs the RL loop. The warm-up does not count towards the MCPO warmup counter.
"""
from __future__ import annotations

import random

import torch

from megatron_mcpo.training.train_step import split_microbatches, train_step


def _sft_batch(tokenizer, records, seq_multiple: int = 8) -> dict:
    seqs, starts = [], []
    for rec in records:
        prompt = tokenizer.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"]) if isinstance(prompt, dict) or hasattr(prompt, "keys") else list(prompt)
        answer = tokenizer(rec["extra_info"]["reference"], add_special_tokens=False)["input_ids"]
        seqs.append(prompt + answer + [tokenizer.eos_token_id])
        starts.append(len(prompt))
    length = -(-max(map(len, seqs)) // seq_multiple) * seq_multiple
    tokens = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, start : len(s)] = True
    return {"tokens": tokens, "response_mask": mask}


def sft_warm_start(trainer, steps: int, batch_size: int = 20, seed: int = 0) -> list[float]:
    """`steps` supervised updates on reference answers, then a refit. Returns the NLL per step."""
    from transformers import AutoTokenizer

    g = trainer.groups
    tokenizer = AutoTokenizer.from_pretrained(trainer.hf_dir)
    records = [r for r in trainer.sampler.records if "reference" in (r.get("extra_info") or {})]
    if not records:
        raise ValueError("demo: the prompt records carry no extra_info.reference answers to warm up on")
    rng = random.Random(seed)
    step_before = trainer.state.step
    # Supervised NLL of the plain model (T = 1), not of the rollout-tempered distribution the RL losses use.
    temperature, trainer.state.policy.temperature = trainer.state.policy.temperature, 1.0
    per_rank = batch_size // g.dp_size
    losses = []
    for _ in range(steps):
        batch = _sft_batch(tokenizer, rng.sample(records, batch_size))
        total = float(batch["response_mask"].sum())
        local = {k: v[g.dp_rank * per_rank : (g.dp_rank + 1) * per_rank].to(g.device) for k, v in batch.items()}

        def nll(out, mb):
            loss = -(out.logprobs * mb["response_mask"]).sum() / total
            return loss, {"nll": loss.detach()}

        mbs = trainer.cfg.parallel.micro_batch_size
        local_mbs = mbs if per_rank % mbs == 0 else per_rank
        losses.append(train_step(trainer.state, split_microbatches(local, local_mbs), nll)["nll"])
    trainer.state.step = step_before
    trainer.state.policy.temperature = temperature
    trainer.refit()
    return losses


def held_out_change(history: list[dict]) -> dict[str, tuple[float, float]]:
    """{domain|all: (held-out accuracy at the first evaluation, at the last)} from a run's metric history."""
    evals = [m for m in history if "eval/all/acc" in m]
    if not evals:
        return {}
    first, last = evals[0], evals[-1]
    domains = sorted({k.split("/")[1] for k in first if k.startswith("eval/") and k.endswith("/acc")} - {"all"})
    return {d: (first[f"eval/{d}/acc"], last[f"eval/{d}/acc"]) for d in [*domains, "all"] if f"eval/{d}/acc" in last}


def held_out_table(history: list[dict]) -> str:
    """The per-domain held-out accuracy before → after RL as a markdown table ('' without evaluations)."""
    change = held_out_change(history)
    if not change:
        return ""
    evals = [m for m in history if "eval/all/acc" in m]
    counts = {d: int(evals[-1].get(f"eval/{d}/count", 0)) for d in change}
    rows = [f"| held-out acc (step {int(evals[0]['step'])} → {int(evals[-1]['step'])}) | before | after | change | n |",
            "|---|---|---|---|---|"]
    rows += [f"| {d} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {counts[d]} |" for d, (a, b) in change.items()]
    return "\n".join(rows)
