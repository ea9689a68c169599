"""Modes ``precompute_logits`` (the teacher's top-K probabilities for every augmented view,
sharded and resumable; on several hosts each process writes its own shards) and
``verify_logits`` (the teacher re-run on a random sample of stored records)."""

from __future__ import annotations

import time

import jax
import ml_collections
from absl import logging

from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from rkdsc_jax.distill import logit_store


def store_identity(config, layout: RunLayout) -> dict:
    """The store's identity: data, teacher and store fields (its views' seed is ``store.seed``), and
    the teacher it was built from."""
    return results.run_identity(config, only=("data", "teacher", "store"),
                                exclude=("store.verify_samples", "store.shared_views"),
                                inputs={"teacher": teacher_lib.teacher_input(config, layout)})


def precompute_logits(config: ml_collections.ConfigDict, workdir: str) -> dict:
    layout = RunLayout.from_config(config, workdir)
    results.start_run(config, layout.store, "Store the teacher's top-K probabilities",
                      identity=store_identity(config, layout))
    source = inputs.train_source(config)
    teacher = teacher_lib.load_teacher(config, inputs.class_names(source), layout)
    start = time.perf_counter()
    logit_store.precompute_logits(
        teacher.logits, source, layout.store, teacher_identity=teacher.identity(),
        num_epochs=config.store.num_epochs, top_k=config.store.top_k, temperature=config.store.temperature,
        augment_config=inputs.augment(config), seed=config.store.seed, batch_size=config.store.batch_size,
        shard_size=config.store.shard_size, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    store = logit_store.LogitStore.open(layout.store, expect_teacher=teacher.identity())
    summary = logit_store.store_summary(store, source) | {"wall_time_s": time.perf_counter() - start}
    results.write_json(layout.store / "summary.json", summary, checksum=True)
    logging.info("Logit store %s: %d records, %.1f MB.", layout.store, summary.get("records", -1),
                 store.nbytes() / 1e6)
    return summary


def verify_logits(config: ml_collections.ConfigDict, workdir: str) -> dict:
    layout = RunLayout.from_config(config, workdir)
    source = inputs.train_source(config)
    teacher = teacher_lib.load_teacher(config, inputs.class_names(source), layout)
    store = logit_store.LogitStore.open(layout.store, expect_teacher=teacher.identity(),
                                        expect_dataset=logit_store.dataset_identity(source))
    report = logit_store.verify(store, teacher.logits, source, num_samples=config.store.verify_samples,
                                seed=config.seed)
    results.write_json(layout.store / "verify.json", report)
    logging.info("Store verification: %s", report)
    return report
