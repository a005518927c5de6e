"""Routing from `data_source` to a domain scorer, with a registry users can extend.

A scorer is `fn(solution_str, ground_truth, extra_info, ctx) -> float | bool | dict`: a dict carries
`acc` (bool) and optionally `format_error`, `pred`, `details` and `score` (see RewardScorer for `ctx`).
The five paper domains are registered under their own names, which are always accepted as data
sources, and under the names of the datasets commonly used for them.
"""
import threading
from typing import Callable, Iterable, Optional

from megatron_mcpo.domains import DOMAINS  # noqa: F401  (re-exported by megatron_mcpo.rewards)

from . import code, math, safety, science, tooluse

KNOWN_SOURCES = {
    "math": ("gsm8k", "openai/gsm8k", "math500", "math-500", "huggingfaceh4/math-500", "lighteval/math",
             "digitallearninggmbh/math-lighteval", "hendrycks_math", "math_dapo", "dapo-math-17k", "aime",
             "aime24", "aime2024", "aime25", "aime2025", "amc", "amc23", "olympiadbench", "minerva",
             "deepscaler", "agentica-org/deepscaler-preview-dataset", "numina_math", "ai-mo/numinamath-cot",
             "open-r1/openr1-math-220k", "orz_math", "skywork_math"),
    "code": ("apps", "codeparrot/apps", "taco", "baai/taco", "code_contests", "codecontests",
             "deepmind/code_contests", "codeforces", "livecodebench", "humaneval", "openai_humaneval",
             "mbpp", "leetcode", "primeintellect", "deepcoder", "kodcode", "coder1"),
    "science": ("sciknoweval", "hicai-zju/sciknoweval", "gpqa", "gpqa_diamond", "idavidrein/gpqa",
                "scienceqa", "mmlu_stem"),
    "tooluse": ("toolalpaca", "toolpaca", "tangqiaoyu/toolalpaca", "tool_use", "toolbench"),
    "safety": ("beavertails", "pku-alignment/beavertails", "pku-saferlhf", "pku-alignment/pku-saferlhf",
               "safe_rlhf"),
}

Scorer = Callable[..., object]


class Registry:
    """domain name -> scorer, and data source (case-insensitive) -> domain name."""

    def __init__(self):
        self._scorers: dict = {}
        self._sources: dict = {}
        self._lock = threading.Lock()

    def register(self, domain: str, fn: Scorer, data_sources: Iterable[str] = ()) -> None:
        """Add (or replace) the scorer of `domain`; `domain` itself and `data_sources` route to it."""
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"domain must be a non-empty string, got {domain!r}")
        if not callable(fn):
            raise TypeError(f"scorer for {domain!r} is not callable: {fn!r}")
        with self._lock:
            self._scorers[domain] = fn
            for name in (domain, *data_sources):
                self._sources[name.lower()] = domain

    def add_data_sources(self, domain: str, *names: str) -> None:
        """Route more data source names to an already registered domain."""
        if domain not in self._scorers:
            raise KeyError(f"unknown domain {domain!r}; registered: {sorted(self._scorers)}")
        with self._lock:
            for name in names:
                self._sources[name.lower()] = domain

    def domain_of(self, data_source: str, extra_info: Optional[dict] = None) -> str:
        """The domain for a data source: an exact (case-insensitive) registered name; else its
        prefix before '/' or ':' (e.g. "math/aime24"); else `extra_info["domain"]`."""
        if not isinstance(data_source, str):
            raise TypeError(f"data_source must be a string, got {type(data_source).__name__}")
        key = data_source.lower()
        for candidate in (key, key.replace(":", "/").split("/", 1)[0]):
            if candidate in self._sources:
                return self._sources[candidate]
        if isinstance(extra_info, dict) and extra_info.get("domain") in self._scorers:
            return extra_info["domain"]
        raise ValueError(f"no reward scorer for data_source {data_source!r}: register it with "
                         f"Registry.register/add_data_sources, or pass extra_info['domain'] "
                         f"(one of {sorted(self._scorers)})")

    def scorer(self, domain: str) -> Scorer:
        return self._scorers[domain]

    @property
    def domains(self) -> tuple:
        return tuple(self._scorers)


def default_registry() -> Registry:
    """A registry holding the five paper domains and their known dataset names."""
    registry = Registry()
    for domain, module in (("math", math), ("code", code), ("science", science), ("tooluse", tooluse),
                           ("safety", safety)):
        registry.register(domain, module.score, KNOWN_SOURCES[domain])
    return registry


REGISTRY = default_registry()
