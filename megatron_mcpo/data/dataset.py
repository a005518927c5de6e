"""Prompt records from verl-style JSONL files or the embedded suite, served in a resumable order."""
from __future__ import annotations

import json
import random
from typing import Optional

from megatron_mcpo.domains import DOMAINS

REQUIRED = ("prompt", "data_source", "reward_model")


def load_jsonl(path: str) -> list[dict]:
    """Records of a verl-format JSONL file; a malformed line is an error naming file and line."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise ValueError(f"{path}:{lineno}: record lacks {', '.join(missing)}")
            if "ground_truth" not in rec["reward_model"]:
                raise ValueError(f"{path}:{lineno}: reward_model has no ground_truth")
            records.append(rec)
    return records


def record_domain(rec: dict) -> str:
    """The record's domain: extra_info.domain, else its data_source's prefix if that names a domain."""
    dom = (rec.get("extra_info") or {}).get("domain") or str(rec["data_source"]).split("/")[0].split(":")[0].lower()
    if dom not in DOMAINS:
        raise ValueError(f"record with data_source {rec['data_source']!r}: cannot tell its domain "
                         f"(set extra_info.domain to one of {', '.join(DOMAINS)})")
    return dom


def score_item(rec: dict, text: str) -> tuple:
    """The (data_source, solution_str, ground_truth, extra_info) the reward scorer takes for `text`, an
    answer to the prompt of `rec`."""
    return rec["data_source"], text, rec["reward_model"]["ground_truth"], rec.get("extra_info")


class _Stream:
    """Epoch-shuffled indices into one list of records; (epoch, pos) is its whole state."""

    def __init__(self, indices: list[int], seed: int, shuffle: bool):
        self.indices, self.seed, self.shuffle = indices, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(self.indices)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def take(self) -> tuple[int, int]:
        """(epoch, record index) of the next record; wraps into the next epoch."""
        if self.pos == len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._make_order()
        self.pos += 1
        return self.epoch, self._order[self.pos - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()


class PromptSampler:
    """Epoch-shuffled prompts, resumable (`state_dict` keeps the position).

    Without `domain_weights` one stream covers all records, so each domain's share follows the data.
    With them (domain -> weight >= 0), each domain is its own stream and slot k of the run (counted over
    all batches) goes to the domain furthest below its share w_d·k (smooth weighted round-robin): every
    batch follows the weights to within one prompt per domain, and the running totals never drift.
    """

    def __init__(self, records: list[dict], seed: int, shuffle: bool = True, domain_weights: Optional[dict] = None):
        if not records:
            raise ValueError("data: no prompt records")
        self.records = records
        if domain_weights is None:
            self.weights = None
            self.streams = {"all": _Stream(list(range(len(records))), seed, shuffle)}
        else:
            by_domain: dict[str, list[int]] = {}
            for i, rec in enumerate(records):
                by_domain.setdefault(record_domain(rec), []).append(i)
            total = sum(domain_weights.values())
            self.weights = {d: w / total for d, w in domain_weights.items() if w > 0}
            empty = [d for d in self.weights if d not in by_domain]
            if empty:
                raise ValueError(f"data.domain_weights: no prompt records for domain(s) {empty}")
            self.streams = {d: _Stream(by_domain[d], seed + 7919 * k, shuffle) for k, d in enumerate(self.weights)}
            self.drawn = {d: 0 for d in self.weights}

    def _next_domain(self) -> str:
        k = sum(self.drawn.values()) + 1
        domain = max(self.weights, key=lambda d: self.weights[d] * k - self.drawn[d])
        self.drawn[domain] += 1
        return domain

    def next_batch(self, n: int) -> list[tuple[int, dict]]:
        """n (unique prompt index, record) pairs: the index is epoch * len(records) + record index."""
        out = []
        for _ in range(n):
            stream = self.streams["all" if self.weights is None else self._next_domain()]
            epoch, idx = stream.take()
            out.append((epoch * len(self.records) + idx, self.records[idx]))
        return out

    def state_dict(self) -> dict:
        if self.weights is None:
            return self.streams["all"].state_dict()
        return {"streams": {d: s.state_dict() for d, s in self.streams.items()}, "drawn": dict(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        if (self.weights is None) != ("streams" not in state):
            raise ValueError("data: the checkpoint's sampler state does not match data.domain_weights "
                             "(set or unset in both runs)")
        if self.weights is None:
            self.streams["all"].load_state_dict(state)
            return
        if set(state["streams"]) != set(self.streams):
            raise ValueError(f"data.domain_weights: the checkpoint sampled domains {sorted(state['streams'])}, "
                             f"this run weights {sorted(self.streams)}")
        for d, s in self.streams.items():
            s.load_state_dict(state["streams"][d])
        self.drawn = {d: int(v) for d, v in state["drawn"].items()}
