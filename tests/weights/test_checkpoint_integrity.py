"""Checkpoint files are verified before use: a missing, truncated or bit-flipped shard is a one-line error
of tools/convert_megatron_to_hf.py (exit 2) naming the file, never an uncaught exception or a silent
conversion; the exported config.json states the dtype its tensors are stored in."""
import json
import os
import re
import subprocess
import sys

import pytest

from megatron_mcpo.training.ckpt_files import CHECKSUMS, CheckpointError, verify_checkpoint
from megatron_mcpo.weights.dist_ckpt import convert_hf_to_megatron

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _export(mc, out):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_megatron_to_hf.py"),
                           "--megatron-dir", mc, "--out-dir", out], capture_output=True, text=True, timeout=300)


def _shard(mc):
    (name,) = [n for n in os.listdir(mc) if n.endswith(".distcp")]
    return os.path.join(mc, name)


def test_bf16_export_says_bf16(tiny_dirs, tmp_path):
    mc = str(tmp_path / "mc")
    summary = convert_hf_to_megatron(tiny_dirs["qwen3"], mc, dtype="bf16")
    assert summary["layers"] == 4 and summary["tensors"] > summary["keys"]  # per-layer tensors, stacked keys
    manifest = json.load(open(os.path.join(mc, CHECKSUMS)))
    assert os.path.basename(_shard(mc)) in manifest and "metadata.json" in manifest
    r = _export(mc, str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "bfloat16"


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match its saved checksum"),
    ("truncate", "were saved (truncated"),
    ("delete", "is missing"),
])
def test_damaged_checkpoint_refused(tiny_dirs, tmp_path, damage, message):
    mc = str(tmp_path / "mc")
    convert_hf_to_megatron(tiny_dirs["llama"], mc)
    shard = _shard(mc)
    size = os.path.getsize(shard)
    if damage == "flip":
        with open(shard, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "truncate":
        os.truncate(shard, size // 2)
    else:
        os.remove(shard)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        verify_checkpoint(mc)
    r = _export(mc, str(tmp_path / "hf"))
    assert r.returncode == 2 and message.split(" (")[0] in r.stderr and os.path.basename(shard) in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_shard_without_manifest_is_a_clear_error(tiny_dirs, tmp_path):
    """A checkpoint from before checksums existed: the reader's own failure becomes one line."""
    mc = str(tmp_path / "mc")
    convert_hf_to_megatron(tiny_dirs["llama"], mc)
    os.remove(os.path.join(mc, CHECKSUMS))
    os.truncate(_shard(mc), 100)
    r = _export(mc, str(tmp_path / "hf"))
    assert r.returncode == 2 and "cannot be read" in r.stderr and "Traceback" not in r.stderr
