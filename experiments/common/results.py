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
from rkdsc_jax.train import workdir as workdir_lib

read_json = files.read_json
# A pipeline's or study's lists of seeds and methods choose which runs exist, not what one computes.
PIPELINE_SECTIONS = ("pipeline", "study")


def write_json(path: epath.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """``checksum``: embed a SHA-256 that :func:`read_json` verifies (a ``summary.json`` marks a
    stage finished, so a damaged one must not pass as a result)."""
    if jax.process_index() == 0:
        files.atomic_write_json(path, obj, checksum=checksum)


def write_text(path: epath.PathLike, text: str) -> None:
    if jax.process_index() == 0:
        files.atomic_write_text(path, text)


def run_identity(config, *, only=None, exclude=(), inputs=None) -> dict:
    """The run's identity (``rkdsc_jax.train.workdir``): every field but the cosmetic ones and the
    pipeline's seed/method lists, and the fingerprints of the artifacts it consumes (``inputs``)."""
    exclude = tuple(e if "." in e or e.startswith("/") else "/" + e for e in (*PIPELINE_SECTIONS, *exclude))
    return workdir_lib.identity(config, only=only, exclude=exclude, inputs=inputs)


def start_run(config, workdir: epath.PathLike, what: str, *, identity: dict | None = None) -> tuple[epath.Path, float]:
    """Creates ``workdir``, refuses it when another live run holds it or when it records another
    run's config (``run.json``, see ``rkdsc_jax.train.workdir``), records this run's identity and
    ``config.json`` (overrides included) and logs ``what``; returns the workdir and the start time."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    identity = run_identity(config) if identity is None else identity
    with workdir_lib.WorkdirLock(workdir):  # Refuses early, before data and compilation; fit holds it.
        if jax.process_index() == 0:
            workdir_lib.check_and_record(workdir, identity)
        else:
            workdir_lib.check_and_record(workdir, identity, write=False)
        write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
        if jax.process_index() == 0:
            files.remove_temporaries(workdir)  # Killed writes' leftovers; the lock keeps other writers out.
    logging.info("%s → %s", what, workdir)
    return workdir, time.perf_counter()


def finished(workdir: epath.PathLike, identity: dict | None, name: str = "summary.json") -> dict | None:
    """A pipeline stage's finished output ``workdir/name``, or None when it must run.

    A stage recorded for other fields or inputs is computed again: its directory is moved aside
    (``<dir>.superseded-<time>``, logged, nothing deleted), unless RKDSC_ALLOW_CONFIG_CHANGE=1 keeps
    it.  A finished stage from before identities were recorded is kept, and its identity recorded."""
    workdir = epath.Path(workdir)
    if identity is not None and workdir.exists():
        diff = workdir_lib.mismatch(workdir, identity)
        if diff and workdir_lib.allow_change():
            logging.warning("%s=1: keeping %s although its inputs changed (%s).", workdir_lib.ALLOW_ENV, workdir,
                            "; ".join(diff))
        elif diff:
            if jax.process_index() == 0:
                workdir_lib.move_aside(workdir, "; ".join(diff))
            return None
    done = read_json(workdir / name)
    if done is not None and identity is not None and workdir_lib.recorded(workdir) is None \
            and jax.process_index() == 0:
        files.atomic_write_json(workdir / workdir_lib.RUN_FILE, identity)
    return done


def ensure_recorded(workdir: epath.PathLike, identity: dict) -> None:
    """Records ``identity`` for a stage that just ran without recording one itself (what later
    stages then compare their input with)."""
    if jax.process_index() == 0 and workdir_lib.recorded(workdir) is None:
        files.atomic_write_json(epath.Path(workdir) / workdir_lib.RUN_FILE, identity)


def current_json(path: epath.PathLike, identity: dict) -> dict | None:
    """A one-file stage's output (``latency.json``, ``fdm_ablation.json``), or None when it is
    missing or was measured for another config (its ``identity`` key; logged, then rewritten)."""
    found = read_json(path)
    recorded = (found or {}).get("identity")
    if recorded is not None and recorded != identity["fingerprint"] and not workdir_lib.allow_change():
        logging.warning("%s was measured for another config or inputs: measuring again.", path)
        return None
    return found


def write_with_identity(path: epath.PathLike, obj: dict, identity: dict) -> None:
    write_json(path, dict(obj) | {"identity": identity["fingerprint"]})


def run_once(workdir: epath.PathLike, train: Callable[[], dict], identity: dict | None = None) -> dict:
    """The finished run's ``summary.json``, or ``train()`` when there is none or when it was
    computed from another config or inputs (:func:`finished`; a stage of a resumable pipeline)."""
    done = finished(workdir, identity)
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


def seed_summaries(layout, method: str) -> dict[int, dict]:
    """{seed: summary} of a method's finished runs in a ``RunLayout`` (what claims pair arms by)."""
    return {int(s["seed"]): s for s in per_seed(layout.method_dir(method)) if "seed" in s}


def with_symbols(curves: dict, symbols: dict[str, int]) -> dict:
    """The rows renamed to state their complex symbols per image (the teacher's rows already do)."""
    return {(name if "symbols" in name or name not in symbols else f"{name} ({symbols[name]} symbols)"): rows
            for name, rows in curves.items()}


def curve_points(by_seed: dict[int, dict], kind: str, snr: str) -> dict[int, float]:
    """{seed: accuracy in %} at one point of the runs' curves."""
    return {seed: 100 * s["curves"][kind][snr] for seed, s in by_seed.items()
            if snr in s.get("curves", {}).get(kind, {})}


def compute_rows(arms: dict[str, dict[int, dict]], describe: Callable[[dict], dict] | None = None) -> list[dict]:
    """Per compared arm: its seeds, optimiser steps and training examples seen over all its stages
    (from the summaries: ``total_*`` where a run has stages), plus ``describe(first seed's summary)``."""
    rows = []
    for label, by_seed in arms.items():
        if not by_seed:
            continue
        first = next(iter(by_seed.values()))
        rows.append({"method": label, "seeds": sorted(by_seed),
                     "steps": sorted({s.get("total_steps", s.get("steps")) for s in by_seed.values()}, key=str),
                     "examples_seen": sorted({s.get("total_examples_seen", s.get("examples_seen"))
                                              for s in by_seed.values()}, key=str),
                     "batch_size": first.get("batch_size"), **(describe(first) if describe else {})})
    return rows


def compute_recorded(rows: list[dict]) -> bool:
    """Whether every run recorded the examples it saw (summaries from before that have none)."""
    return all(isinstance(v, int) for r in rows for v in r["examples_seen"])


def compute_equal(rows: list[dict]) -> bool:
    """Every arm recorded its compute, and all ran the same steps on the same number of examples."""
    return compute_recorded(rows) and len({(tuple(r["steps"]), tuple(r["examples_seen"])) for r in rows}) <= 1


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
