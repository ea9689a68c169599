"""Metrics to JSONL and TensorBoard, and a periodic progress line with throughput."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
from absl import logging
from etils import epath

from rkdsc_jax import files


class _EpathEventFiles:
    """tensorboardX's writer factory for remote paths (``gs://``, ``s3://``) through ``etils.epath``,
    so that event files go wherever the workdir is, without TensorFlow or a cloud SDK of its own."""

    def open(self, path):
        return epath.Path(path).open("wb")

    def directory_check(self, path):
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _tensorboard_writer(directory: epath.Path):
    from tensorboardX import SummaryWriter, record_writer  # Event files without TensorFlow.

    if not files.is_local(directory):
        record_writer.register_writer_factory(os.fspath(directory).split(":", 1)[0], _EpathEventFiles())
    return SummaryWriter(os.fspath(directory))


class MetricWriter:
    """Appends ``{"step", "split", ...metrics}`` rows to ``metrics.jsonl`` and TensorBoard, on any
    file system (a remote ``metrics.jsonl``, which cannot be appended to, is rewritten whole).

    Only process 0 writes.  ``truncate(step)`` drops rows after ``step`` so a resumed run's
    file ends exactly as an uninterrupted run's would.
    """

    def __init__(self, workdir: epath.PathLike, tensorboard: bool = True):
        workdir = epath.Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self._local = files.is_local(workdir)
        self._rows: list[str] | None = None  # Remote: the file's lines, rewritten on each write.
        self._tb = None
        if self.enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = _tensorboard_writer(workdir / "tensorboard")

    def truncate(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [row for row in read_metrics(self.path) if row["step"] <= step]
        files.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._rows = None

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        row.update({k: float(v) for k, v in metrics.items()})
        line = json.dumps(row) + "\n"
        if self._local:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
        else:
            if self._rows is None:
                self._rows = self.path.read_text(encoding="utf-8").splitlines(keepends=True) if self.path.exists() else []
            self._rows.append(line)
            files.atomic_write_text(self.path, "".join(self._rows))
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: epath.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (from a crash) is skipped."""
    rows = []
    with epath.Path(path).open("r", encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if split is None or row.get("split") == split:
                rows.append(row)
    return rows


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Logs ``step n/N (p%) | metrics | examples/s | elapsed | eta`` lines."""

    def __init__(self, total_steps: int, batch_size: int, first_step: int = 0, name: str = "train"):
        self.total_steps, self.batch_size, self.name = total_steps, batch_size, name
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = self._last_step = first_step

    def examples_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self._last_time
        return (step - self._last_step) * self.batch_size / max(elapsed, 1e-9)

    def log(self, step: int, metrics: Mapping[str, Any]) -> float:
        throughput = self.examples_per_second(step)
        now = time.perf_counter()
        done = step - self._start_step
        rate = done / max(now - self._start_time, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
        logging.info(
            "%s step %d/%d (%.0f%%) | %s | %.0f examples/s | elapsed %s | eta %s",
            self.name, step, self.total_steps, 100.0 * step / self.total_steps, shown, throughput,
            _format_duration(now - self._start_time), _format_duration(eta),
        )
        self._last_time, self._last_step = now, step
        return throughput
