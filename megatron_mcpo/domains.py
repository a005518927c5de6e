"""The one fixed enumeration of task domains (the paper's K = 5).

Domain ids are positions in `DOMAINS`; every module (data, rewards, the MCPO pool, metrics) maps names
with `domain_id` so an id means the same thing everywhere, whatever subset of domains a run trains on.
"""
from __future__ import annotations

DOMAINS: tuple[str, ...] = ("math", "code", "science", "tooluse", "safety")

_IDS = {name: i for i, name in enumerate(DOMAINS)}


def domain_id(name: str) -> int:
    """The integer id of a domain name; an unknown name is a ValueError listing the valid ones."""
    try:
        return _IDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown domain {name!r}; valid domains: {', '.join(DOMAINS)}") from None


def domain_name(index: int) -> str:
    """The name of a domain id; an out-of-range id is a ValueError."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(DOMAINS):
        raise ValueError(f"unknown domain id {index!r}; valid ids are 0..{len(DOMAINS) - 1} for {DOMAINS}")
    return DOMAINS[index]
