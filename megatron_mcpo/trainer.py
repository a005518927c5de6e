"""The RL loop: prompts → vLLM rollouts → verifiable rewards → group advantages → Megatron update
(GRPO/DAPO policy loss + λ·MCPO over the whole mini-batch pool) → refit → next step.

`Trainer.rl_step` is the table of contents of the system. One SPMD program: every rank holds its
Megatron shard; the first tensor/pipeline rank of each data-parallel replica owns a rollout engine and
shares its rollouts with the rest of its model-parallel group.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

import torch
import torch.distributed as dist

from megatron_mcpo.algorithms.dapo import dynamic_sampling_filter
from megatron_mcpo.config import Config, read_hf_config, validate
from megatron_mcpo.data.batch import Rollout, build_train_batch
from megatron_mcpo.data.dataset import PromptSampler, load_jsonl, record_domain, score_item
from megatron_mcpo.data.synthetic import synthetic_suite
from megatron_mcpo.distributed import broadcast_object, init_distributed
from megatron_mcpo.models.projection import build_projector
from megatron_mcpo.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_mcpo.training.minibatch import train_minibatch
from megatron_mcpo.training.optimizer import setup_train_state
from megatron_mcpo.training.train_step import concat_outputs, forward_outputs, split_microbatches

PROMPT_UID_STRIDE = 1_000_000  # prompt ids = generation batch * stride + global prompt index: unique everywhere


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        world = int(os.environ.get("WORLD_SIZE", "1"))
        validate(cfg, world_size=world)  # before any process group exists; resolves run.device once
        p = cfg.parallel
        self.groups = init_distributed(p.tp, p.pp, p.vpp, p.cp, cfg.run.device, cfg.run.seed)
        g = self.groups
        for name in ("train_batch_prompts", "mini_batch_prompts"):
            if getattr(cfg.algorithm, name) % g.dp_size:
                raise ValueError(f"algorithm.{name} must be divisible by the data-parallel size {g.dp_size}")
        self.hf_dir = self._resolve_hf_dir(cfg.model.hf_path)
        self.hf_config = read_hf_config(self.hf_dir)
        self.state = setup_train_state(cfg, self.hf_config, g)
        self._load_initial_weights(self.state.policy.chunks)
        self.reference = None
        if cfg.algorithm.kl_coef > 0:
            from megatron_mcpo.training.reference import ReferencePolicy

            self.reference = ReferencePolicy(cfg, self.hf_config, g, self._load_initial_weights)
        self.projector = None
        if cfg.algorithm.is_mcpo and g.is_last_stage:
            self.projector = build_projector(cfg.mcpo, self.hf_config["hidden_size"], cfg.run.seed, g.device)
        self.engine_rank = g.tp_rank == 0 and g.pp_rank == 0
        self.engine = self._make_engine() if self.engine_rank else None
        self.scorer = self._make_scorer() if self.engine_rank else None
        d = cfg.data
        weights = dict(zip(d.domains, d.domain_weights)) if d.domain_weights else None
        self.sampler = PromptSampler(self._load_records(d.train_files, d.seed, 20), d.seed, d.shuffle, weights)
        self._eval_records = None  # loaded at the first evaluation
        self.gen_batches = 0
        self.rl_steps = 0
        self._maybe_resume()

    # ------------------------------------------------------------------ the step
    def rl_step(self) -> dict:
        cfg, g, t = self.cfg, self.groups, {}
        tic = time.perf_counter()
        rollouts, gen_metrics = self.generate_and_score()                        # rollout/ + rewards/
        t["time/rollout"] = time.perf_counter() - tic
        batch = self.make_train_batch(rollouts)                                   # advantages, tokens, masks
        tic = time.perf_counter()
        old, mismatch = self.old_logprobs(batch)                                  # forward-only pass
        batch.update(old)
        t["time/old_logprob"] = time.perf_counter() - tic
        if self.reference is not None:                                            # KL term: log π_ref
            tic = time.perf_counter()
            ref = self.reference.logprobs(batch)
            batch["ref_logprobs"] = ref if ref is not None else torch.zeros(batch["tokens"].shape, device=g.device)
            t["time/ref_logprob"] = time.perf_counter() - tic
        tic = time.perf_counter()
        metrics = {}
        mini_seqs = cfg.algorithm.mini_batch_prompts // g.dp_size * cfg.rollout.n
        n_local = batch["tokens"].shape[0]
        for epoch in range(cfg.algorithm.ppo_epochs):
            for i, start in enumerate(range(0, n_local - mini_seqs + 1, mini_seqs)):
                mini = {k: v[start : start + mini_seqs] for k, v in batch.items()}
                first = epoch == 0 and i == 0  # θ still equals the rollout policy
                m = train_minibatch(self.state, self.projector, mini, cfg, reuse_old_pooled=first)
                for k, v in m.items():
                    metrics.setdefault(k, []).append(v)
        t["time/train"] = time.perf_counter() - tic
        tic = time.perf_counter()
        refit_stats = self.refit()                                                # weights/refit.py
        t["time/refit"] = time.perf_counter() - tic
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        self.rl_steps += 1
        out.update(gen_metrics, **mismatch, **t, **refit_stats, step=self.rl_steps, optimizer_steps=self.state.step)
        return out

    # ------------------------------------------------------------------ pieces
    def generate_and_score(self) -> tuple[list[Rollout], dict]:
        """This replica's rollouts (groups of n per prompt), scored; DAPO's dynamic sampling keeps
        generating until every replica has its share of mixed-outcome groups (or the cap is hit)."""
        cfg, g = self.cfg, self.groups
        a = cfg.algorithm.resolved()
        per_rank = a.train_batch_prompts // g.dp_size
        kept: list[Rollout] = []
        all_results: list = []
        for _ in range(a.max_num_gen_batches if a.dynamic_sampling else 1):
            records = self.sampler.next_batch(a.train_batch_prompts)[g.dp_rank * per_rank : (g.dp_rank + 1) * per_rank]
            uid_base = self.gen_batches * PROMPT_UID_STRIDE
            self.gen_batches += 1
            new, results = self._rollouts_on_engine_rank(records, uid_base) if self.engine_rank else (None, None)
            new, results = self._share_with_model_parallel_group((new, results))
            all_results += results
            if a.dynamic_sampling:
                values = torch.tensor([r.acc if a.dynamic_sampling_metric == "acc" else r.score for r in new])
                keep, _ = dynamic_sampling_filter(values, torch.tensor([r.prompt_uid for r in new]), a.dynamic_sampling_metric)
                new = [r for r, k in zip(new, keep.tolist()) if k]
            kept += new
            have = torch.tensor([len(kept) // cfg.rollout.n], device=g.device)
            dist.all_reduce(have, op=dist.ReduceOp.MIN, group=g.dp)
            if int(have) >= per_rank:
                break
        # Equal whole-mini-batch shares on every replica (dynamic sampling can leave fewer groups).
        local_mini = a.mini_batch_prompts // g.dp_size
        groups_kept = min(int(have), per_rank) // local_mini * local_mini
        kept = kept[: groups_kept * cfg.rollout.n]
        from megatron_mcpo.rewards import reward_metrics

        gathered = [None] * g.dp_size
        dist.all_gather_object(gathered, all_results, group=g.dp)
        metrics = reward_metrics([r for part in gathered for r in part])
        metrics.update({"rollout/groups_kept": float(groups_kept), "rollout/gen_batches": float(self.gen_batches)})
        lengths = [len(r.response_ids) for r in kept] or [0]
        metrics["rollout/response_length_mean"] = sum(lengths) / len(lengths)
        metrics["rollout/clip_ratio"] = sum(r.finish_reason == "length" for r in kept) / max(len(kept), 1)
        if not kept:
            raise RuntimeError("dynamic sampling kept no prompt group: raise algorithm.max_num_gen_batches")
        return kept, metrics

    def _rollouts_on_engine_rank(self, records, uid_base):
        from megatron_mcpo.rollout.engine import SamplingSpec

        cfg = self.cfg
        samples = self.engine.generate([rec["prompt"] for _, rec in records], SamplingSpec.from_rollout_config(cfg.rollout))
        rollouts, items = [], []
        for (index, rec), group in zip(records, samples):
            domain = record_domain(rec)
            for s in group:
                rollouts.append(Rollout(uid_base + index, domain, s.prompt_ids, s.token_ids, s.logprobs, s.finish_reason))
                items.append(score_item(rec, s.text))
        results = self.scorer.score_batch(items)
        for r, res in zip(rollouts, results):
            r.score, r.acc = float(res["score"]), float(bool(res["acc"]))
        return rollouts, results

    def _share_with_model_parallel_group(self, obj):
        from megatron.core import parallel_state as ps

        return broadcast_object(obj, ps.get_model_parallel_group(), src=0)

    def make_train_batch(self, rollouts: list[Rollout]) -> dict:
        cfg = self.cfg
        a = cfg.algorithm.resolved()
        overlong = (cfg.rollout.max_response_length, a.overlong_buffer_len, a.overlong_penalty_factor)
        return build_train_batch(
            rollouts, adv_estimator=a.adv_estimator, adv_eps=a.adv_eps,
            overlong=overlong if a.overlong_buffer_enable else None,
            scatter_seed=self.gen_batches if cfg.mcpo.pool_order == "scattered" else None, device=self.groups.device,
        )

    def old_logprobs(self, batch: dict) -> tuple[dict, dict]:
        """log π_old of the response tokens (and the pooled states) from the policy that sampled them,
        and how far the engine's sampling log-probs are from them (train/rollout mismatch)."""
        outs = forward_outputs(self.state.policy, split_microbatches(batch, self.cfg.parallel.micro_batch_size))
        if outs is None:  # not the last pipeline stage: the loss is computed elsewhere
            return {"old_logprobs": torch.zeros(batch["tokens"].shape, device=self.groups.device)}, {}
        out = concat_outputs(outs)
        m = batch["response_mask"]
        diff = (out.logprobs - batch["sample_logprobs"]).abs()[m]
        metrics = {"rollout/logprob_abs_diff_mean": float(diff.mean()), "rollout/logprob_abs_diff_max": float(diff.max())}
        return {"old_logprobs": out.logprobs, "pooled_old": out.pooled}, metrics

    def evaluate(self) -> dict:
        """Held-out metrics of the current policy (evaluation.py); collective over all ranks."""
        from megatron_mcpo.evaluation import evaluate
        from megatron_mcpo.rollout.engine import SamplingSpec

        cfg, g, e = self.cfg, self.groups, self.cfg.eval
        if self._eval_records is None:
            self._eval_records = self._load_records(e.files, cfg.data.seed + 1, e.prompts_per_domain)
        sampling = SamplingSpec(n=e.n, temperature=e.temperature, top_p=e.top_p, stop=list(cfg.rollout.stop),
                                max_tokens=e.max_response_length or cfg.rollout.max_response_length)
        tic = time.perf_counter()
        metrics = evaluate(self.engine, self.scorer, self._eval_records, sampling, g.dp, g.dp_rank, g.dp_size)
        metrics["time/eval"] = time.perf_counter() - tic
        return metrics

    def refit(self) -> dict:
        from megatron_mcpo.weights.refit import refit

        stats = refit(self.state.policy.chunks, self.hf_config, self.groups, self.engine, self.cfg.rollout.refit_bucket_mb)
        return {"refit/seconds": stats.seconds, "refit/gb_per_s": stats.gb_per_s}

    # ------------------------------------------------------------------ set-up
    def _resolve_hf_dir(self, hf_path: str) -> str:
        if not hf_path.startswith("tiny:"):
            return hf_path
        from megatron_mcpo.models.tiny import tiny_checkpoint_dir

        root = os.path.join(self.cfg.run.output_dir, "tiny_models")
        if dist.get_rank() == 0:
            tiny_checkpoint_dir(hf_path.split(":", 1)[1], root=root, seed=self.cfg.run.seed)
        dist.barrier()
        return tiny_checkpoint_dir(hf_path.split(":", 1)[1], root=root, seed=self.cfg.run.seed)

    def _load_initial_weights(self, chunks: list) -> None:
        """The run's starting weights (also the KL reference's): model.megatron_checkpoint, else the HF ones."""
        if self.cfg.model.megatron_checkpoint:
            from megatron_mcpo.training.checkpoint import load_model_weights

            load_model_weights(chunks, self.cfg.model.megatron_checkpoint)
        else:
            from megatron_mcpo.weights.loader import load_hf_weights

            load_hf_weights(chunks, self.hf_dir)

    def _make_engine(self):
        from megatron_mcpo.rollout.vllm_engine import VLLMEngine

        r = self.cfg.rollout
        return VLLMEngine(self.hf_dir, seed=r.seed + self.groups.dp_rank, gpu_memory_utilization=r.gpu_memory_utilization,
                          enforce_eager=r.enforce_eager, max_model_len=r.max_prompt_length + r.max_response_length,
                          tensor_parallel_size=r.tp, dtype=self.cfg.model.params_dtype, transport=r.refit_transport,
                          # the policy's own log-probs (before temperature/top-p), comparable with Megatron's
                          logprobs_mode="raw_logprobs")

    def _make_scorer(self):
        from megatron_mcpo.rewards import RewardScorer, SandboxLimits

        r = self.cfg.rewards
        limits = SandboxLimits(cpu_time_s=r.code_cpu_time_s, wall_time_s=r.code_wall_time_s, memory_mb=r.code_memory_mb)
        return RewardScorer(num_workers=r.num_workers, sandbox_limits=limits, math_timeout_s=r.math_timeout_s)

    def _load_records(self, files: list[str], synthetic_seed: int, synthetic_per_domain: int) -> list[dict]:
        """JSONL records of `files` (else the synthetic suite) in data.domains whose prompt fits."""
        d = self.cfg.data
        records = [rec for f in files for rec in load_jsonl(f)] if files else synthetic_suite(synthetic_per_domain, d.domains, synthetic_seed)
        records = [rec for rec in records if record_domain(rec) in d.domains]
        if self.engine is not None:  # prompts that cannot fit are dropped up front (and said so), never mid-run
            limit = self.cfg.rollout.max_prompt_length
            fits = [len(self.engine.prompt_ids(rec["prompt"])) <= limit for rec in records]
            dropped = Counter(record_domain(rec) for rec, ok in zip(records, fits) if not ok)
            records = [rec for rec, ok in zip(records, fits) if ok]
            if dropped and self.groups.world_rank == 0:
                print(f"data: dropped {dropped.total()} of {len(fits)} prompts longer than "
                      f"rollout.max_prompt_length={limit} tokens: {dict(dropped)}", flush=True)
        records = self._share_with_model_parallel_group(records)
        if not records:  # on every rank, after the broadcast, so none is left waiting
            raise ValueError(f"data: no prompt of {files or 'the synthetic suite'} fits rollout.max_prompt_length="
                             f"{self.cfg.rollout.max_prompt_length} in data.domains={d.domains}")
        return records

    def _maybe_resume(self) -> None:
        c = self.cfg.checkpoint
        path = latest_checkpoint(c.load_dir) if c.load_dir else None
        if path is None:
            return
        common = load_checkpoint(self.state, path)
        self.sampler.load_state_dict(common["sampler"])
        self.gen_batches = int(common["gen_batches"])
        self.rl_steps = int(common["rl_steps"])
        if self.projector is not None:
            self.projector.load_state_dict(torch.load(os.path.join(path, "projector.pt"), map_location=self.groups.device,
                                                      weights_only=False))
        self.refit()  # the engine still holds the initial weights

    def save(self) -> str:
        c = self.cfg.checkpoint
        if dist.get_rank() == 0 and not os.path.isdir(os.path.join(c.save_dir, "hf")):
            from megatron_mcpo.weights.dist_ckpt import write_hf_metadata

            # The HF config, family and tokenizer files, so tools/convert_megatron_to_hf.py needs nothing else.
            os.makedirs(c.save_dir, exist_ok=True)
            write_hf_metadata(c.save_dir, self.hf_dir, self.cfg.model.params_dtype)
        common = {"sampler": self.sampler.state_dict(), "gen_batches": self.gen_batches, "rl_steps": self.rl_steps}
        path = save_checkpoint(self.state, c.save_dir, common)
        g = self.groups
        if self.projector is not None and g.dp_rank == 0 and g.tp_rank == 0:
            torch.save(self.projector.state_dict(), os.path.join(path, "projector.pt"))
        dist.barrier()
        return path

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict]:
        cfg = self.cfg
        log_path = os.path.join(cfg.logging.log_dir, f"{cfg.run.name}.jsonl")
        if dist.get_rank() == 0:
            os.makedirs(cfg.logging.log_dir, exist_ok=True)
        history = []
        if cfg.eval.before_train:
            history.append({"step": self.rl_steps, **self.evaluate()})
            self._log(log_path, history[-1])
        while self.rl_steps < cfg.run.total_steps:
            metrics = self.rl_step()
            e = cfg.eval.every
            if e and (self.rl_steps % e == 0 or self.rl_steps == cfg.run.total_steps):
                metrics.update(self.evaluate())
            history.append(metrics)
            self._log(log_path, metrics)
            if cfg.checkpoint.save_dir and cfg.checkpoint.save_interval and self.rl_steps % cfg.checkpoint.save_interval == 0:
                self.save()
        if cfg.checkpoint.save_dir:
            self.save()
        return history

    @staticmethod
    def _log(log_path: str, metrics: dict) -> None:
        if dist.get_rank() != 0:
            return
        with open(log_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        keys = ("step", "reward/all/acc", "eval/all/acc", "pg_loss", "mcpo/loss_cl", "grad_norm",
                "rollout/logprob_abs_diff_max", "time/rollout", "time/train")
        print(" ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics), flush=True)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        if self.engine is not None:
            self.engine.shutdown()
