"""Reading and writing a run's results: JSON, the run's config, curves in one line, reports.

Only process 0 writes; every process reads.  Paths may be local or ``gs://``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
from absl import logging
from etils import epath

from rkdsc_jax import evaluation, files

read_json = files.read_json


def write_json(path: epath.PathLike, obj: Any) -> None:
    if jax.process_index() == 0:
        files.atomic_write_json(path, obj)


def write_text(path: epath.PathLike, text: str) -> None:
    if jax.process_index() == 0:
        files.atomic_write_text(path, text)


def start_run(config, workdir: epath.PathLike, what: str) -> tuple[epath.Path, float]:
    """Creates ``workdir``, writes its ``config.json`` (overrides included) and logs ``what``;
    returns the workdir as a path and the start time."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
    logging.info("%s → %s", what, workdir)
    return workdir, time.perf_counter()


def run_once(workdir: epath.PathLike, train: Callable[[], dict]) -> dict:
    """The finished run's ``summary.json``, or ``train()`` when there is none (a stage of a
    resumable pipeline)."""
    done = read_json(epath.Path(workdir) / "summary.json")
    if done is not None:
        logging.info("Skipping %s: finished.", workdir)
        return done
    return train()


def stage(name: str, index: int, total: int, started: float | None = None) -> None:
    clock = f" (pipeline time {time.perf_counter() - started:.0f} s)" if started is not None else ""
    logging.info("=== Stage %d/%d: %s%s ===", index, total, name, clock)


def curve_line(curves: dict) -> str:
    """``{kind: {snr: accuracy}}`` as one log line."""
    return " | ".join(f"{kind}: " + " ".join(f"{s}dB={100 * a:.1f}" for s, a in curve.items())
                      for kind, curve in curves.items())


def per_seed(method_dir: epath.Path) -> list[dict]:
    """Summaries of the finished seeds under ``runs/<method>/``, in seed-directory order."""
    names = sorted(method_dir.iterdir(), key=lambda p: p.name) if method_dir.is_dir() else []
    return [s for s in (read_json(p / "summary.json") for p in names) if s]


def finish_report(root: epath.PathLike, results: dict, lines: list[str], claims: list[dict], paper: str) -> dict:
    """Appends the claims table, then writes ``results.json`` and ``report.md`` atomically."""
    root = epath.Path(root)
    if claims:
        results["claims"] = claims
        lines += [f"## {paper}'s claims on this data", "", evaluation.markdown_table(
            ["claim", "measured", "holds"], [[c["claim"], c["measured"], "yes" if c["holds"] else "no"]
                                              for c in claims]), ""]
    write_json(root / "results.json", results)
    write_text(root / "report.md", "\n".join(lines))
    logging.info("Report: %s", root / "report.md")
    return results
