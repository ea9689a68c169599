"""Mode ``ltosc_study``: paper B's whole study in one resumable command, and modes ``evaluate``
and ``export``.

Stages: fine-tune the teacher, store its top-K probabilities (and verify them), train every
method and seed, the teacher over the channel (LA-TOSC), the training-set-size sweep, the FDM
ablation, export L-TOSC-KD, the report.  Every stage is skipped when its output exists, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from experiments.common import export as export_lib
from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from experiments.ltosc import methods, report, store
from rkdsc_jax import train
from rkdsc_jax.distill import logit_store


def teacher_curves(config, workdir: str) -> dict:
    """LA-TOSC: the (fine-tuned) teacher's features sent over the channel to its own head."""
    return teacher_lib.teacher_over_channel(config, RunLayout.from_config(config, workdir))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``evaluate``: LA-TOSC curves, then one plot and table over every finished run."""
    path = RunLayout.from_config(config, workdir).run("la_tosc") / "summary.json"
    if results.read_json(path) is None:
        results.write_json(path, teacher_curves(config, workdir))
    return report.write_report(config, workdir)


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``export`` of a study: the transmitter and receiver of any trained method."""
    child = methods.method_config(config, config.export.method, export_lib.export_seed(config))
    setup = methods.Setup(child, RunLayout.from_config(config, workdir))
    return export_lib.export_run(config, workdir, lambda summary: setup.model_spec, setup.eval_source)


def study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``ltosc_study``: the whole paper-B study in one resumable command."""
    layout = RunLayout.from_config(config, workdir)
    layout.root.mkdir(parents=True, exist_ok=True)
    stages = 8
    if config.teacher.finetune.enabled:
        results.stage("fine-tune the teacher", 1, stages)
        if results.read_json(layout.teacher_run / "summary.json") is None:
            teacher_lib.finetune(config, workdir)
    results.stage("pre-store the teacher's top-K probabilities", 2, stages)
    if results.read_json(layout.store / "summary.json") is None:
        store.precompute_logits(config, workdir)
    if results.read_json(layout.store / "verify.json") is None:
        store.verify_logits(config, workdir)

    results.stage("train every method and seed", 3, stages)
    for method in config.study.methods:
        for seed in config.study.seeds:
            child = methods.method_config(config, method, seed)
            run_dir = layout.run(method, seed)
            results.run_once(run_dir, lambda: methods.train_method(child, str(run_dir), study_dir=workdir))

    results.stage("the teacher over the channel (LA-TOSC)", 4, stages)
    path = layout.run("la_tosc") / "summary.json"
    if results.read_json(path) is None:
        results.write_json(path, teacher_curves(config, workdir))

    results.stage("accuracy vs training-set size", 5, stages)
    full_size = len(inputs.source(config, config.data.train_split))
    for size in config.study.train_sizes:
        for method in config.study.size_methods:
            run_dir = layout.size_run(size, method)
            if size >= full_size:  # The main run of the first seed is this point.
                main = results.read_json(layout.run(method, config.study.seeds[0]) / "summary.json")
                if main is not None:
                    results.write_json(run_dir / "summary.json", main)
                    continue
            child = methods.method_config(config, method, config.study.seeds[0], num_train_examples=size)
            with child.unlocked():
                child.eval.snrs_db = tuple(config.study.size_snrs_db)
                child.train.num_steps = None
                child.train.num_epochs = config.train.num_epochs * config.study.size_epoch_scale.get(str(size), 1.0)
            results.run_once(run_dir, lambda: methods.train_method(child, str(run_dir), study_dir=workdir))

    results.stage("FDM ablation: storage and time per epoch", 6, stages)
    path = layout / "fdm_ablation.json"
    if results.read_json(path) is None:
        results.write_json(path, fdm_ablation(config, workdir))

    results.stage("export the deployable transmitter and receiver", 7, stages)
    if not export_lib.exported(config, workdir):
        export(config, workdir)

    results.stage("report", 8, stages)
    return report.write_report(config, workdir)


def _time_steps(setup: methods.Setup, num_steps: int) -> float:
    """Median seconds per step after one warm-up (compile) step; includes reading the data."""
    state = setup.init_state(setup.config.seed)
    step = setup.train_step()
    iterator = setup.train_iterator(num_steps + 1)
    times = []
    for i in range(num_steps + 1):
        begin = time.perf_counter()
        state, metrics = step(state, train.shard_batch(next(iterator), setup.mesh, setup.batch_keys))
        jax.block_until_ready(metrics)
        if i:
            times.append(time.perf_counter() - begin)
    return float(np.median(times))


def fdm_ablation(config, workdir: str) -> dict:
    """Paper B Table II on this machine: store vs teacher-in-the-loop, same run, same model."""
    layout = RunLayout.from_config(config, workdir)
    source = inputs.source(config, config.data.train_split)
    storage = logit_store.store_summary(logit_store.LogitStore.open(layout.store), source)
    timings = {}
    for method in ("l_tosc_kd", "l_tosc_kd_online"):
        setup = methods.Setup(methods.method_config(config, method, config.study.seeds[0]), layout)
        timings[method] = _time_steps(setup, config.study.ablation_steps)
    steps_per_epoch = train.steps_from_epochs(len(source), config.train.batch_size, 1)
    store_summary = results.read_json(layout.store / "summary.json") or {}
    return {
        "storage": storage,
        "seconds_per_step": timings,
        "seconds_per_epoch": {k: v * steps_per_epoch for k, v in timings.items()},
        "speedup": timings["l_tosc_kd_online"] / timings["l_tosc_kd"],
        "precompute_wall_time_s": store_summary.get("wall_time_s"),
        "steps_timed": config.study.ablation_steps,
        "batch_size": config.train.batch_size,
        "platform": jax.devices()[0].platform,
    }
