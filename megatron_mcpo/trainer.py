"""The RL loop: prompts → vLLM rollouts → verifiable rewards → group advantages → Megatron update
(GRPO/DAPO policy loss + λ·MCPO over the whole mini-batch pool) → refit → next step.

`Trainer.rl_step` is the table of contents of the system. One SPMD program: every rank holds its
Megatron shard; rollout engines sit where rollout/placement.py puts them (colocated: a worker in every
rank; dedicated: one per data-parallel replica, driven by its first rank), and each replica's engines
share their rollouts with the rest of its model-parallel group. build.py assembles the Trainer's parts.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.advantages import advantage_metrics
from megatron_mcpo.algorithms.dapo import overlong_penalty
from megatron_mcpo.algorithms.rollout_correction import reduce_correction_metrics, rollout_correction
from megatron_mcpo.config import Config
from megatron_mcpo.data.batch import Rollout, build_train_batch
from megatron_mcpo.data.dataset import PromptSampler, record_domain
from megatron_mcpo.data.run_prompts import PromptFitter, read_prompts
from megatron_mcpo.distributed import ParallelGroups
from megatron_mcpo.metrics_log import MetricsLogger
from megatron_mcpo.progress import phase
from megatron_mcpo.rollout.collect import EVAL_SEED_OFFSET, gather_lists, generate, length_metrics, sampling_seed, score_answers
from megatron_mcpo.training.checkpoint import load_checkpoint, save_checkpoint
from megatron_mcpo.training.ckpt_files import (
    LATEST, check_run_info, model_identity, optimizer_layout, prune_checkpoints, resume_source,
)
from megatron_mcpo.training.dynamic_sampling import dynamic_sampling_rounds
from megatron_mcpo.training.interrupt import StopRequest, TrainingInterrupted
from megatron_mcpo.training.losses import correction_knobs
from megatron_mcpo.training.mcpo_term import ContrastiveTerm
from megatron_mcpo.training.minibatch import global_counts, train_minibatch
from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

PROMPT_UID_STRIDE = 1_000_000  # prompt ids = generation batch * stride + global prompt index: unique everywhere
SAMPLES_LOGGED = 3  # (prompt, response, score) examples per step in the metrics log


class _PhaseClock:
    """Wall time per phase of a step: each lap() charges the time since the previous one to a phase;
    finish() charges the rest to time/other, so the phases sum to time/step."""

    def __init__(self):
        self.start = self.tic = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.tic
        self.tic = now

    def move(self, source: str, target: str, seconds: float) -> None:
        """Charge `seconds` of `source`'s time to `target` (a part timed inside it)."""
        self.phases[source] -= seconds
        self.phases[target] = self.phases.get(target, 0.0) + seconds

    def finish(self) -> dict:
        step = time.perf_counter() - self.start
        other = step - sum(self.phases.values())
        return {**{f"time/{k}": v for k, v in self.phases.items()}, "time/other": other, "time/step": step}


def _prompt_text(prompt) -> str:
    """A prompt for the log: its last message's content if it is a chat."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return prompt if isinstance(prompt, str) else str(prompt)[:200]


class Trainer:
    """The RL loop over components assembled by `build.build_trainer` (nothing here builds or validates)."""

    def __init__(self, cfg: Config, *, groups: ParallelGroups, metrics_log: MetricsLogger, hf_dir: str, hf_config: dict,
                 state, reference, projector, term: ContrastiveTerm, policy_loss: Callable, placement, engine, scorer,
                 memory, sampler: PromptSampler, fit_prompts: PromptFitter):
        """`reference` (KL term), `projector` (MCPO, last stage), `engine` and `scorer` (ranks hosting an
        engine) and `memory` (colocated engines) are None where absent; `fit_prompts` fits read prompt
        records to the engine (evaluation's, loaded at the first evaluation)."""
        self.cfg, self.groups, self.metrics_log = cfg, groups, metrics_log
        self.hf_dir, self.hf_config = hf_dir, hf_config
        self.state, self.reference, self.projector, self.term, self.policy_loss = state, reference, projector, term, policy_loss
        self.placement, self.engine, self.scorer, self.memory = placement, engine, scorer, memory
        self.sampler, self.fit_prompts = sampler, fit_prompts
        self._eval_records = None  # loaded at the first evaluation
        self.gen_batches = 0
        self.rl_steps = 0
        self._saved_step, self._saved_path = None, None  # the last checkpoint written or loaded
        self._samples: list[dict] = []  # a few of the last step's (prompt, response, score), for the log

    # ------------------------------------------------------------------ the step
    def rl_step(self) -> dict:
        cfg, g = self.cfg, self.groups
        clock = _PhaseClock()  # time/step = the sum of the time/<phase> keys, bookkeeping in time/other
        scoring_before = getattr(self.scorer, "busy_seconds", 0.0)  # no scorer (None) on engine workers: 0
        rollouts, gen_metrics = self.generate_and_score()                        # rollout/ + rewards/
        clock.lap("rollout")
        clock.move("rollout", "reward", getattr(self.scorer, "busy_seconds", 0.0) - scoring_before)
        if self.memory is not None:                                               # colocated: engine sleeps
            gen_metrics.update(self.memory.to_training())
            clock.lap("memory")
        batch = self.make_train_batch(rollouts)                                   # advantages, tokens, masks
        gen_metrics.update(advantage_metrics(batch["advantages"], g.dp))
        clock.lap("make_batch")
        reuse_current = self.old_is_current()
        mismatch, current = {}, {}
        if not reuse_current:                                                     # forward-only pass
            old, mismatch = self.old_logprobs(batch)
            batch.update(old)
            clock.lap("old_logprob")
        if self.reference is not None:                                            # KL term: log π_ref
            ref = self.reference.logprobs(batch)
            batch["ref_logprobs"] = ref if ref is not None else torch.zeros(batch["tokens"].shape, device=g.device)
            clock.lap("ref_logprob")
        metrics = {}
        mini_seqs = cfg.algorithm.mini_batch_prompts // g.dp_size * cfg.rollout.n
        n_local = batch["tokens"].shape[0]
        collect = (lambda logprobs, rows: current.update(zip(rows.tolist(), logprobs))) if reuse_current else None
        for epoch in range(cfg.algorithm.ppo_epochs):
            for i, start in enumerate(range(0, n_local - mini_seqs + 1, mini_seqs)):
                mini = {k: v[start : start + mini_seqs] for k, v in batch.items()}
                first = epoch == 0 and i == 0  # θ still equals the rollout policy
                m = train_minibatch(self.state, self.term, self.policy_loss, mini, cfg.parallel.micro_batch_size,
                                    reuse_old_pooled=first, on_logprobs=collect)
                for k, v in m.items():
                    metrics.setdefault(k, []).append(v)
        clock.lap("train")
        if current:  # the training pass's log-probs were π_old's: the mismatch metrics from them
            mismatch = self.mismatch_metrics(torch.stack([current[r] for r in range(n_local)]), batch)[1]
            clock.lap("old_logprob")
        if self.memory is not None:                                               # colocated: engine wakes
            gen_metrics.update(self.memory.before_refit())
        refit_stats = self.refit()                                                # weights/refit.py
        if self.memory is not None:
            gen_metrics.update(self.memory.after_refit())
        clock.lap("refit")
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        self.rl_steps += 1
        out.update(gen_metrics, **mismatch, **refit_stats, step=self.rl_steps, optimizer_steps=self.state.step)
        out.update(clock.finish())
        return out

    # ------------------------------------------------------------------ pieces
    def generate_and_score(self) -> tuple[list[Rollout], dict]:
        """This replica's rollouts (groups of n per prompt), scored. Under DAPO's dynamic sampling, rounds of
        gen_batch_prompts prompts are generated until train_batch_prompts mixed-outcome groups are kept,
        counted over all replicas (verl's recipe), and the kept groups are then shared out evenly."""
        cfg, g = self.cfg, self.groups
        a = cfg.algorithm
        metrics = {}
        if not a.dynamic_sampling:
            kept, all_results = self._generate_round(a.train_batch_prompts)
            groups_kept = a.train_batch_prompts
        else:
            ds = dynamic_sampling_rounds(
                lambda: self._generate_round(a.gen_batch_prompts),
                lambda rollouts: self._filter_values(rollouts, a),
                n=cfg.rollout.n, train_batch_prompts=a.train_batch_prompts, mini_batch_prompts=a.mini_batch_prompts,
                max_rounds=a.max_num_gen_batches, metric=a.dynamic_sampling_metric,
                on_exhausted=a.dynamic_sampling_on_exhausted, dp_group=g.dp, dp_rank=g.dp_rank, dp_size=g.dp_size,
            )
            kept, all_results, groups_kept = ds.rollouts, ds.results, ds.groups_kept
            if ds.exhausted and g.world_rank == 0:
                print(f"warning: dynamic sampling kept {ds.groups_seen} of {a.train_batch_prompts} prompt groups in "
                      f"{ds.rounds} rounds (algorithm.max_num_gen_batches); training on {groups_kept}", flush=True)
            metrics.update({"rollout/gen_rounds": float(ds.rounds), "rollout/dynamic_sampling_exhausted": float(ds.exhausted)})
        from megatron_mcpo.rewards import reward_metrics

        metrics.update(reward_metrics(gather_lists(all_results, g.dp, g.dp_size), group_size=cfg.rollout.n))
        metrics.update({"rollout/groups_kept": float(groups_kept), "rollout/gen_batches": float(self.gen_batches)})
        metrics.update(length_metrics([len(r.response_ids) for r in kept], [r.finish_reason == "length" for r in kept], "rollout"))
        return kept, metrics

    def _generate_round(self, prompts: int) -> tuple[list[Rollout], list]:
        """One generation round of `prompts` prompts over all replicas: this replica's share, scored."""
        g = self.groups
        per_rank = prompts // g.dp_size
        records = self.sampler.next_batch(prompts)[g.dp_rank * per_rank : (g.dp_rank + 1) * per_rank]
        uid_base = self.gen_batches * PROMPT_UID_STRIDE
        self.gen_batches += 1
        return self._replica_rollouts(records, uid_base)

    def _filter_values(self, rollouts: list[Rollout], a) -> torch.Tensor:
        """What dynamic sampling filters on: the 0/1 accuracy, or the sequence reward the advantages will use."""
        if a.dynamic_sampling_metric == "acc":
            return torch.tensor([r.acc for r in rollouts], dtype=torch.float64)
        scores = torch.tensor([r.score for r in rollouts], dtype=torch.float64)
        if a.overlong_buffer_enable:
            lengths = torch.tensor([len(r.response_ids) for r in rollouts])
            scores, _ = overlong_penalty(scores, lengths, self.cfg.rollout.max_response_length,
                                         a.overlong_buffer_len, a.overlong_penalty_factor)
        return scores

    def _replica_rollouts(self, records, uid_base):
        """The replica's rollouts and reward results, in record order: its engines (rollout/placement.py)
        each generate for records[k::K], every worker of an engine taking part (vLLM SPMD); the leaders
        score, and the model-parallel group gathers the parts."""
        from megatron_mcpo.rollout.placement import engine_share, merge_engine_shares

        pl, n = self.placement, self.cfg.rollout.n
        part = self._rollouts_on_engine(engine_share(records, pl), uid_base, pl.engine_leader) if self.engine is not None else None
        if self.groups.tp_size * self.groups.pp_size * self.groups.cp_size == 1:
            return part
        parts: list = [None] * dist.get_world_size(self.groups.mp)
        dist.all_gather_object(parts, (pl.engine_index, part if pl.engine_leader else None), group=self.groups.mp)
        shares = {k: p for k, p in parts if p is not None}
        K = pl.engines_per_replica
        return (merge_engine_shares({k: p[0] for k, p in shares.items()}, len(records), K, n),
                merge_engine_shares({k: p[1] for k, p in shares.items()}, len(records), K, n))

    def _rollouts_on_engine(self, records, uid_base, score: bool = True):
        # Reproducible per (run seed, replica, generation batch, prompt, sample): a resumed run repeats.
        seed = sampling_seed(self.cfg.rollout.seed, self.groups.dp_rank, uid_base)
        answers = generate(self.engine, [rec for _, rec in records], self.cfg.rollout.sampling, seed)
        rollouts = [Rollout(uid_base + index, record_domain(rec), a.sample.prompt_ids, a.sample.token_ids,
                            a.sample.logprobs, a.sample.finish_reason)
                    for (index, rec), group in zip(records, answers) for a in group]
        if not score:
            return rollouts, None
        scored = score_answers(self.scorer, answers, errors="zero")
        results = [a.result for group in scored for a in group]
        self._note_scorer_errors(results)
        self._samples = [{"prompt": _prompt_text(group[0].record["prompt"]), "response": group[0].sample.text,
                          "score": float(group[0].result["score"])} for group in scored[:SAMPLES_LOGGED]]
        for r, res in zip(rollouts, results):
            r.score, r.acc = float(res["score"]), float(bool(res["acc"]))
        return rollouts, results

    def make_train_batch(self, rollouts: list[Rollout]) -> dict:
        cfg = self.cfg
        a = cfg.algorithm
        overlong = (cfg.rollout.max_response_length, a.overlong_buffer_len, a.overlong_penalty_factor)
        return build_train_batch(
            rollouts, adv_estimator=a.adv_estimator, adv_eps=a.adv_eps,
            overlong=overlong if a.overlong_buffer_enable else None,
            scatter_seed=self.gen_batches if cfg.mcpo.pool_order == "scattered" else None, device=self.groups.device,
        )

    def old_is_current(self) -> bool:
        """Whether π_old is the policy the batch's only update trains (one epoch, one mini-batch) and
        nothing needs a separate forward pass: no rollout-correction weights (they multiply the loss) and
        no contrastive pool states read before the training pass (the term says; exact mode with one local
        micro-batch builds the pool in the same graph). Then the training pass's log-probs are π_old's (no
        dropout: provider.py)."""
        cfg, g = self.cfg, self.groups
        a = cfg.algorithm
        if a.ppo_epochs != 1 or a.mini_batch_prompts != a.train_batch_prompts:
            return False
        if any(v is not None for v in correction_knobs(a.rollout_correction).values()):
            return False
        local_seqs = a.mini_batch_prompts // g.dp_size * cfg.rollout.n
        return not self.term.needs_pool_states(-(-local_seqs // cfg.parallel.micro_batch_size))

    def old_logprobs(self, batch: dict) -> tuple[dict, dict]:
        """log π_old of the response tokens (and the pooled states) from the policy that sampled them,
        and how far the engine's sampling log-probs are from them (train/rollout mismatch)."""
        outs = forward_outputs(self.state.policy, split_microbatches(batch, self.cfg.parallel.micro_batch_size))
        if outs is None:  # not the last pipeline stage: the loss is computed elsewhere
            return {"old_logprobs": torch.zeros(batch["tokens"].shape, device=self.groups.device)}, {}
        out = concat_outputs(outs)
        weights, metrics = self.mismatch_metrics(out.logprobs, batch)
        result = {"old_logprobs": out.logprobs, "pooled_old": out.pooled}
        if weights is not None:
            result["is_weights"] = weights
        return result, metrics

    def mismatch_metrics(self, old_logprobs: torch.Tensor, batch: dict) -> tuple:
        """(rollout-correction weights or None when no knob is on, metrics): the engine's sampling log-probs
        against π_old's `old_logprobs` [n, s] (train/rollout mismatch)."""
        m = batch["response_mask"]
        diff = (old_logprobs - batch["sample_logprobs"]).abs()[m]
        metrics = {"rollout/logprob_abs_diff_mean": float(diff.mean()), "rollout/logprob_abs_diff_max": float(diff.max())}
        # Mismatch metrics every step; correction weights when algorithm.rollout_correction turns a knob on.
        rc = self.cfg.algorithm.rollout_correction
        tokens, seqs = global_counts(batch, self.groups.dp)
        weights, corr = rollout_correction(old_logprobs, batch["sample_logprobs"], m, global_num_tokens=tokens,
                                           global_num_seqs=seqs, **correction_knobs(rc))
        metrics.update(reduce_correction_metrics(corr, self.groups.dp))
        knobs = any(v is not None for v in correction_knobs(rc).values())
        return (weights if knobs else None), metrics

    def evaluate(self) -> dict:
        """Held-out metrics of the current policy (evaluation.py); collective over all ranks."""
        from megatron_mcpo.evaluation import evaluate

        cfg, g, e = self.cfg, self.groups, self.cfg.eval
        if self._eval_records is None:
            self._eval_records = self.load_prompts(e.files, cfg.data.seed + 1, e.prompts_per_domain, "heldout")
        seed = sampling_seed(cfg.rollout.seed, g.dp_rank, EVAL_SEED_OFFSET)  # same weights, same answers
        tic = time.perf_counter()
        with phase("evaluation"):
            metrics = evaluate(self.engine, self.scorer, self._eval_records, e.sampling, g.dp, g.dp_rank, g.dp_size, seed)
        metrics["time/eval"] = time.perf_counter() - tic
        return metrics

    def refit(self) -> dict:
        from megatron_mcpo.weights.refit import refit

        stats = refit(self.state.policy.chunks, self.hf_config, self.groups, self.engine, self.cfg.rollout.refit_bucket_mb)
        return {"refit/seconds": stats.seconds, "refit/gb_per_s": stats.gb_per_s}

    # ------------------------------------------------------------------ data, checkpoints
    def load_prompts(self, files: list[str], synthetic_seed: int, synthetic_per_domain: int, split: str) -> list[dict]:
        """Records of `files` (.jsonl/.parquet; else the synthetic suite's `split`) in data.domains whose prompt fits."""
        d = self.cfg.data
        records = read_prompts(files, d.domains, synthetic_seed, synthetic_per_domain, split, self.groups.world_rank == 0,
                               d.synthetic_system_prompts)
        return self.fit_prompts(records, files)

    def _projector_sizes(self):
        m = self.cfg.mcpo
        return {"proj_dim": m.proj_dim, "proj_hidden_dim": m.proj_hidden_dim} if self.cfg.algorithm.is_mcpo else None

    def resume(self) -> None:
        """Continue from checkpoint.load_dir or save_dir per checkpoint.resume (ckpt_files.resume_source)."""
        c = self.cfg.checkpoint
        path = resume_source(c)
        if c.overwrite and c.save_dir and (path is None or os.path.dirname(os.path.abspath(path)) != os.path.abspath(c.save_dir)):
            marker = os.path.join(c.save_dir, LATEST)  # the old run's: never resume it by accident now
            if dist.get_rank() == 0 and os.path.isfile(marker):
                os.remove(marker)
        if path is None:
            return
        check_run_info(path, self.hf_config, self._projector_sizes(), self.cfg.model.hf_path,
                       optimizer_layout(self.cfg.parallel))
        common = load_checkpoint(self.state, path)
        self.sampler.load_state_dict(common["sampler"])
        self.gen_batches = int(common["gen_batches"])
        self.rl_steps = self._saved_step = int(common["rl_steps"])
        self._saved_path = path
        head = os.path.join(path, "projector.pt")
        if self.projector is not None:
            if os.path.isfile(head):
                self.projector.load_state_dict(torch.load(head, map_location=self.groups.device, weights_only=False))
            elif self.groups.world_rank == 0:
                print(f"checkpoint: {path} has no MCPO projection head (saved without MCPO): starting a new one", flush=True)
        if self.groups.world_rank == 0:
            print(f"checkpoint: resumed from {path} (RL step {self.rl_steps})", flush=True)
        self.refit()  # the engine still holds the initial weights

    def save(self) -> str:
        c = self.cfg.checkpoint
        if dist.get_rank() == 0 and not os.path.isdir(os.path.join(c.save_dir, "hf")):
            from megatron_mcpo.weights.dist_ckpt import write_hf_metadata

            # The HF config, family and tokenizer files, so tools/convert_megatron_to_hf.py needs nothing else.
            os.makedirs(c.save_dir, exist_ok=True)
            write_hf_metadata(c.save_dir, self.hf_dir, self.cfg.model.params_dtype)
        common = {"sampler": self.sampler.state_dict(), "gen_batches": self.gen_batches, "rl_steps": self.rl_steps}
        g = self.groups

        def save_projector(path):  # before the checksums and the latest marker
            if self.projector is not None and g.dp_rank == 0 and g.tp_rank == 0:
                torch.save(self.projector.state_dict(), os.path.join(path, "projector.pt"))

        info = {"model": model_identity(self.hf_config), "model_name": self.cfg.model.hf_path,
                "algorithm": self.cfg.algorithm.name, "projector": self._projector_sizes(), "rl_steps": self.rl_steps,
                "optimizer_layout": optimizer_layout(self.cfg.parallel)}
        with self.memory.training_state_resident() if self.memory is not None else nullcontext():
            path = save_checkpoint(self.state, c.save_dir, common, extra=save_projector, run_info=info,
                                   optimizer_format=c.optimizer_format)
        self._saved_step, self._saved_path = self.rl_steps, path
        if c.keep_last and g.world_rank == 0:
            for old in prune_checkpoints(c.save_dir, c.keep_last):
                print(f"checkpoint: deleted {old} (checkpoint.keep_last={c.keep_last})", flush=True)
        return path

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict]:
        """Run to run.total_steps, saving every checkpoint.save_interval steps and at the end. SIGTERM or
        SIGINT (interrupt.py) finishes the current step, saves and raises TrainingInterrupted."""
        cfg = self.cfg
        history = []
        c = cfg.checkpoint
        with StopRequest() as stop:
            if cfg.eval.before_train:
                history.append({"step": self.rl_steps, **self.evaluate()})
                self._log(history[-1])
            while self.rl_steps < cfg.run.total_steps:
                metrics = self.rl_step()
                e = cfg.eval.every
                if e and (self.rl_steps % e == 0 or self.rl_steps == cfg.run.total_steps):
                    metrics.update(self.evaluate())
                if self._samples:
                    metrics["samples"] = self._samples
                history.append(metrics)
                self._log(metrics)
                if c.save_dir and c.save_interval and self.rl_steps % c.save_interval == 0:
                    self.save()
                signum = stop.agreed()
                if signum is not None:
                    if c.save_dir and self._saved_step != self.rl_steps:
                        self.save()
                    raise TrainingInterrupted(signum, self._saved_path)
        if c.save_dir and self._saved_step != self.rl_steps:
            self.save()
        if c.export_hf and self._saved_path:
            self.export_hf(self._saved_path)
        return history

    def export_hf(self, ckpt_path: str) -> str:
        """The saved checkpoint as an HF directory <save_dir>/hf_export (weights, config, tokenizer, chat template)."""
        from megatron_mcpo.weights.dist_ckpt import convert_megatron_to_hf

        out = os.path.join(self.cfg.checkpoint.save_dir, "hf_export")
        if dist.get_rank() == 0:
            shutil.rmtree(out, ignore_errors=True)  # an earlier run's export: no stale shards left behind
            convert_megatron_to_hf(ckpt_path, out)
            print(f"exported HF checkpoint to {out}", flush=True)
        dist.barrier()
        return out

    def _log(self, metrics: dict) -> None:
        self.metrics_log.log(metrics)
        if dist.get_rank() != 0:
            return
        keys = ("step", "reward/all/acc", "eval/all/acc", "pg_loss", "mcpo/loss_cl", "grad_norm",
                "rollout/logprob_abs_diff_max", "reward/scorer_errors")
        line = [f"{k}={metrics[k]:.4g}" for k in keys if k in metrics]
        line += [f"lr={metrics['lr']:.3g}"] if "lr" in metrics else []
        phases = [(k[5:], v) for k, v in metrics.items() if k.startswith("time/")]  # rollout, old_logprob, ..., refit
        line.append("time[s] " + " ".join(f"{k}={v:.3g}" for k, v in phases))
        print(" ".join(line), flush=True)

    def _note_scorer_errors(self, results: list) -> None:
        """A scorer error scores 0 (RewardScorer errors="zero"); say so, with the first message."""
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            print(f"warning: rewards: {len(errors)} of {len(results)} samples could not be scored and count as "
                  f"incorrect (metric reward/scorer_errors); first: {errors[0]}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.metrics_log.close()
        if self.scorer is not None:
            self.scorer.close()
        if self.engine is not None:
            self.engine.shutdown()
