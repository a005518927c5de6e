"""Progress bars: rank 0 on a terminal only; silent under --quiet, in CI, off rank 0, or into a file."""
import io

import pytest

from megatron_mcpo import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def tty(monkeypatch):
    """A terminal stderr. Set inside the test body: pytest's capture swaps sys.stderr between setup and call."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    progress.configure(True)
    out = _Tty()
    yield lambda: monkeypatch.setattr("sys.stderr", out) or out
    progress.configure(True)


def _use():
    assert list(progress.bar(range(3), desc="convert", unit="tensor")) == [0, 1, 2]
    counter = progress.bar(total=2, desc="chunks")
    counter.update(2)
    counter.close()
    with progress.phase("engine start"):
        pass


def test_bars_on_a_terminal(tty):
    out = tty()
    _use()
    text = out.getvalue()
    assert "convert:   0%|" in text and "0/3" in text and "chunks" in text and "engine start: 00:00" in text


@pytest.mark.parametrize("how", ["quiet", "ci", "rank1", "file"])
def test_silent(tty, monkeypatch, how):
    out = tty()
    if how == "quiet":
        progress.configure(False)
    elif how == "ci":
        monkeypatch.setenv("CI", "true")
    elif how == "rank1":
        monkeypatch.setenv("RANK", "1")
    else:
        monkeypatch.setattr("sys.stderr", io.StringIO())
    _use()
    assert out.getvalue() == ""


def test_cli_quiet_flag():
    from megatron_mcpo.cli import _parser

    assert _parser().parse_args(["train", "--config", "c.yaml", "--quiet"]).quiet
    assert not _parser().parse_args(["eval", "--config", "c.yaml"]).quiet
