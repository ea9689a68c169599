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

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from experiments.common import inputs, results
from experiments.common.layout import RunLayout
from rkdsc_jax import data, deploy, files, train


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
                 overwrite: bool = False, latency_repeats: int = 100, snr_db: float = 10.0) -> dict:
    """Exports, reloads, checks predictions against the training model on ``images`` and times it."""
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
    deploy.export(directory, spec, variables, metadata=metadata, overwrite=overwrite)
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


def exported(config, workdir: epath.PathLike) -> bool:
    return (export_directory(config, workdir) / "latency.json").exists()


def export_run(config, workdir: epath.PathLike, spec_of: Callable[[dict], deploy.SystemSpec], eval_source) -> dict:
    """Exports the finished run of ``config.export.method`` / seed; ``spec_of(run summary)`` is its system."""
    e = config.export
    seed = export_seed(config)
    run_dir = RunLayout.from_config(config, workdir).run(e.method, seed)
    summary = results.read_json(run_dir / "summary.json")
    if summary is None:
        raise FileNotFoundError(f"No finished run in {run_dir} (its summary.json is missing): train {e.method} with "
                                f"seed {seed} in {workdir} first, or pick --config.export.method/seed of a finished "
                                "run.")
    variables = train.Checkpointer(run_dir / "checkpoints").restore_variables()
    directory = export_directory(config, workdir)
    # An export without its check (killed before latency.json) is redone, not refused.
    overwrite = e.overwrite or not (directory / "latency.json").exists()
    batch = next(iter(data.eval_batches(eval_source, batch_size=64,
                                        preprocess_config=inputs.preprocess(config, normalize=False))))
    images = np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]
    metadata = {"method": e.method, "seed": seed, "run_dir": str(files.absolute(run_dir)), "dataset": config.data.name,
                "curves": summary.get("curves"), "steps": summary.get("steps")}
    return write_export(spec_of(summary), jax.device_get(variables), directory, images=images, metadata=metadata,
                        overwrite=overwrite, latency_repeats=e.latency_repeats)
