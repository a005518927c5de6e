"""Where step metrics go: JSONL (default), TensorBoard, Weights & Biases (`logging.backends`).

Rank 0 writes; the step (`metrics["step"]`) is the x-axis everywhere. Scalars go to every backend;
a list of dicts (e.g. sample prompt/response/score rows) becomes a text table in TensorBoard and a
`wandb.Table`, other non-scalar values only reach the JSONL. The optional packages are imported when a
backend opens (nothing heavy for a JSONL-only run); a missing one is a ConfigError naming the extra.
"""
from __future__ import annotations

import importlib.util
import json
import os
from numbers import Number
from typing import Optional

from megatron_mcpo.config import Config, ConfigError

# backend -> (module it needs, setup.py extra that installs it)
OPTIONAL = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_backends(backends: list[str]) -> None:
    """Raise ConfigError for a backend whose package is not installed (cheap: no import)."""
    for name in backends:
        if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name][0]) is None:
            module, extra = OPTIONAL[name]
            raise ConfigError(f"logging.backends: '{name}' needs the '{module}' package: "
                              f"pip install 'megatron_mcpo[{extra}]'")


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, Number) and not isinstance(v, bool) and k != "step"}


def _tables(metrics: dict) -> dict:
    """Values that are non-empty lists of dicts with the same keys (rows of a table)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}


class JsonlBackend:
    def __init__(self, path: str):
        self.path = path

    def log(self, metrics: dict, step: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics, default=str) + "\n")

    def close(self) -> None:
        pass


def _markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows])


class TensorBoardBackend:
    def __init__(self, log_dir: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter  # writes through the tensorboard package

        self.writer = SummaryWriter(log_dir)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        for k, rows in _tables(metrics).items():
            self.writer.add_text(k, _markdown(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    def __init__(self, cfg: Config, log_dir: str):
        import wandb

        lg = cfg.logging
        self.wandb = wandb
        # wandb's service is a separate process: on a node busy starting engines and compiling, its default
        # 30 s start-up wait (90 s for init) failed runs; a slow start is no reason to lose one.
        settings = wandb.Settings(console="off", silent=True, init_timeout=300, x_service_wait=300)
        self.run = wandb.init(project=lg.wandb_project, name=lg.wandb_run_name or cfg.run.name, tags=list(lg.wandb_tags),
                              mode=lg.wandb_mode, dir=log_dir, config=cfg.to_dict(), reinit="finish_previous",
                              settings=settings)

    def log(self, metrics: dict, step: int) -> None:
        row = dict(_scalars(metrics))
        for k, rows in _tables(metrics).items():
            cols = list(dict.fromkeys(c for r in rows for c in r))
            row[k] = self.wandb.Table(columns=cols, data=[[str(r.get(c, "")) for c in cols] for r in rows])
        self.run.log(row, step=step)

    def close(self) -> None:
        self.run.finish()
        # finish() can return before wandb's service has flushed the run file (an offline run read right
        # after held only its header, once in CI); teardown waits for it, as the atexit hook would, which
        # torchrun's and multiprocessing's workers do not reliably run
        self.wandb.teardown()


class MetricsLogger:
    """`log(metrics)` to every configured backend on rank 0 (no-op elsewhere). Backends open at the first
    record, so a run that never logs creates nothing."""

    def __init__(self, cfg: Config, rank0: bool):
        check_backends(cfg.logging.backends)
        self.cfg, self.rank0 = cfg, rank0
        self.backends: Optional[list] = None
        self.jsonl_path = os.path.join(cfg.logging.log_dir, f"{cfg.run.name}.jsonl")

    def _open(self) -> list:
        lg, out = self.cfg.logging, []
        os.makedirs(lg.log_dir, exist_ok=True)
        for name in lg.backends:
            if name == "jsonl":
                out.append(JsonlBackend(self.jsonl_path))
            elif name == "tensorboard":
                out.append(TensorBoardBackend(os.path.join(lg.log_dir, "tensorboard", self.cfg.run.name), self.cfg.to_dict()))
            else:
                out.append(WandbBackend(self.cfg, lg.log_dir))
        return out

    def log(self, metrics: dict) -> None:
        if not self.rank0:
            return
        if self.backends is None:
            self.backends = self._open()
        step = int(metrics.get("step", 0))
        for b in self.backends:
            b.log(metrics, step)

    def close(self) -> None:
        for b in self.backends or []:
            b.close()
        self.backends = None
