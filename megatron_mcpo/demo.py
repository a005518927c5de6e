"""`make demo`: the real MCPO loop on the embedded CPU default.

A randomly initialised tiny model almost never earns a reward, which leaves GRPO advantages and the
MCPO pool empty. So the demo first warms the policy up with a few supervised steps on the synthetic
suite's reference answers (the same Megatron train step, an NLL loss), pushes those weights into the
rollout engine, and then runs the RL loop. The warm-up does not count towards the MCPO warmup counter.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megatron_mcpo.models.policy import unwrap
from megatron_mcpo.training.ckpt_files import CheckpointError
from megatron_mcpo.training.optimizer import set_policy_weights
from megatron_mcpo.training.optimizer_fallbacks import inner_optimizers
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


ABSTENTION = "I am not sure."


def with_abstentions(records: list[dict], rate: float, rng: random.Random) -> list[dict]:
    """`records` with the reference of a `rate` share of them replaced by ABSTENTION, which every verifier
    scores 0: the demo's warm start imitates a teacher that declines that share of its questions. The
    policy then abstains about as often on any prompt, and RL's reward (0 for an abstention, 1 for a right
    answer) is what teaches it to answer: a behaviour that transfers to held-out prompts within the few RL
    steps a CPU affords, where sharpening the content skills did not (README, demo)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"demo: the teacher's abstention rate must be in [0, 1), got {rate}")
    return [{**r, "extra_info": {**r["extra_info"], "reference": ABSTENTION}} if rng.random() < rate else r
            for r in records]


def length_bucketed(records: list[dict], batch_size: int, window: int, rng: random.Random) -> list[dict]:
    """`records` regrouped so that each batch holds records of similar length (less padding, as each batch
    pads to its longest): every run of `window` batches is sorted by length (characters of prompt and
    reference), cut into batches, and the batches shuffled. window=1 keeps the order."""
    if window <= 1:
        return list(records)
    out = []
    for start in range(0, len(records), batch_size * window):
        chunk = sorted(records[start : start + batch_size * window],
                       key=lambda r: len(str(r["prompt"])) + len(r["extra_info"]["reference"]))
        batches = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        out += [r for b in batches for r in b]
    return out


def _clear_adam_state(optimizer) -> None:
    """Drop the torch optimizers' moment estimates (they re-initialise lazily at the next step)."""
    for inner in inner_optimizers(optimizer):
        inner.state.clear()


def sft_warm_start(trainer, steps: int, batch_size: int = 20, seed: int = 0, lr: Optional[float] = None,
                   after_step: Optional[Callable[[int, float], None]] = None, abstain: float = 0.0,
                   length_window: int = 1) -> list[float]:
    """`steps` supervised updates on reference answers at learning rate `lr` (default: optimizer.lr), then a
    refit. Its prompts are a draw of their own (data.seed + 2), one pass of steps * batch_size records, not
    the RL prompts: RL on prompts the warm start has memorised finds every group all right or all wrong (no
    advantage), while fresh ones are answered as unevenly as held-out ones. The RL run then starts as from an
    SFT checkpoint: its step counter, LR schedule and Adam moments as if untouched (the warm start's
    NLL-gradient moments would otherwise steer RL's first steps and scale its step sizes). `after_step(i, nll)`
    runs after update i (1-based; benchmarks/warm_start_curve.py evaluates there). `abstain`: the share of
    references replaced by an abstention (with_abstentions); `length_window`: batches of similar length
    (length_bucketed). Returns the NLL per step."""
    from transformers import AutoTokenizer

    g, d = trainer.groups, trainer.cfg.data
    tokenizer = AutoTokenizer.from_pretrained(trainer.hf_dir)
    per_domain = -(-steps * batch_size // len(d.domains))
    pool = trainer.load_prompts(d.train_files, d.seed + 2, per_domain, "train")
    records = [r for r in pool if "reference" in (r.get("extra_info") or {})]
    if not records:
        raise ValueError("demo: the prompt records carry no extra_info.reference answers to warm up on")
    rng = random.Random(seed)
    order = [r for _ in range(-(-steps * batch_size // len(records))) for r in rng.sample(records, len(records))]
    order = with_abstentions(order, abstain, rng) if abstain else order
    order = length_bucketed(order, batch_size, length_window, rng)
    state = trainer.state
    step_before, schedule_before = state.step, state.scheduler.num_steps
    # Supervised NLL of the plain model (T = 1), not of the rollout-tempered distribution the RL losses use.
    temperature, state.policy.temperature = state.policy.temperature, 1.0
    per_rank = batch_size // g.dp_size
    mbs = trainer.cfg.parallel.micro_batch_size
    local_mbs = mbs if per_rank % mbs == 0 else per_rank
    step_lr = lr if lr is not None else trainer.cfg.optimizer.lr
    losses = []
    for i in range(steps):
        batch = _sft_batch(tokenizer, order[i * batch_size : (i + 1) * batch_size])
        total = float(batch["response_mask"].sum())
        local = {k: v[g.dp_rank * per_rank : (g.dp_rank + 1) * per_rank].to(g.device) for k, v in batch.items()}

        def nll(out, mb):
            loss = -(out.logprobs * mb["response_mask"]).sum() / total
            return loss, {"nll": loss.detach()}

        # set every step: the scheduler moves it after each update, and under LR warmup its step 0 is 0
        for group in state.optimizer.param_groups:
            group["lr"] = step_lr
        losses.append(train_step(state, split_microbatches(local, local_mbs), nll)["nll"])
        if after_step is not None:
            after_step(i + 1, float(losses[-1]))
    state.step, state.scheduler.num_steps = step_before, schedule_before
    state.scheduler.step(increment=0)  # back to the RL schedule's LR
    _clear_adam_state(state.optimizer)
    state.policy.temperature = temperature
    start_rl_from_policy(trainer)
    return losses


def start_rl_from_policy(trainer) -> None:
    """The warmed-up policy becomes RL's starting point: the engine gets its weights (refit) and, with a KL
    term, the reference becomes a copy of them, as an SFT checkpoint is the reference in verl's and NeMo-RL's
    recipes (the untrained weights it was built from put the KL term far from 0 at step 1)."""
    if trainer.reference is not None:
        for ref, chunk in zip(trainer.reference.policy.chunks, trainer.state.policy.chunks, strict=True):
            unwrap(ref).load_state_dict(unwrap(chunk).state_dict())
    trainer.refit()


def cached_warm_start(trainer, path: Optional[str], warm_start) -> str:
    """Run `warm_start()` and save the policy's weights to `path`, or, when `path` already holds them, load
    them instead (then start RL from them): benchmarks/learning.py gives the algorithms it compares one warm
    start per seed. A resumed run (`checkpoint.load_dir` found a checkpoint) keeps its checkpoint's policy;
    only its KL reference, when it has one, is loaded from `path`. Returns "ran", "loaded" or "resumed".
    Under TP/PP each model-parallel rank keeps its own shard in `path`.tp<i>-pp<j>; the cache is used only
    when every rank finds its file (collective), so a half-written set is warmed up again, not half-loaded."""
    g = trainer.groups
    chunks = [unwrap(c) for c in trainer.state.policy.chunks]
    resumed = trainer.rl_steps > 0
    if resumed and trainer.reference is None:
        return "resumed"
    if path and g.tp_size * g.pp_size > 1:
        path = f"{path}.tp{g.tp_rank}-pp{g.pp_rank}"
    if path and _on_every_rank(os.path.isfile(path), g.device):
        saved = torch.load(path, map_location=g.device)
        if len(saved) != len(chunks):
            raise CheckpointError(f"demo: {path} holds {len(saved)} model chunks, this run has {len(chunks)}")

        def load(targets):
            for chunk, state in zip(targets, saved):
                try:
                    unwrap(chunk).load_state_dict(state)
                except RuntimeError as e:
                    raise CheckpointError(f"demo: {path} is not a warm start of this model: {str(e)[:300]}") from None

        if resumed:
            load(trainer.reference.policy.chunks)
            return "resumed"
        set_policy_weights(trainer.state, load)
        start_rl_from_policy(trainer)
        return "loaded"
    if resumed:
        raise CheckpointError(
            "demo: resuming a run with algorithm.kl_coef > 0 needs the first run's --warm-start-cache: the KL "
            "reference is the warmed-up policy, which the training checkpoint does not hold")
    warm_start()
    if path and g.dp_rank == 0:  # the data-parallel replicas hold the same shard
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save([chunk.state_dict() for chunk in chunks], path + ".tmp")
        os.replace(path + ".tmp", path)  # a killed run leaves no half-written cache behind
    return "ran"


def _on_every_rank(flag: bool, device) -> bool:
    """`flag` and-ed over every rank of the run (collective; a single process: `flag`)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def held_out_change(history: list[dict]) -> dict[str, tuple[float, float]]:
    """{domain|all: (held-out accuracy at the first evaluation, at the last)} from a run's metric history."""
    evals = [m for m in history if "eval/all/acc" in m]
    if not evals:
        return {}
    first, last = evals[0], evals[-1]
    domains = sorted({k.split("/")[1] for k in first if k.startswith("eval/") and k.endswith("/acc")} - {"all"})
    return {d: (first[f"eval/{d}/acc"], last[f"eval/{d}/acc"]) for d in [*domains, "all"] if f"eval/{d}/acc" in last}


def held_out_table(history: list[dict], samples: int = 1, temperature: float = 0.0) -> str:
    """The per-domain held-out accuracy before → after RL as a markdown table ('' without evaluations);
    `samples` answers per prompt at `temperature` (0 = greedy), as evaluated, named in the header."""
    change = held_out_change(history)
    if not change:
        return ""
    evals = [m for m in history if "eval/all/acc" in m]
    prompts = {d: int(evals[-1].get(f"eval/{d}/count", 0)) // samples for d in change}
    how = "greedy" if temperature == 0 else f"{samples} sample{'s' * (samples > 1)}/prompt at T={temperature:g}"
    rows = [f"| held-out acc (step {int(evals[0]['step'])} → {int(evals[-1]['step'])}; {how}) | before | after | change"
            " | prompts |", "|---|---|---|---|---|"]
    rows += [f"| {d} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {prompts[d]} |" for d, (a, b) in change.items()]
    return "\n".join(rows)


def demo_report(cfg, history: list[dict]) -> str:
    """The held-out table and the path of the curves PNG (train reward/accuracy, held-out accuracy per
    domain), drawn from the run's metrics log into <run.output_dir>/plots."""
    from megatron_mcpo.plots import plot_log

    lines = [held_out_table(history, cfg.eval.n, cfg.eval.temperature)]
    log = os.path.join(cfg.logging.log_dir, f"{cfg.run.name}.jsonl")
    if "jsonl" in cfg.logging.backends and os.path.isfile(log):
        written = plot_log(log, os.path.join(cfg.run.output_dir, "plots"))
        lines += [f"curves: {path}" for path in written if path.endswith(("rewards.png", "mcpo.png"))]
    return "\n".join(lines)
