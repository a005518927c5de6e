"""examples/paper/: every config validates for 8 GPUs (each model's real config.json fields, no weights),
reproduces the paper's protocol (scattered pool order, paper "DAPO" = GRPO + overlong penalty), and the
committed files are what tools/paper_configs.py writes."""
import glob
import json
import os
import sys

import pytest

from megatron_mcpo.config import load_config
from megatron_mcpo.validation import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER = os.path.join(ROOT, "examples", "paper")
FILES = sorted(glob.glob(os.path.join(PAPER, "*", "*.yaml")))
# The fields validate() reads, from each model's published config.json.
HF = {
    "Qwen3-8B": {"model_type": "qwen3", "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 36,
                 "hidden_size": 4096, "vocab_size": 151936},
    "Qwen3-4B": {"model_type": "qwen3", "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 36,
                 "hidden_size": 2560, "vocab_size": 151936},
    "DeepSeek-R1-Distill-Qwen-7B": {"model_type": "qwen2", "num_attention_heads": 28, "num_key_value_heads": 4,
                                    "num_hidden_layers": 28, "hidden_size": 3584, "vocab_size": 152064},
    "DeepSeek-R1-Distill-Llama-8B": {"model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 8,
                                     "num_hidden_layers": 32, "hidden_size": 4096, "vocab_size": 128256},
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_configs")
    for name, fields in HF.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(fields))
    return root


def test_every_table_row_has_a_config():
    stems = {os.path.relpath(f, PAPER)[:-5] for f in FILES}
    for model in ("qwen3_8b", "qwen3_4b"):
        for row in ("grpo", "dapo", "mcpo_grpo", "mcpo_dapo", "in_domain_only", "cross_domain_only", "frozen_head",
                    "no_warmup", "pool_256_mini32_n8", "pool_512_mini32_n16", "pool_1024_mini64_n16",
                    "pool_1024_mini128_n8", "pool_2048_mini128_n16"):
            assert f"{model}/{row}" in stems
    assert {f"qwen3_8b/dapo_single_{d}" for d in ("math", "code", "science", "tooluse", "safety")} <= stems
    assert {"ds_r1_qwen_7b/grpo", "ds_r1_qwen_7b/mcpo_grpo", "ds_r1_llama_8b/grpo", "ds_r1_llama_8b/mcpo_grpo"} <= stems
    assert len(FILES) == 35


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, PAPER))
def test_paper_config_validates_on_8_gpus(path, hf_dirs):
    cfg = load_config(path)
    model_dir = os.path.basename(cfg.model.hf_path)
    cfg.model.hf_path = str(hf_dirs / model_dir)
    validate(cfg, world_size=8, cuda_available=True, check_files=False)  # config.json only: no weights
    a = cfg.algorithm
    assert cfg.mcpo.pool_order == "scattered" and cfg.rollout.temperature == 1.0
    assert a.name in ("grpo", "mcpo_grpo")  # the paper's DAPO is GRPO + the overlong reward manager
    stem = os.path.basename(path)[:-5]
    paper_dapo = stem not in ("grpo", "mcpo_grpo")
    assert a.overlong_buffer_enable == paper_dapo
    assert not a.dynamic_sampling and a.clip_ratio_high == 0.2
    assert cfg.mcpo.warmup_batches == (0 if stem == "no_warmup" else 100)
    assert cfg.mcpo.frozen_head == (stem == "frozen_head")
    assert (cfg.mcpo.cross_coef, cfg.mcpo.in_coef) == {"in_domain_only": (0.0, 0.5),
                                                      "cross_domain_only": (0.5, 0.0)}.get(stem, (0.5, 0.5))
    if stem.startswith("pool_"):
        size, mini, n = stem.split("_")[1:]
        assert a.mini_batch_prompts * cfg.rollout.n == int(size) and f"mini{a.mini_batch_prompts}" == mini
        assert f"n{cfg.rollout.n}" == n


def test_committed_files_match_the_generator():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import paper_configs
    finally:
        sys.path.pop(0)
    generated = paper_configs.all_configs()
    assert sorted(generated) == sorted(os.path.relpath(f, PAPER) for f in FILES)
    for rel, cfg in generated.items():
        with open(os.path.join(PAPER, rel)) as f:
            assert f.read() == paper_configs.render(cfg), f"{rel}: rerun python tools/paper_configs.py"
