"""Mode ``export``'s shared half: a trained system's transmitter and receiver as deployable
Orbax checkpoints, checked and timed.

    python -m experiments.main --config=experiments/configs/rkdsc_fmnist.py --config.mode=export \
        --workdir=runs/rkdsc_fmnist [--config.export.method=rkdsc --config.export.seed=0]

Each study's ``export(config, workdir)`` builds its system's spec and calls :func:`export_run`,
which reads the finished run ``<workdir>/runs/<method>/seed<seed>``, writes
``<workdir>/export/<method>_seed<seed>/`` with :func:`rkdsc_jax.deploy.export`, loads it the
way a deployment does, checks that it predicts what the training code's model predicts on a
batch of test images, and measures batch-1 latency of both halves (``latency.json``).
"""

from __future__ import annotations

import copy
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from experiments.common import inputs, results
from experiments.common.layout import RunLayout
from rkdsc_jax import data, deploy, files, train
from rkdsc_jax.train import workdir as workdir_lib


def _reference_logits(spec: deploy.SystemSpec, variables, images, snr_db: float):
    """The training code's forward pass with an ideal channel (what the export must reproduce)."""
    model = spec.build()
    snr = jnp.full((images.shape[0],), snr_db, jnp.float32)
    if spec.kind == "rkdsc":
        logits, _, _ = model.apply(variables, images, snr, lambda x, mask: x, jnp.zeros_like(snr, jnp.int32))
    else:
        logits, _ = model.apply(variables, images, snr, lambda x: x)
    return logits


def write_export(spec: deploy.SystemSpec, variables, directory: epath.PathLike, *, images, metadata: dict,
                 overwrite: bool = False, latency_repeats: int = 100, snr_db: float = 10.0,
                 run_config: dict | None = None) -> dict:
    """Exports, reloads, checks predictions against the training model on ``images`` and times it."""
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
    deploy.export(directory, spec, variables, metadata=metadata, overwrite=overwrite, run_config=run_config)
    transmitter, receiver = deploy.load_transmitter(directory), deploy.load_receiver(directory)
    sent = transmitter.transmit(images, snr_db, "awgn")
    logits = receiver.receive(sent.symbols, sent.mask, snr_db, "awgn")
    expected = _reference_logits(spec, variables, jnp.asarray(images), snr_db)
    difference = float(jnp.max(jnp.abs(logits - expected)))
    agreement = float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(expected, -1)))
    if agreement < 1.0:
        raise RuntimeError(f"The export in {directory} predicts differently from the trained model on "
                           f"{1 - agreement:.1%} of {len(images)} images (largest logit difference {difference:.3g}).")
    result = {"check": {"images": int(len(images)), "max_logit_difference": difference, "same_predictions": True},
              "latency": deploy.latency(transmitter, receiver, repeats=latency_repeats)}
    files.atomic_write_json(epath.Path(directory) / "latency.json", result)
    lat = result["latency"]
    logging.info("Exported %s: transmitter %s parameters (%.2f ms per image at batch 1), receiver %s (%.2f ms) on "
                 "%s; same predictions as the trained model on %d test images (max logit difference %.2g).",
                 directory, f"{lat['transmitter_params']:,}", lat["transmit_ms"], f"{lat['receiver_params']:,}",
                 lat["receive_ms"], lat["device"], len(images), difference)
    return result


def export_seed(config) -> int:
    """``config.export.seed``, else the pipeline's (paper A) or study's (paper B) first seed."""
    if config.export.get("seed") is not None:
        return config.export.seed
    return (config.pipeline.seeds if "pipeline" in config else config.study.seeds)[0]


def export_directory(config, workdir: epath.PathLike) -> epath.Path:
    return RunLayout.from_config(config, workdir).export(config.export.method, export_seed(config))


def report_section(config, workdir: epath.PathLike) -> tuple[dict | None, list[str]]:
    """(results entry, report lines) for the pipeline's export, if it has one."""
    directory = export_directory(config, workdir)
    written = results.read_json(directory / "latency.json")
    if written is None:
        return None, []
    lat = written["latency"]
    root = epath.Path(workdir)
    shown = directory.relative_to(root) if str(directory).startswith(str(root).rstrip("/") + "/") else directory
    device = lat["platform"] if lat["device"] == lat["platform"] else f"{lat['platform']}, {lat['device']}"
    return {"directory": str(directory)} | written, [
        "## Deployment export", "",
        f"`{shown}/` ({config.export.method}, seed {export_seed(config)}): transmitter {lat['transmitter_params']:,} "
        f"parameters, {lat['transmit_ms']:.2f} ms per image at batch 1; receiver {lat['receiver_params']:,} "
        f"parameters, {lat['receive_ms']:.2f} ms ({device}, median of {lat['repeats']}). "
        "Load each half with `rkdsc_jax.deploy.load_transmitter` / `load_receiver`.", ""]


def _exported_from(directory: epath.Path) -> str | None:
    spec = files.read_json(directory / "spec.json") or {}
    return (spec.get("metadata") or {}).get("run_fingerprint")


def _run_dir(config, workdir) -> epath.Path:
    return RunLayout.from_config(config, workdir).run(config.export.method, export_seed(config))


def exported(config, workdir: epath.PathLike) -> bool:
    """Whether the export exists, finished its check, and was made from the run now in its run directory."""
    directory = export_directory(config, workdir)
    if not (directory / "latency.json").exists():
        return False
    return _exported_from(directory) == workdir_lib.artifact_fingerprint(_run_dir(config, workdir))


def _tuples(value):
    """config.json's lists back to the tuples the configs hold."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def run_config(config, run_dir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a run was trained with (its ``config.json``), with this invocation's machine-only
    fields (mesh, data location, workers, export) — what the export and its check need here."""
    recorded = files.read_json(epath.Path(run_dir) / "config.json")
    if recorded is None:
        raise FileNotFoundError(f"{run_dir} has no config.json, so its system cannot be rebuilt as it was trained; "
                                "export a run trained by this code (rerun its training to record it).")
    child = ml_collections.ConfigDict(_tuples(recorded))
    with child.unlocked():
        for section in ("mesh", "export"):
            if section in config:
                child[section] = copy.deepcopy(config[section])
        for key in ("data_dir", "worker_count"):
            if key in config.data:
                child.data[key] = config.data[key]
        if "teacher" in config and "cache_dir" in config.teacher:
            child.teacher.cache_dir = config.teacher.cache_dir
    return child


def export_run(config, workdir: epath.PathLike,
               build: Callable[[ml_collections.ConfigDict], tuple[Callable[[dict], deploy.SystemSpec], object]]) -> dict:
    """Exports the finished run of ``config.export.method`` / seed.  ``build(run config)`` gives
    ``(spec_of(run summary), eval source)`` from the config the run itself recorded (not the
    current flags), and that config travels with the export."""
    e = config.export
    seed = export_seed(config)
    run_dir = _run_dir(config, workdir)
    summary = results.read_json(run_dir / "summary.json")
    if summary is None:
        raise FileNotFoundError(f"No finished run in {run_dir} (its summary.json is missing): train {e.method} with "
                                f"seed {seed} in {workdir} first, or pick --config.export.method/seed of a finished "
                                "run.")
    trained = run_config(config, run_dir)
    spec_of, eval_source = build(trained)
    variables = train.Checkpointer(run_dir / "checkpoints", read_only=True).restore_variables()
    directory = export_directory(config, workdir)
    fingerprint = workdir_lib.artifact_fingerprint(run_dir)
    # An export without its check (killed before latency.json) is redone, not refused; one of a run
    # since retrained is moved aside (nothing deleted) and redone.
    overwrite = e.overwrite or not (directory / "latency.json").exists()
    if not overwrite and _exported_from(directory) != fingerprint:
        workdir_lib.move_aside(directory, f"exported from another run of {run_dir}")
    batch = next(iter(data.eval_batches(eval_source, batch_size=64,
                                        preprocess_config=inputs.preprocess(trained, normalize=False))))
    images = np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]
    metadata = {"method": e.method, "seed": seed, "run_dir": str(files.absolute(run_dir)),
                "dataset": trained.data.name, "curves": summary.get("curves"), "steps": summary.get("steps"),
                "run_fingerprint": fingerprint}
    return write_export(spec_of(summary), jax.device_get(variables), directory, images=images, metadata=metadata,
                        overwrite=overwrite, latency_repeats=e.latency_repeats,
                        run_config=files.read_json(run_dir / "config.json"))
