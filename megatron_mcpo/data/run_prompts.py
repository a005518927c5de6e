"""A run's prompt records: read once from the data files (or the embedded synthetic suite), kept to
data.domains, then fitted to the engine (prompts longer than rollout.max_prompt_length dropped up front,
never mid-run) and shared by the model-parallel group's first rank so every rank trains on the same."""
from __future__ import annotations

from collections import Counter

from megatron_mcpo.data.dataset import plain_prompt_warning, record_domain
from megatron_mcpo.data.formats import load_records
from megatron_mcpo.data.synthetic import synthetic_suite
from megatron_mcpo.distributed import broadcast_object


def read_prompts(files: list[str], domains: list[str], synthetic_seed: int, synthetic_per_domain: int, split: str,
                 rank0: bool, system_prompts: bool = True) -> list[dict]:
    """Records of `files` (.jsonl/.parquet; else the synthetic suite's `split`, with its domains' system
    instructions when `system_prompts`) whose domain is in `domains`."""
    records = ([rec for f in files for rec in load_records(f)] if files else
               synthetic_suite(synthetic_per_domain, domains, synthetic_seed, split, system_prompts))
    warning = plain_prompt_warning(records, files) if files else None
    if warning and rank0:
        print(f"warning: {warning}", flush=True)
    return [rec for rec in records if record_domain(rec) in domains]


class PromptFitter:
    """Fits read records to the run: `engine` (None on ranks without one) measures prompts, the first rank
    of `mp_group` shares its result."""

    def __init__(self, engine, max_prompt_length: int, domains: list[str], mp_group, rank0: bool):
        self.engine, self.limit, self.domains, self.mp_group, self.rank0 = engine, max_prompt_length, domains, mp_group, rank0

    def __call__(self, records: list[dict], files: list[str]) -> list[dict]:
        """`records` (read from `files`; empty: the synthetic suite) that fit, the same on every rank."""
        if self.engine is not None:
            fits = [len(self.engine.prompt_ids(rec["prompt"])) <= self.limit for rec in records]
            dropped = Counter(record_domain(rec) for rec, ok in zip(records, fits) if not ok)
            records = [rec for rec, ok in zip(records, fits) if ok]
            if dropped and self.rank0:
                print(f"data: dropped {dropped.total()} of {len(fits)} prompts longer than "
                      f"rollout.max_prompt_length={self.limit} tokens: {dict(dropped)}", flush=True)
        records = broadcast_object(records, self.mp_group, src=0)
        if not records:  # on every rank, after the broadcast, so none is left waiting
            raise ValueError(f"data: no prompt of {files or 'the synthetic suite'} fits rollout.max_prompt_length="
                             f"{self.limit} in data.domains={self.domains}")
        return records
