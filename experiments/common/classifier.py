"""Mode ``train_classifier``: supervised training of an image classifier.

Composes the library: a data source and grain pipelines, a model from the registry, a
train state on a data-parallel mesh, and the generic ``fit`` loop.  Writes checkpoints,
``metrics.jsonl``, TensorBoard events, ``config.json`` and ``summary.json`` into the workdir.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from experiments.common import inputs, results
from rkdsc_jax import models, train


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates; returns (and writes) the run summary. Resumes from ``workdir``."""
    workdir, start = results.start_run(config, workdir, f"Classifier {config.model.name}")
    mesh = train.make_mesh(config.mesh.num_devices)
    train_source = inputs.train_source(config)
    eval_source = inputs.source(config, config.data.eval_split, config.data.num_eval_examples)
    info = train_source.info
    logging.info("Data: %s train (%d), %s (%d); mesh of %d devices over %d process(es).",
                 info.name, len(train_source), eval_source.info.split, len(eval_source),
                 mesh.size, jax.process_count())

    preprocess = inputs.preprocess(config, normalize=True)
    num_steps = inputs.steps(config.train, len(train_source))
    train_iter = inputs.train_iterator(config, train_source, batch_size=config.train.batch_size, num_steps=num_steps,
                                       seed=config.seed, preprocess_config=preprocess)

    model = models.classifier_from_config(config.model, info.num_classes)
    tx = train.make_optimizer(config.train, num_steps)
    sample = jnp.zeros((1, *preprocess.output_shape(info.image_shape)), jnp.float32)
    state = jax.jit(
        functools.partial(train.create_train_state, model, tx, seed=config.seed, train=False),
        out_shardings=train.replicated(mesh),
    )(sample)
    logging.info("Model %s: %s parameters; %d steps of batch %d.", config.model.name,
                 f"{train.param_count(state.params):,}", num_steps, config.train.batch_size)

    step = train.jit_train_step(
        functools.partial(train.classifier_train_step, label_smoothing=config.train.label_smoothing), mesh
    )
    eval_step = train.jit_eval_step(train.classifier_eval_step, mesh)

    batches = inputs.eval_batches(eval_source, config.train.eval_batch_size, preprocess)
    eval_fn = lambda state: train.evaluate(eval_step, state, batches(), mesh)  # noqa: E731

    loop_config = train.LoopConfig(
        num_steps=num_steps,
        batch_size=config.train.batch_size,
        log_every=config.train.log_every,
        checkpoint_every=config.train.checkpoint_every,
        eval_every=config.train.eval_every,
        keep_checkpoints=config.train.keep_checkpoints,
        skip_nonfinite=bool(config.train.get("skip_nonfinite", False)),
    )
    state, summary = train.fit(state=state, train_step=step, train_iter=train_iter, mesh=mesh,
                               workdir=str(workdir), config=loop_config, eval_fn=eval_fn)
    summary |= {
        "mode": "train_classifier",
        "dataset": info.name,
        "num_train_examples": len(train_source),
        "num_eval_examples": len(eval_source),
        "model": config.model.name,
        "num_params": train.param_count(state.params),
        "devices": mesh.size,
        "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "total_wall_time_s": time.perf_counter() - start,
    }
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("Done: test accuracy %.4f after %d steps (%.0f s).",
                 summary["eval"].get("accuracy", float("nan")), num_steps, summary["total_wall_time_s"])
    return summary
