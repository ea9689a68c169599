"""Paper B end to end: teacher-logit store, L-TOSC-KD and its baselines, evaluation, report.

Modes (``config.mode``):
- ``precompute_logits``: runs the teacher once over the training set for
  ``store.num_epochs`` augmentation epochs and writes the top-K store (resumable).
- ``verify_logits``: re-runs the teacher on a random sample and reports the largest
  difference from the store.
- ``ltosc``: trains one method (``config.method``) and measures its accuracy vs SNR.
- ``evaluate``: the teacher over the channel (LA-TOSC) and the curves of finished runs.
- ``ltosc_study``: everything above for every method and seed, the training-set-size
  sweep and the FDM ablation, then ``report.md`` + ``results.json`` + plots.  Every stage
  is skipped when its output exists, so an interrupted study resumes where it stopped;
  last, L-TOSC-KD's transmitter and receiver are exported (``experiments.export``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import teacher as teacher_lib
from rkdsc_jax import data, deploy, evaluation, files, train
from rkdsc_jax.distill import logit_store, tosc_steps
from rkdsc_jax.train import mesh as mesh_lib

# Paper B's methods (SPEC §3.1) as overrides of the config; LA-TOSC is evaluation only.
METHODS = {
    "l_tosc_kd": {"encoder": "student", "loss": "ib", "targets": "store"},
    "l_tosc_kd_online": {"encoder": "student", "loss": "ib", "targets": "online"},
    "l_tosc_kd_kl": {"encoder": "student", "loss": "kd", "targets": "store"},
    "l_tosc": {"encoder": "student", "loss": "ce", "targets": "labels"},
    "res_tosc": {"encoder": "resnet", "loss": "ce", "targets": "labels"},
    "eff_tosc": {"encoder": "efficientnet", "loss": "ce", "targets": "labels"},
}
METHOD_LABELS = {
    "l_tosc_kd": "L-TOSC-KD", "l_tosc_kd_online": "L-TOSC-KD (online teacher)",
    "l_tosc_kd_kl": "L-TOSC-KD (KL loss)", "l_tosc": "L-TOSC", "res_tosc": "Res-TOSC",
    "eff_tosc": "Eff-TOSC", "la_tosc": "LA-TOSC (teacher)",
}


# --- Shared pieces ---------------------------------------------------------------------


_source = teacher_lib.source_from_config


def random_subset(source, num_examples: int, seed: int):
    """A reproducible random subset that keeps the parent's example indices (store lookups)."""
    if num_examples >= len(source):
        return source
    indices = np.sort(np.random.default_rng([seed, len(source)]).permutation(len(source))[:num_examples])
    return data.SubsetSource(source, indices, source.info.split)


def train_source(config):
    """The training split, or its reproducible random subset of ``data.num_train_examples``."""
    source = _source(config, config.data.train_split)
    if config.data.get("num_train_examples"):
        source = random_subset(source, config.data.num_train_examples, seed=config.data.subset_seed)
    return source


def _class_names(source) -> tuple[str, ...]:
    return source.info.class_names or tuple(str(i) for i in range(source.info.num_classes))


def _write_json(path: str, obj: Any) -> None:
    if jax.process_index() == 0:
        files.atomic_write_json(path, obj)


def _read_json(path: str) -> Any | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def store_dir(config, workdir: str) -> str:
    return config.store.get("directory") or os.path.join(workdir, "logits")


def _augment_config(config) -> data.AugmentConfig:
    return data.AugmentConfig(config.data.augment, config.data.crop_padding)


def _unit_preprocess(config) -> data.PreprocessConfig:
    """Batches carry [0, 1] images at the student's size; models and teachers normalise."""
    return data.PreprocessConfig(config.data.get("image_size"), config.data.get("channels"), "unit")


def teacher_logits_fn(teacher):
    """A pure (variables, images) → logits of a teacher, for the online ablation."""
    def logits(variables, images):
        return teacher.head_fn(variables["head"], teacher.feature_fn(variables["network"], teacher.preprocess(images)))

    return logits, {"network": teacher.variables, "head": teacher.head_params}


# --- Mode: precompute_logits / verify_logits -------------------------------------------


def precompute_logits(config: ml_collections.ConfigDict, workdir: str) -> dict:
    source = train_source(config)
    teacher = teacher_lib.load_teacher(config, _class_names(source), workdir)
    directory = store_dir(config, workdir)
    start = time.perf_counter()
    logit_store.precompute_logits(
        teacher.logits, source, directory, teacher_identity=teacher.identity(),
        num_epochs=config.store.num_epochs, top_k=config.store.top_k, temperature=config.store.temperature,
        augment_config=_augment_config(config), seed=config.seed, batch_size=config.store.batch_size,
        shard_size=config.store.shard_size, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    store = logit_store.LogitStore.open(directory, expect_teacher=teacher.identity())
    summary = logit_store.store_summary(store, source) | {"wall_time_s": time.perf_counter() - start}
    _write_json(os.path.join(directory, "summary.json"), summary)
    logging.info("Logit store %s: %d records, %.1f MB.", directory, summary.get("records", -1),
                 store.nbytes() / 1e6)
    return summary


def verify_logits(config: ml_collections.ConfigDict, workdir: str) -> dict:
    source = train_source(config)
    teacher = teacher_lib.load_teacher(config, _class_names(source), workdir)
    store = logit_store.LogitStore.open(store_dir(config, workdir), expect_teacher=teacher.identity(),
                                        expect_dataset=logit_store.dataset_identity(source))
    report = logit_store.verify(store, teacher.logits, source, num_samples=config.store.verify_samples,
                                seed=config.seed)
    _write_json(os.path.join(store_dir(config, workdir), "verify.json"), report)
    logging.info("Store verification: %s", report)
    return report


# --- Mode: ltosc (train one method) ----------------------------------------------------


def _method(config) -> dict:
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; available: {sorted(METHODS)}.")
    return METHODS[config.method]


def model_spec(config, num_classes: int, input_shape, class_names=None) -> deploy.SystemSpec:
    """The TOSC system of ``config.method`` as a rebuildable (and exportable) spec."""
    method = _method(config)
    name = config.model.student if method["encoder"] == "student" else method["encoder"]
    mean, std = data.NORMALIZATIONS[config.data.normalization]
    if len(mean) == 1 and input_shape[-1] > 1:
        mean, std = mean * input_shape[-1], std * input_shape[-1]
    system = dict(num_classes=num_classes, num_symbols=config.model.num_symbols,
                  channel_adaptive=config.model.channel_adaptive, cam_hidden=config.model.get("cam_hidden"),
                  decoder_hidden=config.model.decoder_hidden, input_mean=tuple(mean), input_std=tuple(std))
    return deploy.SystemSpec(kind="tosc", encoder=name, encoder_kwargs=dict(config.model.encoders.get(name, {})),
                             system_kwargs=system, input_shape=tuple(input_shape), class_names=class_names)


def build_objective(config, num_classes: int) -> tosc_steps.Objective:
    method = _method(config)
    return tosc_steps.Objective(
        loss=method["loss"], targets=method["targets"], num_classes=num_classes, beta=config.objective.beta,
        temperature=config.objective.temperature, top_k=config.store.top_k,
        target_temperature=config.store.temperature, label_smoothing=config.objective.label_smoothing,
        snr_range=tuple(config.objective.snr_range), channels=tuple(config.objective.channels),
        csi=config.channel.csi, equalizer=config.channel.equalizer,
        rate_estimator=config.objective.rate_estimator,
    )


def _num_steps(config, num_examples: int) -> int:
    if config.train.get("num_steps"):
        return int(config.train.num_steps)
    return max(1, math.ceil(config.train.num_epochs * num_examples / config.train.batch_size))


class _Setup:
    """Everything a TOSC run needs, built once from the config."""

    def __init__(self, config, workdir: str, *, mesh=None):
        self.config = config
        self.mesh = mesh or train.make_mesh(config.mesh.num_devices)
        for batch_size in (config.train.batch_size, config.eval.batch_size):
            mesh_lib.check_batch_size(batch_size, self.mesh)
        self.train_source = train_source(config)
        self.eval_source = _source(config, config.data.eval_split, config.data.get("num_eval_examples"))
        info = self.train_source.info
        self.num_classes = info.num_classes
        self.preprocess = _unit_preprocess(config)
        self.input_shape = self.preprocess.output_shape(info.image_shape)
        self.model_spec = model_spec(config, info.num_classes, self.input_shape, _class_names(self.train_source))
        self.model = self.model_spec.build()
        self.objective = build_objective(config, info.num_classes)
        self.num_steps = _num_steps(config, len(self.train_source))
        self.teacher = None
        self.store = None
        if self.objective.targets == "store":
            self.store = logit_store.LogitStore.open(store_dir(config, workdir), top_k=config.store.top_k)
        if self.objective.targets == "online":
            self.teacher = teacher_lib.load_teacher(config, _class_names(self.train_source), workdir)

    def train_iterator(self, num_steps: int | None = None, seed: int | None = None):
        num_steps = num_steps or self.num_steps
        seed = self.config.seed if seed is None else seed
        common = dict(batch_size=self.config.train.batch_size, num_steps=num_steps, seed=seed,
                      preprocess_config=self.preprocess, process_index=jax.process_index(),
                      process_count=jax.process_count(), worker_count=self.config.data.worker_count)
        if self.store is not None:
            return logit_store.distill_iterator(self.train_source, self.store, **common)
        return data.train_iterator(self.train_source, augment_config=_augment_config(self.config), **common)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        keys = ("image", "label")
        return keys + ("teacher_probs", "teacher_indices") if self.store is not None else keys

    def init_state(self, seed: int):
        tx = train.make_optimizer(self.config.train, self.num_steps)
        sample = jnp.zeros((1, *self.input_shape), jnp.float32)
        return jax.jit(
            functools.partial(train.create_train_state, self.model, tx, seed=seed, snr_db=0.0,
                              channel_fn=lambda x: x, train=False),
            out_shardings=train.replicated(self.mesh),
        )(sample)

    def train_step(self):
        """The jitted step as ``step(state, batch)``; the online teacher's weights are an argument."""
        if self.teacher is None:
            step = functools.partial(tosc_steps.train_step, objective=self.objective)
            return train.jit_train_step(lambda s, b: step(s, b), self.mesh)
        logits_fn, variables = teacher_logits_fn(self.teacher)
        variables = jax.device_put(variables, train.replicated(self.mesh))
        step = functools.partial(tosc_steps.train_step, objective=self.objective, teacher_logits_fn=logits_fn)
        jitted = jax.jit(step, in_shardings=(train.replicated(self.mesh), train.batch_sharding(self.mesh),
                                             train.replicated(self.mesh)),
                         out_shardings=(train.replicated(self.mesh), train.replicated(self.mesh)), donate_argnums=0)
        return lambda state, batch: jitted(state, batch, variables)

    def eval_batches(self):
        return lambda: data.eval_batches(self.eval_source, batch_size=self.config.eval.batch_size,
                                         preprocess_config=self.preprocess, process_index=jax.process_index(),
                                         process_count=jax.process_count())

    def curves(self, state) -> dict:
        step = functools.partial(tosc_steps.eval_step, csi=self.config.channel.csi,
                                 equalizer=self.config.channel.equalizer)
        return evaluation.accuracy_vs_snr(step, state, self.eval_batches(), snrs_db=self.config.eval.snrs_db,
                                          kinds=self.config.eval.channels, mesh=self.mesh, seed=self.config.eval.seed)


def train_method(config: ml_collections.ConfigDict, workdir: str, *, study_dir: str | None = None) -> dict:
    """Trains ``config.method`` into ``workdir`` (resumable) and evaluates it vs SNR.

    ``study_dir`` is where the teacher and the store live (default: ``workdir``).
    """
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    setup = _Setup(config, study_dir or workdir)
    state = setup.init_state(config.seed)
    logging.info("%s (%s): %s parameters (transmitter %s); %d steps of batch %d on %d examples.",
                 METHOD_LABELS.get(config.method, config.method), config.method,
                 f"{train.param_count(state.params):,}", f"{transmitter_param_count(state.params):,}",
                 setup.num_steps, config.train.batch_size, len(setup.train_source))
    loop_config = train.LoopConfig(num_steps=setup.num_steps, batch_size=config.train.batch_size,
                                   log_every=config.train.log_every, checkpoint_every=config.train.checkpoint_every,
                                   keep_checkpoints=config.train.keep_checkpoints)
    state, summary = train.fit(state=state, train_step=setup.train_step(), train_iter=setup.train_iterator(),
                               mesh=setup.mesh, workdir=workdir, config=loop_config, batch_keys=setup.batch_keys)
    curves = setup.curves(state)
    summary |= {
        "mode": "ltosc", "method": config.method, "seed": config.seed, "curves": curves,
        "num_params": train.param_count(state.params), "transmitter_params": transmitter_param_count(state.params),
        "num_symbols": config.model.num_symbols,
        "bandwidth_ratio": config.model.num_symbols / float(np.prod(setup.input_shape)),
        "num_train_examples": len(setup.train_source), "total_wall_time_s": time.perf_counter() - start,
    }
    _write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("%s seed %d: %s", config.method, config.seed, _curve_line(curves))
    return summary


def transmitter_param_count(params) -> int:
    return train.param_count({k: v for k, v in params.items() if k != "decoder"})


def _curve_line(curves: dict) -> str:
    return " | ".join(f"{kind}: " + " ".join(f"{s}dB={100 * a:.1f}" for s, a in curve.items())
                      for kind, curve in curves.items())


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``ltosc``: the teacher and the store live in ``config.study_dir`` (default: workdir)."""
    return train_method(config, workdir, study_dir=config.get("study_dir") or workdir)


# --- Mode: evaluate (teacher over the channel, collected curves) -----------------------


def teacher_curves(config, workdir: str) -> dict:
    """LA-TOSC: the (fine-tuned) teacher's features sent over the channel to its own head."""
    mesh = train.make_mesh(config.mesh.num_devices)
    eval_source = _source(config, config.data.eval_split, config.data.get("num_eval_examples"))
    teacher = teacher_lib.load_teacher(config, _class_names(eval_source), workdir)
    params = jax.device_put({"network": teacher.variables, "head": teacher.head_params}, train.replicated(mesh))

    def feature_fn(variables, images):
        return teacher.feature_fn(variables, teacher.preprocess(images))

    step = functools.partial(tosc_steps.teacher_over_channel_eval_step, feature_fn=feature_fn,
                             head_fn=teacher.head_fn, csi=config.channel.csi, equalizer=config.channel.equalizer)
    preprocess = _unit_preprocess(config)
    batches = lambda: data.eval_batches(eval_source, batch_size=config.eval.batch_size,  # noqa: E731
                                        preprocess_config=preprocess, process_index=jax.process_index(),
                                        process_count=jax.process_count())
    curves = evaluation.accuracy_vs_snr(step, params, batches, snrs_db=config.eval.snrs_db,
                                        kinds=config.eval.channels, mesh=mesh, seed=config.eval.seed)
    clean = evaluation.accuracy_vs_snr(step, params, batches, snrs_db=[0.0], kinds=["none"], mesh=mesh)
    feature_dim = jax.eval_shape(lambda: feature_fn(teacher.variables, jnp.zeros((1, *preprocess.output_shape(
        eval_source.info.image_shape))))).shape[-1]
    return {"curves": curves, "clean_accuracy": clean["none"]["0"], "teacher": teacher.identity(),
            "num_symbols": feature_dim // 2, "num_params": train.param_count(teacher.variables["params"])}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``evaluate``: LA-TOSC curves, then one plot and table over every finished run."""
    path = os.path.join(workdir, "runs", "la_tosc", "summary.json")
    if _read_json(path) is None:
        _write_json(path, teacher_curves(config, workdir))
    return write_report(config, workdir)


# --- Mode: ltosc_study -----------------------------------------------------------------


def method_config(config, method: str, seed: int, **data_overrides) -> ml_collections.ConfigDict:
    child = copy.deepcopy(config)
    with child.unlocked():
        child.mode = "ltosc"
        child.method = method
        child.seed = seed
        for key, value in data_overrides.items():
            child.data[key] = value
    return child


def _run_once(config, run_dir: str, study_dir: str) -> dict:
    done = _read_json(os.path.join(run_dir, "summary.json"))
    if done is not None:
        logging.info("Skipping %s: finished.", run_dir)
        return done
    return train_method(config, run_dir, study_dir=study_dir)


def _stage(name: str, index: int, total: int) -> None:
    logging.info("=== Stage %d/%d: %s ===", index, total, name)


def study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``ltosc_study``: the whole paper-B study in one resumable command."""
    os.makedirs(workdir, exist_ok=True)
    stages = 8
    if config.teacher.finetune.enabled:
        _stage("fine-tune the teacher", 1, stages)
        if _read_json(os.path.join(workdir, "teacher", "summary.json")) is None:
            teacher_lib.finetune(config, os.path.join(workdir, "teacher"))
    _stage("pre-store the teacher's top-K probabilities", 2, stages)
    if _read_json(os.path.join(store_dir(config, workdir), "summary.json")) is None:
        precompute_logits(config, workdir)
    if _read_json(os.path.join(store_dir(config, workdir), "verify.json")) is None:
        verify_logits(config, workdir)

    _stage("train every method and seed", 3, stages)
    for method in config.study.methods:
        for seed in config.study.seeds:
            _run_once(method_config(config, method, seed), os.path.join(workdir, "runs", method, f"seed{seed}"),
                      workdir)

    _stage("the teacher over the channel (LA-TOSC)", 4, stages)
    path = os.path.join(workdir, "runs", "la_tosc", "summary.json")
    if _read_json(path) is None:
        _write_json(path, teacher_curves(config, workdir))

    _stage("accuracy vs training-set size", 5, stages)
    full_size = len(_source(config, config.data.train_split))
    for size in config.study.train_sizes:
        for method in config.study.size_methods:
            run_dir = os.path.join(workdir, "runs", f"size{size}", method)
            if size >= full_size:  # The main run of the first seed is this point.
                main = _read_json(os.path.join(workdir, "runs", method, f"seed{config.study.seeds[0]}", "summary.json"))
                if main is not None:
                    _write_json(os.path.join(run_dir, "summary.json"), main)
                    continue
            child = method_config(config, method, config.study.seeds[0], num_train_examples=size)
            with child.unlocked():
                child.eval.snrs_db = tuple(config.study.size_snrs_db)
                child.train.num_steps = None
                child.train.num_epochs = config.train.num_epochs * config.study.size_epoch_scale.get(str(size), 1.0)
            _run_once(child, run_dir, workdir)

    _stage("FDM ablation: storage and time per epoch", 6, stages)
    path = os.path.join(workdir, "fdm_ablation.json")
    if _read_json(path) is None:
        _write_json(path, fdm_ablation(config, workdir))

    _stage("export the deployable transmitter and receiver", 7, stages)
    from experiments import export as export_lib  # It builds on this module.

    if _read_json(os.path.join(export_lib.export_directory(config, workdir), "latency.json")) is None:
        export_lib.export(config, workdir)

    _stage("report", 8, stages)
    return write_report(config, workdir)


def _time_steps(setup: _Setup, num_steps: int) -> float:
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
    source = _source(config, config.data.train_split)
    store = logit_store.LogitStore.open(store_dir(config, workdir))
    storage = logit_store.store_summary(store, source)
    timings = {}
    for method in ("l_tosc_kd", "l_tosc_kd_online"):
        setup = _Setup(method_config(config, method, config.study.seeds[0]), workdir)
        timings[method] = _time_steps(setup, config.study.ablation_steps)
    steps_per_epoch = math.ceil(len(source) / config.train.batch_size)
    store_summary = _read_json(os.path.join(store_dir(config, workdir), "summary.json")) or {}
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


# --- Report ----------------------------------------------------------------------------


def collect_curves(workdir: str, methods) -> dict:
    curves = {}
    for method in methods:
        per_seed = []
        method_dir = os.path.join(workdir, "runs", method)
        if not os.path.isdir(method_dir):
            continue
        for name in sorted(os.listdir(method_dir)):
            summary = _read_json(os.path.join(method_dir, name, "summary.json"))
            if summary:
                per_seed.append(summary["curves"])
        if per_seed:
            curves[METHOD_LABELS.get(method, method)] = evaluation.collect_seeds(per_seed)
    teacher = _read_json(os.path.join(workdir, "runs", "la_tosc", "summary.json"))
    if teacher:
        curves[METHOD_LABELS["la_tosc"]] = evaluation.collect_seeds([teacher["curves"]])
    return curves


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever runs have finished."""
    methods = list(config.study.methods)
    curves = collect_curves(workdir, methods)
    results: dict[str, Any] = {"curves": curves, "snrs_db": [evaluation.snr_key(s) for s in config.eval.snrs_db]}
    lines = ["# L-TOSC-KD study (paper B)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; "
             f"{config.model.num_symbols} complex channel uses per image; "
             f"train SNR U{tuple(config.objective.snr_range)} dB over {', '.join(config.objective.channels)}; "
             f"seeds {list(config.study.seeds)}. Accuracy in %, mean ± std over seeds.", ""]
    if curves:
        evaluation.plot_accuracy_vs_snr(curves, os.path.join(workdir, "accuracy_vs_snr.png"),
                                        title="Accuracy vs SNR (paper B)")
        for kind in config.eval.channels:
            lines += [f"## Accuracy vs SNR, {kind}", "",
                      evaluation.curves_table(curves, kind, [evaluation.snr_key(s) for s in config.eval.report_snrs_db]),
                      ""]
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    complexity = _complexity_rows(workdir, methods)
    if complexity:
        results["complexity"] = complexity
        lines += ["## Models", "", evaluation.markdown_table(
            ["method", "params", "transmitter params", "channel uses", "train examples/s"],
            [[r["method"], f"{r['params']:,}", f"{r['transmitter_params']:,}", r["num_symbols"],
              r["examples_per_second"]] for r in complexity]), ""]
    sizes = _size_sweep(config, workdir)
    if sizes:
        results["train_size"] = sizes
        _plot_size_sweep(sizes, os.path.join(workdir, "accuracy_vs_train_size.png"))
        lines += ["## Accuracy vs training-set size (paper B Fig. 3)", "",
                  evaluation.markdown_table(["method", "examples", *[f"{k} {s} dB" for k, s in sizes["points"]]],
                                            sizes["rows"]), "", "![size](accuracy_vs_train_size.png)", ""]
    ablation = _read_json(os.path.join(workdir, "fdm_ablation.json"))
    if ablation:
        results["fdm_ablation"] = ablation
        lines += _ablation_lines(ablation)
    verify = _read_json(os.path.join(store_dir(config, workdir), "verify.json"))
    if verify:
        results["store_verification"] = verify
        lines += ["## Store verification", "", "```", json.dumps(verify, indent=2), "```", ""]
    from experiments import export as export_lib  # It builds on this module.

    exported, export_lines = export_lib.report_section(config, workdir)
    if exported:
        results["export"] = exported
        lines += export_lines
    return finish_report(workdir, results, lines, _claims(curves), "Paper B")


def finish_report(workdir: str, results: dict, lines: list[str], claims: list[dict], paper: str) -> dict:
    """Appends the claims table, then writes ``results.json`` and ``report.md`` atomically."""
    if claims:
        results["claims"] = claims
        lines += [f"## {paper}'s claims on this data", "", evaluation.markdown_table(
            ["claim", "measured", "holds"], [[c["claim"], c["measured"], "yes" if c["holds"] else "no"]
                                              for c in claims]), ""]
    _write_json(os.path.join(workdir, "results.json"), results)
    if jax.process_index() == 0:
        files.atomic_write_text(os.path.join(workdir, "report.md"), "\n".join(lines))
    logging.info("Report: %s", os.path.join(workdir, "report.md"))
    return results


def _complexity_rows(workdir: str, methods) -> list[dict]:
    rows = []
    for method in methods:
        summary = _read_json(os.path.join(workdir, "runs", method, "seed0", "summary.json"))
        if summary is None:
            method_dir = os.path.join(workdir, "runs", method)
            names = sorted(os.listdir(method_dir)) if os.path.isdir(method_dir) else []
            summary = next((s for s in (_read_json(os.path.join(method_dir, n, "summary.json")) for n in names) if s),
                           None)
        if summary:
            rows.append({"method": METHOD_LABELS.get(method, method), "params": summary["num_params"],
                         "transmitter_params": summary["transmitter_params"], "num_symbols": summary["num_symbols"],
                         "examples_per_second": summary.get("examples_per_second")})
    teacher = _read_json(os.path.join(workdir, "runs", "la_tosc", "summary.json"))
    if teacher:
        rows.append({"method": METHOD_LABELS["la_tosc"], "params": teacher["num_params"],
                     "transmitter_params": teacher["num_params"], "num_symbols": teacher["num_symbols"],
                     "examples_per_second": None})
    return rows


def _size_sweep(config, workdir: str) -> dict | None:
    rows, series = [], {}
    points = [(kind, evaluation.snr_key(s)) for kind in config.eval.channels for s in config.study.size_snrs_db]
    for method in config.study.size_methods:
        for size in config.study.train_sizes:
            summary = _read_json(os.path.join(workdir, "runs", f"size{size}", method, "summary.json"))
            if not summary:
                continue
            values = [summary["curves"][k][s] for k, s in points]
            rows.append([METHOD_LABELS.get(method, method), size, *[f"{100 * v:.2f}" for v in values]])
            series.setdefault(METHOD_LABELS.get(method, method), {})[size] = dict(
                zip([f"{k}@{s}" for k, s in points], values))
    return {"points": points, "rows": rows, "series": series} if rows else None


def _plot_size_sweep(sizes: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"{k}@{s}" for k, s in sizes["points"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method, by_size in sizes["series"].items():
            xs = sorted(by_size)
            ax.plot(xs, [100 * by_size[x][key] for x in xs], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_title(key.replace("@", " at ") + " dB")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)
    plt.close(fig)


def _ablation_lines(ablation: dict) -> list[str]:
    storage, per_epoch = ablation["storage"], ablation["seconds_per_epoch"]
    rows = [[k.replace("_", " "), f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else v)]
            for k, v in storage.items()]
    return [
        "## FDM ablation (paper B Table II)", "",
        evaluation.markdown_table(["storage", "value"], rows), "",
        evaluation.markdown_table(
            ["distillation", "s/step", "s/epoch"],
            [["stored top-K (FDM)", ablation["seconds_per_step"]["l_tosc_kd"], per_epoch["l_tosc_kd"]],
             ["teacher in the loop", ablation["seconds_per_step"]["l_tosc_kd_online"],
              per_epoch["l_tosc_kd_online"]]]),
        "", f"FDM is {ablation['speedup']:.2f}× faster per epoch on {ablation['platform']} "
            f"(batch {ablation['batch_size']}, median of {ablation['steps_timed']} steps each, same run); "
            f"the one-off store costs {ablation.get('precompute_wall_time_s') or float('nan'):.0f} s.", "",
    ]


def _mean_at(curves, method, kind, snr):
    values = curves.get(method, {}).get(kind, {}).get(snr)
    return evaluation.mean_std(values)[0] if values else None


def _claims(curves: dict) -> list[dict]:
    """Paper B's qualitative claims, checked on the measured curves (no tuning)."""
    claims = []
    kd, nokd, teacher = METHOD_LABELS["l_tosc_kd"], METHOD_LABELS["l_tosc"], METHOD_LABELS["la_tosc"]
    for kind in ("awgn", "rayleigh"):
        a, b = _mean_at(curves, kd, kind, "0"), _mean_at(curves, nokd, kind, "0")
        if a is not None and b is not None:
            claims.append({"claim": f"KD beats no-KD at 0 dB ({kind})",
                           "measured": f"{100 * a:.2f} vs {100 * b:.2f}", "holds": bool(a > b)})
        for snr in ("-4", "-2"):
            a, t = _mean_at(curves, kd, kind, snr), _mean_at(curves, teacher, kind, snr)
            if a is not None and t is not None:
                claims.append({"claim": f"KD student beats the teacher over the channel at {snr} dB ({kind})",
                               "measured": f"{100 * a:.2f} vs {100 * t:.2f}", "holds": bool(a > t)})
    return claims
