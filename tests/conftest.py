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
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine; see README 'GPU status')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
