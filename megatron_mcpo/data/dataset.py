"""Prompt records from verl-style JSONL files or the embedded suite, served in a resumable order."""
from __future__ import annotations

import json
import random

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


class PromptSampler:
    """Epoch-shuffled prompts; `state_dict` keeps the position so a resume continues where it stopped."""

    def __init__(self, records: list[dict], seed: int, shuffle: bool = True):
        if not records:
            raise ValueError("data: no prompt records")
        self.records, self.seed, self.shuffle = records, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.records)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def next_batch(self, n: int) -> list[tuple[int, dict]]:
        """n (global record index, record) pairs; wraps into the next epoch."""
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            idx = self._order[self.pos]
            out.append((self.epoch * len(self.records) + idx, self.records[idx]))
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()
