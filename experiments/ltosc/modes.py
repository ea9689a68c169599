"""Mode ``ltosc_study``: paper B's whole study in one resumable command, and modes ``evaluate``
and ``export``.

Stages: fine-tune the teacher, store its top-K probabilities (and verify them), train every
method and seed, the loss ablations (KL instead of IB, the β sweep), optionally the arms trained
longer (have they converged?), the teacher over the channel
(LA-TOSC), the training-set-size sweep, the FDM ablation, export L-TOSC-KD, the report.  Every stage is skipped when its output exists, so an
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
from rkdsc_jax.train import workdir as workdir_lib


def equal_symbols(config) -> tuple[int, ...]:
    """The symbol counts the teacher is sent at for a fair comparison: the TOSC systems' own."""
    return (int(config.model.num_symbols),)


def teacher_curves(config, workdir: str) -> dict:
    """LA-TOSC: the (fine-tuned) teacher's features sent over the channel to its own head (all
    640 symbols, a reference) and at the students' 16 symbols through a PCA (and a trained
    linear) codec, the comparison."""
    return teacher_lib.teacher_over_channel(config, RunLayout.from_config(config, workdir),
                                            equal_symbols=equal_symbols(config),
                                            codec_snr_range=tuple(config.objective.snr_range))


def teacher_curves_identity(config, layout: RunLayout) -> dict:
    # The equal-bandwidth rows' settings are an input: a run recorded without them is computed again.
    codecs = {"symbols": list(equal_symbols(config)), "snr_range": list(config.objective.snr_range)}
    return results.run_identity(config, only=("seed", "data", "teacher", "channel", "eval"),
                                inputs={"teacher": teacher_lib.teacher_input(config, layout),
                                        "equal_bandwidth": codecs})


def _la_tosc(config, workdir: str) -> None:
    layout = RunLayout.from_config(config, workdir)
    run_dir, identity = layout.run("la_tosc"), teacher_curves_identity(config, layout)
    if results.finished(run_dir, identity) is None:
        results.write_json(run_dir / "summary.json", teacher_curves(config, workdir), checksum=True)
        results.write_json(run_dir / workdir_lib.RUN_FILE, identity)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``evaluate``: LA-TOSC curves, then one plot and table over every finished run."""
    _la_tosc(config, workdir)
    return report.write_report(config, workdir)


def export(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``export`` of a study: the transmitter and receiver of any trained method, rebuilt
    from the config its run recorded."""
    layout = RunLayout.from_config(config, workdir)

    def build(run_config):
        setup = methods.Setup(run_config, layout)
        return (lambda summary: setup.model_spec), setup.eval_source

    return export_lib.export_run(config, workdir, build)


def study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``ltosc_study``: the whole paper-B study in one resumable command.  A stage whose
    fields or inputs changed since it ran is computed again (``results.finished``)."""
    layout = RunLayout.from_config(config, workdir)
    layout.root.mkdir(parents=True, exist_ok=True)
    seeds = inputs.tuple_field(config, "study.seeds", int)
    study_methods = inputs.tuple_field(config, "study.methods", str)
    with workdir_lib.WorkdirLock(layout.root):
        stages = 8
        if config.teacher.finetune.enabled:
            results.stage("fine-tune the teacher", 1, stages)
            if results.finished(layout.teacher_run, teacher_lib.teacher_identity(config)) is None:
                teacher_lib.finetune(config, workdir)
                results.ensure_recorded(layout.teacher_run, teacher_lib.teacher_identity(config))
        results.stage("pre-store the teacher's top-K probabilities", 2, stages)
        if results.finished(layout.store, store.store_identity(config, layout)) is None:
            store.precompute_logits(config, workdir)
            results.ensure_recorded(layout.store, store.store_identity(config, layout))
        if results.read_json(layout.store / "verify.json") is None:
            store.verify_logits(config, workdir)

        results.stage("train every method and seed", 3, stages)
        for method in study_methods:
            for seed in seeds:
                child = methods.method_config(config, method, seed)
                run_dir = layout.run(method, seed)
                _train_once(child, run_dir, workdir, layout)

        results.stage("ablations: IB vs KL loss, the β sweep, longer training", 3, stages)
        _ablations(config, workdir, layout)
        _longer_training(config, workdir, layout)

        results.stage("the teacher over the channel (LA-TOSC)", 4, stages)
        _la_tosc(config, workdir)

        results.stage("accuracy vs training-set size", 5, stages)
        _size_sweep(config, workdir, layout)

        results.stage("FDM ablation: storage and time per epoch", 6, stages)
        path = layout / "fdm_ablation.json"
        identity = results.run_identity(config, inputs={
            "store": workdir_lib.artifact_fingerprint(layout.store),
            "teacher": teacher_lib.teacher_input(config, layout)})
        if results.current_json(path, identity) is None:
            results.write_with_identity(path, fdm_ablation(config, workdir), identity)

        results.stage("export the deployable transmitter and receiver", 7, stages)
        if not export_lib.exported(config, workdir):
            export(config, workdir)

        results.stage("report", 8, stages)
        return report.write_report(config, workdir)


def _train_once(child, run_dir, workdir: str, layout: RunLayout) -> None:
    """Trains one method config into ``run_dir`` unless it finished for the same identity; the
    teacher and the store are the study's (``workdir``)."""
    results.run_once(run_dir, lambda: methods.train_method(child, str(run_dir), study_dir=workdir),
                     methods.run_identity(child, layout))


def _main_steps(config) -> int:
    """The main runs' optimiser steps (the length the sweeps are measured against)."""
    return inputs.steps(config.train, len(inputs.train_source(config)))


def _ablations(config, workdir: str, layout: RunLayout) -> None:
    """Paper B's loss ablations, each seed of ``study.ablation_seeds`` like the main runs: L-TOSC-KD
    with the KL distillation loss instead of the IB loss (``study.loss_ablation``), and with every β
    of ``study.betas`` (the main runs are the config's own β)."""
    seeds = inputs.tuple_field(config, "study.ablation_seeds", int)
    for method in inputs.tuple_field(config, "study.loss_ablation", str):
        for seed in seeds:
            child, run_dir = methods.method_config(config, method, seed), layout.run(method, seed)
            _train_once(child, run_dir, workdir, layout)
    for beta in inputs.tuple_field(config, "study.betas", (int, float)):
        for seed in seeds:
            child, run_dir = methods.method_config(config, "l_tosc_kd", seed), layout.beta_run(beta, "l_tosc_kd", seed)
            with child.unlocked():
                child.objective.beta = float(beta)
            _train_once(child, run_dir, workdir, layout)


def _longer_training(config, workdir: str, layout: RunLayout) -> None:
    """Whether the arms have converged: ``study.long_methods`` for every seed of ``study.seeds`` with
    ``study.long_factor`` times the main runs' steps (the same warm-up and cosine decay, stretched)."""
    factor = config.study.get("long_factor")
    if not factor:
        return
    num_steps = factor * _main_steps(config)
    for method in inputs.tuple_field(config, "study.long_methods", str):
        for seed in inputs.tuple_field(config, "study.seeds", int):
            child, run_dir = methods.method_config(config, method, seed), layout.long_run(factor, method, seed)
            with child.unlocked():
                child.train.num_steps = num_steps  # Overrides num_epochs.
            _train_once(child, run_dir, workdir, layout)


def _size_sweep(config, workdir: str, layout: RunLayout) -> None:
    """Accuracy vs training-set size at equal compute: every size trains the main runs' steps (or
    ``study.size_steps``) with their schedule, for every seed of ``study.size_seeds``; smaller sets are
    nested random subsets of the study's, which the store covers."""
    seeds = inputs.tuple_field(config, "study.seeds", int)
    full_size = len(inputs.train_source(config))
    num_steps = config.study.get("size_steps") or _main_steps(config)
    for size in inputs.tuple_field(config, "study.train_sizes", int):
        for method in inputs.tuple_field(config, "study.size_methods", str):
            for seed in inputs.tuple_field(config, "study.size_seeds", int):
                run_dir = layout.size_run(size, method, seed)
                main_dir = layout.run(method, seed)
                main = results.read_json(main_dir / "summary.json")
                if size >= full_size and seed in seeds and main is not None and main["steps"] == num_steps:
                    results.write_json(run_dir / "summary.json", main, checksum=True)  # The same run.
                    if workdir_lib.recorded(main_dir) is not None:
                        results.write_json(run_dir / workdir_lib.RUN_FILE, workdir_lib.recorded(main_dir))
                    continue
                subset = {"num_train_examples": min(size, full_size)}
                if config.data.get("num_train_examples") is not None:  # Nested in the study's own subset.
                    subset["subset_of"] = config.data.num_train_examples
                child = methods.method_config(config, method, seed, **subset)
                with child.unlocked():
                    child.eval.snrs_db = inputs.tuple_field(config, "study.size_snrs_db", (int, float))
                    child.train.num_steps = num_steps  # Overrides num_epochs.
                _train_once(child, run_dir, workdir, layout)


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
    source = inputs.train_source(config)  # The store's examples (data.num_train_examples of the split).
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
