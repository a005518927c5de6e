"""The only module that imports Transformer Engine (GPU only; absent on CPU machines)."""
from __future__ import annotations

import functools
import importlib.util


@functools.lru_cache(maxsize=1)
def available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # TE needs CUDA libraries at import; any failure means "not usable here"
        return False
    return True


def installed() -> bool:
    """Whether a `transformer_engine` package is installed, without importing it (config validation)."""
    return importlib.util.find_spec("transformer_engine") is not None


def fp8_kwargs(fp8: str, recipe: str) -> dict:
    """TransformerConfig fields for FP8 training, validated against the installed TE."""
    if not available():
        raise RuntimeError("model.fp8: Transformer Engine is not importable on this machine")
    from megatron.core.enums import Fp8Recipe

    if not hasattr(Fp8Recipe, recipe):
        raise RuntimeError(f"model.fp8_recipe: '{recipe}' is not supported by this megatron-core/TE")
    return {"fp8": fp8, "fp8_recipe": recipe}
