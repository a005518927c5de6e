"""Input checks shared by the algorithm functions: bad input fails early with a message naming it."""
from __future__ import annotations

from typing import Sequence

import torch


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def check_vector(name: str, x: torch.Tensor, n: int | None = None, kind: str = "float") -> None:
    """x must be a 1-D tensor (of length n when given) of floating ('float') or integer ('int') dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if n is not None and x.numel() != n:
        raise ValueError(f"{name} has {x.numel()} entries, expected {n}")
    check_dtype(name, x, kind)


def check_dtype(name: str, x: torch.Tensor, kind: str) -> None:
    if kind == "float" and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if kind == "int" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")


def check_finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
