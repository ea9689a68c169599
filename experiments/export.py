"""Mode ``export``: a trained system's transmitter and receiver as deployable Orbax checkpoints.

    python -m experiments.main --config=experiments/configs/rkdsc_fmnist.py --config.mode=export \
        --workdir=runs/rkdsc_fmnist [--config.export.method=rkdsc --config.export.seed=0]

reads the finished run ``<workdir>/runs/<method>/seed<seed>`` of a paper-A pipeline
(``rkdsc_*`` configs: methods ``rkdsc``, ``no_kd``, ``cnn``) or of a paper-B study
(``ltosc_*`` configs: any trained method) and writes ``<workdir>/export/<method>_seed<seed>/``
with :func:`rkdsc_jax.deploy.export`.  It then loads the export the way a deployment does,
checks that it predicts what the training code's model predicts on a batch of test images,
and measures batch-1 latency of both halves (``latency.json``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import ltosc
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


def write_export(spec: deploy.SystemSpec, variables, directory: str, *, images, metadata: dict,
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
    files.atomic_write_json(os.path.join(directory, "latency.json"), result)
    lat = result["latency"]
    logging.info("Exported %s: transmitter %s parameters (%.2f ms per image at batch 1), receiver %s (%.2f ms) on "
                 "%s; same predictions as the trained model on %d test images (max logit difference %.2g).",
                 directory, f"{lat['transmitter_params']:,}", lat["transmit_ms"], f"{lat['receiver_params']:,}",
                 lat["receive_ms"], lat["device"], len(images), difference)
    return result


def _check_images(config, eval_source, count: int = 64) -> np.ndarray:
    batch = next(iter(data.eval_batches(eval_source, batch_size=count,
                                        preprocess_config=ltosc._unit_preprocess(config))))
    return np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]


def _finished_run(workdir: str, method: str, seed: int) -> tuple[str, dict]:
    run_dir = os.path.join(workdir, "runs", method, f"seed{seed}")
    summary = ltosc._read_json(os.path.join(run_dir, "summary.json"))
    if summary is None:
        raise FileNotFoundError(f"No finished run in {run_dir} (its summary.json is missing): train {method} with "
                                f"seed {seed} in {workdir} first, or pick --config.export.method/seed of a finished "
                                "run.")
    return run_dir, summary


def _seed(config) -> int:
    if config.export.get("seed") is not None:
        return config.export.seed
    return (config.pipeline.seeds if "stage2" in config else config.study.seeds)[0]


def export_directory(config, workdir: str) -> str:
    name = f"{config.export.method}_seed{_seed(config)}"
    return config.export.get("directory") or os.path.join(workdir, "export", name)


def report_section(config, workdir: str) -> tuple[dict | None, list[str]]:
    """(results entry, report lines) for the pipeline's export, if it has one."""
    directory = export_directory(config, workdir)
    written = ltosc._read_json(os.path.join(directory, "latency.json"))
    if written is None:
        return None, []
    lat = written["latency"]
    directory, workdir = os.path.abspath(directory), os.path.abspath(workdir)
    where = os.path.relpath(directory, workdir) if directory.startswith(workdir + os.sep) else directory
    device = lat["platform"] if lat["device"] == lat["platform"] else f"{lat['platform']}, {lat['device']}"
    return {"directory": directory} | written, [
        "## Deployment export", "",
        f"`{where}/` ({config.export.method}, seed {_seed(config)}): transmitter {lat['transmitter_params']:,} "
        f"parameters, {lat['transmit_ms']:.2f} ms per image at batch 1; receiver {lat['receiver_params']:,} "
        f"parameters, {lat['receive_ms']:.2f} ms ({device}, median of {lat['repeats']}). "
        "Load each half with `rkdsc_jax.deploy.load_transmitter` / `load_receiver`.", ""]


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``export`` for the configs of either paper."""
    e = config.export
    paper_a = "stage2" in config
    seed = _seed(config)
    run_dir, summary = _finished_run(workdir, e.method, seed)
    if paper_a:
        from experiments import rkdsc

        setup = rkdsc._Setup(config, workdir)
        if e.method in ("rkdsc", "no_kd"):
            spec = setup.system_spec
        elif e.method == "cnn":
            spec = setup.cnn_spec(summary["num_symbols"])
        else:
            raise ValueError(f"export.method={e.method!r}: paper A's deployable systems are 'rkdsc', 'no_kd' and "
                             "'cnn' (stage 1 has no channel codec).")
    else:
        setup = ltosc._Setup(ltosc.method_config(config, e.method, seed), workdir)
        spec = setup.model_spec
    variables = train.Checkpointer(os.path.join(run_dir, "checkpoints")).restore_variables()
    directory = export_directory(config, workdir)
    # An export without its check (killed before latency.json) is redone, not refused.
    overwrite = e.overwrite or not os.path.exists(os.path.join(directory, "latency.json"))
    metadata = {"method": e.method, "seed": seed, "run_dir": os.path.abspath(run_dir), "dataset": config.data.name,
                "curves": summary.get("curves"), "steps": summary.get("steps")}
    return write_export(spec, jax.device_get(variables), directory, images=_check_images(config, setup.eval_source),
                        metadata=metadata, overwrite=overwrite, latency_repeats=e.latency_repeats)
