"""Prompt records from verl-style JSONL files or the embedded suite, served in a resumable order."""
from __future__ import annotations

import json
import random
from typing import Optional

from megatron_mcpo.domains import DOMAINS

REQUIRED = ("prompt", "data_source", "reward_model")


class DataError(ValueError):
    """A data file or record that cannot be trained on, with its file and line."""


def jsonl_objects(path: str, error: type = DataError):
    """(line number, parsed value) of each non-blank line of a JSONL file; a line that is not JSON raises
    `error` naming file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def load_jsonl(path: str) -> list[dict]:
    """Records of a verl-format JSONL file; a malformed line or record is a DataError naming file and line."""
    records = []
    try:
        for lineno, rec in jsonl_objects(path):
            check_record(rec, f"{path}:{lineno}")
            records.append(rec)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text JSONL file (binary data?)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSONL file") from None
    if not records:
        raise DataError(f"{path}: holds no records (empty file)")
    return records


def check_record(rec, where: str) -> None:
    """A record has the verl fields, a known domain and a ground truth its domain's scorer accepts;
    DataError at `where` (file:line) otherwise, so a bad record stops the run before it starts."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record is a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise DataError(f"{where}: record lacks {', '.join(missing)}")
    if not isinstance(rec["reward_model"], dict) or "ground_truth" not in rec["reward_model"]:
        raise DataError(f"{where}: reward_model has no ground_truth")
    prompt = rec["prompt"]
    chat = isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)
    if not (chat or (isinstance(prompt, str) and prompt.strip())):
        raise DataError(f"{where}: prompt must be a non-empty string or a list of chat messages "
                        f"({{\"role\": ..., \"content\": ...}}), got {str(prompt)[:80]!r}")
    try:
        domain = record_domain(rec)
        from megatron_mcpo.rewards.scorer import check_ground_truth

        check_ground_truth(domain, rec["reward_model"]["ground_truth"], rec.get("extra_info"))
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: {e}") from None


def plain_prompt_warning(records: list[dict], source: str) -> str | None:
    """A warning if prompts are plain strings: they are tokenized as they are, without the chat template."""
    n = sum(isinstance(rec["prompt"], str) for rec in records)
    if not n:
        return None
    return (f"data: {n} of {len(records)} prompts in {source} are plain strings: they are tokenized as-is, without "
            f"the model's chat template; give prompt as [{{\"role\": \"user\", \"content\": ...}}] to use it")


def record_domain(rec: dict) -> str:
    """The record's domain: extra_info.domain, else its data_source's prefix or a dataset name known to
    the reward registry (e.g. gsm8k -> math)."""
    given = (rec.get("extra_info") or {}).get("domain")
    if given is not None:
        if given not in DOMAINS:
            raise ValueError(f"extra_info.domain {given!r} is not one of {', '.join(DOMAINS)}")
        return given
    source = str(rec["data_source"])
    dom = source.split("/")[0].split(":")[0].lower()
    if dom in DOMAINS:
        return dom
    from megatron_mcpo.rewards.registry import REGISTRY

    try:
        dom = REGISTRY.domain_of(source)
    except ValueError:
        dom = None
    if dom not in DOMAINS:
        raise ValueError(f"data_source {source!r} names no known domain or dataset: set extra_info.domain "
                         f"to one of {', '.join(DOMAINS)}")
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
