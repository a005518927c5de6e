"""HF -> Megatron dist checkpoint -> HF: bit-exact for every family, sharded input, bf16, CLI + errors.
(Loading the converted checkpoints into models at TP1/TP2/PP2 is in test_conversion_dist.py.)"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from megatron_mcpo.weights.dist_ckpt import convert_hf_to_megatron, convert_megatron_to_hf
from megatron_mcpo.weights.hf_io import HFCheckpointReader, HFCheckpointWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tensors(d):
    r = HFCheckpointReader(d)
    return {n: r.read(n) for n in r.names()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_roundtrip_bit_exact(tiny_dirs, tmp_path, family):
    src = tiny_dirs[family]
    convert_hf_to_megatron(src, str(tmp_path / "mc"), tp=2, dtype="fp32")
    convert_megatron_to_hf(str(tmp_path / "mc"), str(tmp_path / "hf"))
    a, b = load_file(os.path.join(src, "model.safetensors")), _tensors(str(tmp_path / "hf"))
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(tmp_path / "hf" / f)


def test_sharded_input_and_bf16(tiny_dirs, tmp_path):
    src = tiny_dirs["qwen2"]
    original = load_file(os.path.join(src, "model.safetensors"))
    w = HFCheckpointWriter(str(tmp_path / "sharded"), max_shard_bytes=1 << 20)
    w.add_all(original.items())
    assert len(w.finish()) > 2
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(src, f), "rb") as i, open(tmp_path / "sharded" / f, "wb") as o:
            o.write(i.read())
    convert_hf_to_megatron(str(tmp_path / "sharded"), str(tmp_path / "mc"), tp=1, pp=2, dtype="bf16")
    convert_megatron_to_hf(str(tmp_path / "mc"), str(tmp_path / "hf"), max_shard_bytes=1 << 20)
    back = _tensors(str(tmp_path / "hf"))
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v.to(torch.bfloat16)) for k, v in original.items())


def test_cli_and_clear_errors(tiny_dirs, tmp_path):
    def cli(tool, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], capture_output=True, text=True,
                              timeout=300)

    src = tiny_dirs["qwen3"]
    r = cli("convert_hf_to_megatron.py", "--hf-dir", src, "--out-dir", str(tmp_path / "mc"), "--tp", "2", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    r = cli("convert_megatron_to_hf.py", "--megatron-dir", str(tmp_path / "mc"), "--out-dir", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    a, b = load_file(os.path.join(src, "model.safetensors")), _tensors(str(tmp_path / "hf"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).chat_template
    # errors: non-empty output, indivisible TP, unsupported architecture, missing tensor
    r = cli("convert_hf_to_megatron.py", "--hf-dir", src, "--out-dir", str(tmp_path / "mc"))
    assert r.returncode == 2 and "is not empty" in r.stderr
    with pytest.raises(ValueError, match="--tp 3 does not divide num_key_value_heads=2"):
        convert_hf_to_megatron(src, str(tmp_path / "x"), tp=3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "mixtral"}')
    with pytest.raises(ValueError, match="unsupported model_type 'mixtral'"):
        convert_hf_to_megatron(str(bad), str(tmp_path / "y"))
    partial = {k: v for k, v in load_file(os.path.join(src, "model.safetensors")).items() if "layers.2.mlp.up" not in k}
    w = HFCheckpointWriter(str(tmp_path / "partial"))
    w.add_all(partial.items())
    w.finish()
    (tmp_path / "partial" / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    with pytest.raises(ValueError, match="'model.layers.2.mlp.up_proj.weight' is not in the HF checkpoint"):
        convert_hf_to_megatron(str(tmp_path / "partial"), str(tmp_path / "z"))
