"""Progress bars (tqdm) for long phases: engine start, HF->Megatron conversion, evaluation, checkpoint
save/load. Shown on rank 0 only, and only when stderr is a terminal outside CI (a log file gets no
carriage-return noise); `mcpo ... --quiet` or `logging.progress: false` turns them off.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator, Optional

_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def active() -> bool:
    """Bars are drawn: enabled, rank 0 (torchrun's RANK), stderr a TTY, not CI."""
    return (_enabled and os.environ.get("RANK", "0") == "0" and not os.environ.get("CI")
            and getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it"):
    """tqdm over `iterable` when active(), else the iterable itself (or a no-op counter for total-only use)."""
    if active():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
    return iterable if iterable is not None else _Silent()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def phase(desc: str) -> Iterator[None]:
    """One-step bar for a phase that cannot count its own progress: its name while it runs, then the
    elapsed time."""
    if not active():
        yield
        return
    from tqdm import tqdm

    with tqdm(total=1, desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=True) as t:
        yield
        t.update(1)
