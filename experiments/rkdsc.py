"""Paper A end to end (SPEC §4): teacher → KDL-DARTS student → two-stage robust distillation
→ evaluation → report.

Modes (``config.mode``):
- ``rkd_stage1``: the student encoder (a KDL-DARTS genotype, or any encoder of
  ``rkdsc_jax.models.tosc.ENCODERS``) learns the teacher's features through a projection and
  its logits, without a channel.
- ``rkd_stage2``: the CAT codec and the channel are inserted; codec and encoder train from
  stage 1's weights under a random SNR, channel and symbol budget per example.
- ``rkdsc``: the whole pipeline in one workdir, every stage skipped when its output
  exists (an interrupted pipeline resumes where it stopped; a stage killed half-way
  resumes from its checkpoint)::

      teacher/                 the fine-tuned teacher (config.teacher.finetune.enabled)
      search/                  KDL-DARTS search → genotype.json (config.search.enabled)
      runs/<method>/seed<s>/   stage1, rkdsc (stage 2), no_kd, cnn: checkpoints, metrics, summary.json
      runs/teacher/            the teacher's features over the channel
      latency.json, results.json, report.md, accuracy_vs_snr.png, accuracy_vs_bandwidth.png
      export/rkdsc_seed<s>/    the deployable transmitter and receiver (``rkdsc_jax.deploy``)

The single-stage modes read the teacher and the genotype from ``config.pipeline_dir``
(default: the workdir).
"""

from __future__ import annotations

import copy
import dataclasses
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

from experiments import export as export_lib
from experiments import ltosc
from experiments import nas as nas_experiment
from experiments import teacher as teacher_lib
from rkdsc_jax import data, deploy, evaluation, train
from rkdsc_jax.distill import rkd_steps, tosc_steps
from rkdsc_jax.models import rkd, tosc
from rkdsc_jax.nas import genotypes
from rkdsc_jax.train import mesh as mesh_lib

METHOD_LABELS = {
    "rkdsc": "RKD-SC", "stage1": "stage-1 student (no codec)", "no_kd": "same student, no KD",
    "cnn": "CNN SemCom", "teacher": "teacher over the channel",
}
TRAINED_METHODS = ("stage1", "rkdsc", "no_kd", "cnn")

_source = teacher_lib.source_from_config
_read_json = ltosc._read_json
_write_json = ltosc._write_json


def _class_names(source) -> tuple[str, ...]:
    return source.info.class_names or tuple(str(i) for i in range(source.info.num_classes))


def _pipeline_dir(config, workdir: str) -> str:
    return config.get("pipeline_dir") or workdir


def _with_teacher_dir(config, pipeline_dir: str):
    """The teacher is read from the pipeline's ``teacher/`` unless the config names a directory."""
    config = copy.deepcopy(config)
    with config.unlocked():
        if not config.teacher.get("finetuned_dir"):
            config.teacher.finetuned_dir = teacher_lib.finetuned_dir(config, pipeline_dir)
    return config


def resolve_genotype(config, pipeline_dir: str) -> genotypes.Genotype:
    """``config.student.genotype``: a JSON path, a search workdir, or None for the pipeline's search."""
    spec = config.student.get("genotype") or os.path.join(pipeline_dir, "search")
    return nas_experiment.load_genotype(spec)


def _steps(stage, num_examples: int) -> int:
    if stage.get("num_steps"):
        return int(stage.num_steps)
    return max(1, math.ceil(stage.num_epochs * num_examples / stage.batch_size))


def objective_from_config(config, stage: str) -> rkd_steps.RKDObjective:
    o, s2 = config.objective, config.stage2
    common = dict(feature_loss=o.feature_loss, feature_weight=o.feature_weight, kd_weight=o.kd_weight,
                  ce_weight=o.ce_weight, temperature=o.temperature)
    if stage == "stage1":
        return rkd_steps.RKDObjective(**common)
    return rkd_steps.RKDObjective(**common, snr_range=tuple(s2.snr_range), channels=tuple(s2.channels),
                                  budgets=tuple(config.codec.budgets) or None, csi=config.channel.csi,
                                  equalizer=config.channel.equalizer, freeze_encoder=s2.freeze_encoder)


class _Setup:
    """Data, teacher and models of one pipeline, built once from the config."""

    def __init__(self, config, pipeline_dir: str):
        self.config = _with_teacher_dir(config, pipeline_dir)
        self.pipeline_dir = pipeline_dir
        self.mesh = train.make_mesh(config.mesh.num_devices)
        for batch_size in (config.stage1.batch_size, config.stage2.batch_size, config.eval.batch_size):
            mesh_lib.check_batch_size(batch_size, self.mesh)
        self.train_source = ltosc.train_source(config)
        self.eval_source = _source(config, config.data.eval_split, config.data.get("num_eval_examples"))
        info = self.train_source.info
        self.num_classes = info.num_classes
        self.preprocess = ltosc._unit_preprocess(config)
        self.input_shape = self.preprocess.output_shape(info.image_shape)
        self.teacher = teacher_lib.load_teacher(self.config, _class_names(self.train_source), pipeline_dir)
        if self.teacher.num_classes != self.num_classes:
            raise ValueError(
                f"The teacher {self.teacher.name!r} predicts {self.teacher.num_classes} classes but {info.name} has "
                f"{self.num_classes}: fine-tune it on this dataset (teacher.finetune.enabled) or use a zero-shot "
                "CLIP teacher with this dataset's class names.")

    # --- Models -----------------------------------------------------------------------

    def _normalisation(self):
        mean, std = data.NORMALIZATIONS[self.config.data.normalization]
        channels = self.input_shape[-1]
        if len(mean) == 1 and channels > 1:
            mean, std = mean * channels, std * channels
        return tuple(mean), tuple(std)

    @functools.cached_property
    def teacher_dim(self) -> int:
        teacher = self.teacher
        sample = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return int(jax.eval_shape(lambda x: teacher.feature_fn(teacher.variables, teacher.preprocess(x)),
                                  sample).shape[-1])

    @functools.cached_property
    def system_spec(self) -> deploy.SystemSpec:
        """The student system (genotype encoder + CAT codec + classifier) as a rebuildable spec."""
        student = self.config.student
        kwargs = dict(student.encoders.get(student.encoder, {}))
        if student.encoder == "genotype":
            kwargs["genotype"] = resolve_genotype(self.config, self.pipeline_dir)
        encoder = tosc.make_encoder(student.encoder, **kwargs)
        sample = jnp.zeros((1, *self.input_shape), jnp.float32)
        shapes = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), sample, train=False))
        features = jax.eval_shape(lambda v: encoder.apply(v, sample, train=False), shapes)
        if len(features.shape) not in (3, 4):
            raise ValueError(f"The student encoder must give a feature map or tokens, got shape {features.shape}.")
        c = self.config.codec
        mean, std = self._normalisation()
        system = dict(num_classes=self.num_classes, teacher_dim=self.teacher_dim,
                      num_tokens=int(np.prod(features.shape[1:-1])), cat_width=c.width, cat_depth=c.depth,
                      cat_heads=c.heads, symbols_per_token=c.symbols_per_token, input_mean=mean, input_std=std)
        return deploy.SystemSpec(kind="rkdsc", encoder=student.encoder, encoder_kwargs=kwargs, system_kwargs=system,
                                 input_shape=self.input_shape, class_names=_class_names(self.train_source))

    @functools.cached_property
    def system(self) -> rkd.RKDSystem:
        return self.system_spec.build()

    def cnn_spec(self, num_symbols: int) -> deploy.SystemSpec:
        mean, std = self._normalisation()
        b = self.config.baselines
        system = dict(num_classes=self.num_classes, num_symbols=num_symbols, channel_adaptive=False,
                      decoder_hidden=b.cnn_decoder_hidden, input_mean=mean, input_std=std)
        return deploy.SystemSpec(kind="tosc", encoder="cnn", encoder_kwargs=dict(b.cnn), system_kwargs=system,
                                 input_shape=self.input_shape, class_names=_class_names(self.train_source))

    def init_state(self, model, tx, seed: int, **init_kwargs):
        sample = jnp.zeros((1, *self.input_shape), jnp.float32)
        return jax.jit(functools.partial(train.create_train_state, model, tx, seed=seed, **init_kwargs),
                       out_shardings=train.replicated(self.mesh))(sample)

    # --- Data -------------------------------------------------------------------------

    def train_iterator(self, stage, num_steps: int, seed: int):
        return data.train_iterator(
            self.train_source, batch_size=stage.batch_size, num_steps=num_steps, seed=seed,
            augment_config=data.AugmentConfig(self.config.data.augment, self.config.data.crop_padding),
            preprocess_config=self.preprocess, process_index=jax.process_index(),
            process_count=jax.process_count(), worker_count=self.config.data.worker_count)

    def eval_batches(self):
        return lambda: data.eval_batches(self.eval_source, batch_size=self.config.eval.batch_size,
                                         preprocess_config=self.preprocess, process_index=jax.process_index(),
                                         process_count=jax.process_count())

    # --- Steps --------------------------------------------------------------------------

    def teacher_arguments(self):
        """(pure teacher fn, its replicated variables) for the jitted steps."""
        fn, variables = rkd_steps.teacher_features_and_logits(self.teacher)
        return fn, jax.device_put(variables, train.replicated(self.mesh))

    def jit_with_teacher(self, step, variables):
        replicated = train.replicated(self.mesh)
        jitted = jax.jit(step, in_shardings=(replicated, train.batch_sharding(self.mesh), replicated),
                         out_shardings=(replicated, replicated), donate_argnums=0)
        return lambda state, batch: jitted(state, batch, variables)

    def curves(self, step, params, *, snrs_db=None, kinds=None) -> dict:
        return evaluation.accuracy_vs_snr(step, params, self.eval_batches(),
                                          snrs_db=self.config.eval.snrs_db if snrs_db is None else snrs_db,
                                          kinds=self.config.eval.channels if kinds is None else kinds,
                                          mesh=self.mesh, seed=self.config.eval.seed)


def _loop_config(stage, num_steps: int) -> train.LoopConfig:
    return train.LoopConfig(num_steps=num_steps, batch_size=stage.batch_size, log_every=stage.log_every,
                            checkpoint_every=stage.checkpoint_every, keep_checkpoints=stage.keep_checkpoints)


def _start(config, workdir: str, what: str) -> float:
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    logging.info("%s → %s", what, workdir)
    return time.perf_counter()


def system_param_counts(params) -> dict[str, int]:
    """Transmitter (encoder + CAT encoder) and receiver (CAT decoder + classifier); the
    stage-1 projection is training-only."""
    count = lambda *names: sum(train.param_count(params[n]) for n in names if n in params)  # noqa: E731
    counts = {"encoder": count("encoder"), "cat_encoder": count("cat_encoder"),
              "cat_decoder": count("cat_decoder"), "classifier": count("classifier"),
              "projection": count("projection")}
    counts["transmitter"] = counts["encoder"] + counts["cat_encoder"]
    counts["receiver"] = counts["cat_decoder"] + counts["classifier"]
    counts["deployed"] = counts["transmitter"] + counts["receiver"]
    return counts


def _stage1_over_channel_step(state, batch, snr_db, key, *, kind, csi, equalizer):
    """The stage-1 student's projected features sent uncoded (one real per symbol half)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def feature_fn(v, images):
        return state.apply_fn(v, images, train=False, method="stage1")[1]

    def head_fn(v, features):
        return state.apply_fn(v, features, method=lambda module, z: module.classifier(z))

    return tosc_steps.teacher_over_channel_eval_step({"network": variables, "head": variables}, batch, snr_db, key,
                                                     feature_fn=feature_fn, head_fn=head_fn, kind=kind, csi=csi,
                                                     equalizer=equalizer)


# --- Stage 1 -----------------------------------------------------------------------------


def _stage1_tx(setup: _Setup):
    stage = setup.config.stage1
    num_steps = _steps(stage, len(setup.train_source))
    return train.make_optimizer(stage, num_steps), num_steps


def train_stage1(config, workdir: str, *, pipeline_dir: str | None = None, setup: _Setup | None = None) -> dict:
    """Stage 1 into ``workdir`` (resumable); summary with clean and over-the-channel accuracy."""
    start = _start(config, workdir, f"RKD stage 1 (seed {config.seed})")
    setup = setup or _Setup(config, pipeline_dir or workdir)
    tx, num_steps = _stage1_tx(setup)
    state = setup.init_state(setup.system, tx, config.seed, method="init_all")
    fn, variables = setup.teacher_arguments()
    step = functools.partial(rkd_steps.stage1_step, objective=objective_from_config(config, "stage1"), teacher_fn=fn)
    logging.info("Student: %s parameters (encoder %s), %d tokens → teacher width %d; %d steps of batch %d.",
                 f"{train.param_count(state.params):,}", f"{train.param_count(state.params['encoder']):,}",
                 setup.system.num_tokens, setup.teacher_dim, num_steps, config.stage1.batch_size)
    state, summary = train.fit(state=state, train_step=setup.jit_with_teacher(step, variables),
                               train_iter=setup.train_iterator(config.stage1, num_steps, config.seed),
                               mesh=setup.mesh, workdir=workdir, config=_loop_config(config.stage1, num_steps))
    clean = train.evaluate(train.jit_eval_step(rkd_steps.stage1_eval_step, setup.mesh), state,
                           setup.eval_batches()(), setup.mesh)
    curves = setup.curves(functools.partial(_stage1_over_channel_step, csi=config.channel.csi,
                                            equalizer=config.channel.equalizer), state)
    summary |= {"mode": "rkd_stage1", "seed": config.seed, "clean_accuracy": clean["accuracy"], "curves": curves,
                "params": system_param_counts(state.params), "num_symbols": setup.teacher_dim // 2,
                "total_wall_time_s": time.perf_counter() - start}
    _write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("Stage 1 seed %d: clean accuracy %.4f | %s", config.seed, clean["accuracy"],
                 ltosc._curve_line(curves))
    return summary


def load_stage1_state(setup: _Setup, stage1_dir: str, seed: int):
    tx, _ = _stage1_tx(setup)
    template = setup.init_state(setup.system, tx, seed, method="init_all")
    checkpointer = train.Checkpointer(os.path.join(stage1_dir, "checkpoints"))
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"No stage-1 checkpoint in {stage1_dir}/checkpoints; run mode rkd_stage1 first "
                                "or point --config.stage2.init_from at a finished stage-1 workdir.")
    state = checkpointer.restore(template)
    checkpointer.close()
    return state


def rkd_stage1(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkd_stage1``; the teacher and genotype come from ``config.pipeline_dir``."""
    return train_stage1(config, workdir, pipeline_dir=_pipeline_dir(config, workdir))


# --- Stage 2 (and the no-KD student of the same network) ---------------------------------


def train_stage2(config, workdir: str, *, pipeline_dir: str | None = None, stage1_dir: str | None = None,
                 distill: bool = True, setup: _Setup | None = None) -> dict:
    """Stage 2 from stage 1's weights (``distill``) or, without a teacher, from scratch on the labels."""
    label = "RKD stage 2" if distill else "no-KD student"
    start = _start(config, workdir, f"{label} (seed {config.seed})")
    setup = setup or _Setup(config, pipeline_dir or workdir)
    stage = config.stage2
    num_steps = _steps(stage, len(setup.train_source))
    tx = train.make_optimizer(stage, num_steps)
    state = setup.init_state(setup.system, tx, config.seed, method="init_all")
    objective = objective_from_config(config, "stage2")
    if distill:
        stage1 = load_stage1_state(setup, stage1_dir, config.seed)
        state = state.replace(params=stage1.params, batch_stats=stage1.batch_stats)
        fn, variables = setup.teacher_arguments()
    else:
        objective = dataclasses.replace(objective, freeze_encoder=False)
        fn, variables = None, jax.device_put({}, train.replicated(setup.mesh))
    step = functools.partial(rkd_steps.stage2_step, objective=objective, teacher_fn=fn,
                             max_symbols=setup.system.max_symbols)
    logging.info("%s: %s parameters, up to %d symbols per image (budgets %s); %d steps of batch %d.", label,
                 f"{train.param_count(state.params):,}", setup.system.max_symbols, objective.budgets, num_steps,
                 stage.batch_size)
    state, summary = train.fit(state=state, train_step=setup.jit_with_teacher(step, variables),
                               train_iter=setup.train_iterator(stage, num_steps, config.seed), mesh=setup.mesh,
                               workdir=workdir, config=_loop_config(stage, num_steps))
    eval_step = functools.partial(rkd_steps.stage2_eval_step, csi=config.channel.csi,
                                  equalizer=config.channel.equalizer)
    curves = setup.curves(eval_step, state)
    bandwidth = {}
    if distill:
        for budget in _budgets(config, setup.system.max_symbols):
            bandwidth[str(budget)] = setup.curves(functools.partial(eval_step, num_symbols=budget), state,
                                                  snrs_db=config.eval.bandwidth_snrs_db)
    summary |= {"mode": "rkd_stage2" if distill else "no_kd", "seed": config.seed, "curves": curves,
                "bandwidth": bandwidth, "max_symbols": setup.system.max_symbols,
                "input_size": int(np.prod(setup.input_shape)), "params": system_param_counts(state.params),
                "total_wall_time_s": time.perf_counter() - start}
    _write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("%s seed %d: %s", label, config.seed, ltosc._curve_line(curves))
    return summary


def _budgets(config, max_symbols: int) -> list[int]:
    return sorted({int(b) for b in (config.codec.budgets or ())} | {max_symbols})


def rkd_stage2(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkd_stage2``: from ``config.stage2.init_from`` (default ``<pipeline_dir>/runs/stage1/seed<s>``)."""
    pipeline_dir = _pipeline_dir(config, workdir)
    stage1_dir = config.stage2.get("init_from") or _run_dir(pipeline_dir, "stage1", config.seed)
    return train_stage2(config, workdir, pipeline_dir=pipeline_dir, stage1_dir=stage1_dir)


# --- Baseline: a plain CNN semantic-communication system ---------------------------------


def train_cnn_baseline(config, workdir: str, *, setup: _Setup, num_symbols: int) -> dict:
    """CNN → dense JSCC head → channel → dense decoder → classifier, trained on the labels
    under stage 2's SNR and channel mix, with RKD-SC's largest symbol budget."""
    start = _start(config, workdir, f"CNN SemCom baseline (seed {config.seed})")
    stage = config.stage2
    num_steps = _steps(stage, len(setup.train_source))
    model = setup.cnn_spec(num_symbols).build()
    state = setup.init_state(model, train.make_optimizer(stage, num_steps), config.seed, snr_db=0.0,
                             channel_fn=lambda x: x, train=False)
    objective = tosc_steps.Objective(loss="ce", targets="labels", num_classes=setup.num_classes,
                                     snr_range=tuple(stage.snr_range), channels=tuple(stage.channels),
                                     csi=config.channel.csi, equalizer=config.channel.equalizer)
    step = train.jit_train_step(functools.partial(tosc_steps.train_step, objective=objective), setup.mesh)
    state, summary = train.fit(state=state, train_step=step,
                               train_iter=setup.train_iterator(stage, num_steps, config.seed), mesh=setup.mesh,
                               workdir=workdir, config=_loop_config(stage, num_steps))
    curves = setup.curves(functools.partial(tosc_steps.eval_step, csi=config.channel.csi,
                                            equalizer=config.channel.equalizer), state)
    summary |= {"mode": "cnn_baseline", "seed": config.seed, "curves": curves, "num_symbols": num_symbols,
                "params": {"deployed": train.param_count(state.params),
                           "transmitter": ltosc.transmitter_param_count(state.params)},
                "total_wall_time_s": time.perf_counter() - start}
    _write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("CNN baseline seed %d: %s", config.seed, ltosc._curve_line(curves))
    return summary


# --- Teacher over the channel, latency -----------------------------------------------------


def teacher_curves(config, pipeline_dir: str) -> dict:
    """The teacher's features over the channel to its own head (ltosc's LA-TOSC), clean accuracy."""
    return ltosc.teacher_curves(_with_teacher_dir(config, pipeline_dir), pipeline_dir)


def encoder_latency(config, setup: _Setup) -> dict:
    """Milliseconds per image at batch 1 on this machine, same process: the student's
    transmitter (encoder + CAT encoder), the student encoder alone, the teacher's encoder.
    Timing does not depend on the weights' values, so fresh ones are used."""
    stage = config.stage2
    state = setup.init_state(setup.system, train.make_optimizer(stage, 1), config.seed, method="init_all")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    image = jnp.asarray(next(iter(setup.eval_batches()()))["image"][:1])
    device = jax.devices()[0]
    variables, image = jax.device_put((variables, image), device)
    teacher_variables = jax.device_put(setup.teacher.variables, device)
    model = setup.system
    transmit = jax.jit(lambda v, x: model.apply(v, x, 10.0, 0, None, method="transmit"))
    tokens = jax.jit(lambda v, x: model.apply(v, x, method="tokens"))
    teacher = jax.jit(lambda v, x: setup.teacher.feature_fn(v, setup.teacher.preprocess(x)))
    repeats = config.eval.latency_repeats
    result = {"student_transmitter_ms": deploy.median_ms(transmit, variables, image, repeats=repeats),
              "student_encoder_ms": deploy.median_ms(tokens, variables, image, repeats=repeats),
              "teacher_encoder_ms": deploy.median_ms(teacher, teacher_variables, image, repeats=repeats),
              "batch_size": 1, "repeats": repeats, "platform": device.platform,
              "device": str(device.device_kind)}
    result["teacher_over_student_transmitter"] = result["teacher_encoder_ms"] / result["student_transmitter_ms"]
    return result


# --- The pipeline ------------------------------------------------------------------------


def _run_dir(pipeline_dir: str, method: str, seed: int) -> str:
    return os.path.join(pipeline_dir, "runs", method, f"seed{seed}")


def seed_config(config, seed: int) -> ml_collections.ConfigDict:
    child = copy.deepcopy(config)
    with child.unlocked():
        child.seed = seed
    return child


def search_config(config, pipeline_dir: str) -> ml_collections.ConfigDict:
    """The ``experiments.nas`` config of the pipeline's search: its teacher, data and student size."""
    s = config.search
    child = ml_collections.ConfigDict()
    child.mode = "search"
    child.seed = config.seed
    child.data = copy.deepcopy(config.data)
    child.data.num_train_examples = s.num_train_examples
    child.data.augment = s.augment
    child.search = copy.deepcopy(s)
    child.teacher = copy.deepcopy(_with_teacher_dir(config, pipeline_dir).teacher)
    if not s.lam:
        child.teacher.kind = "none"
    genotype_net = config.student.encoders.get("genotype", {})
    child.retrain = ml_collections.ConfigDict({"channels": genotype_net.get("channels", 16),
                                               "layers": genotype_net.get("layers", 5)})
    child.train = ml_collections.ConfigDict({"log_every": s.log_every, "checkpoint_every": s.checkpoint_every,
                                             "keep_checkpoints": 2, "eval_batch_size": config.eval.batch_size})
    child.mesh = copy.deepcopy(config.mesh)
    return child


def _stage(name: str, index: int, total: int, started: float) -> None:
    logging.info("=== Stage %d/%d: %s (pipeline time %.0f s) ===", index, total, name, time.perf_counter() - started)


def pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``rkdsc``: every stage of paper A in order, resumable; then the report."""
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    total = 8
    if config.teacher.finetune.enabled:
        _stage("fine-tune the teacher", 1, total, started)
        if _read_json(os.path.join(workdir, "teacher", "summary.json")) is None:
            teacher_lib.finetune(config, os.path.join(workdir, "teacher"))

    uses_search = config.student.encoder == "genotype" and not config.student.get("genotype")
    if uses_search:
        _stage("KDL-DARTS architecture search", 2, total, started)
        if not config.search.enabled:
            raise ValueError("The student is the pipeline's searched genotype but search.enabled is False; set "
                             "--config.student.genotype to a genotype JSON (or a search workdir), or enable it.")
        if _read_json(os.path.join(workdir, "search", "summary.json")) is None:
            nas_experiment.search(search_config(config, workdir), os.path.join(workdir, "search"))

    _stage("the teacher over the channel", 3, total, started)
    path = os.path.join(workdir, "runs", "teacher", "summary.json")
    if _read_json(path) is None:
        _write_json(path, teacher_curves(config, workdir))

    setup = None
    methods = list(config.pipeline.methods)
    for seed in config.pipeline.seeds:
        child = seed_config(config, seed)
        todo = [m for m in methods if _read_json(os.path.join(_run_dir(workdir, m, seed), "summary.json")) is None]
        if not todo:
            continue
        setup = setup or _Setup(config, workdir)
        _stage(f"seed {seed}: stage 1, stage 2 and the baselines ({', '.join(todo)})", 4, total, started)
        if "stage1" in todo or ("rkdsc" in todo and "stage1" not in methods):
            train_stage1(child, _run_dir(workdir, "stage1", seed), setup=setup)
        if "rkdsc" in todo:
            train_stage2(child, _run_dir(workdir, "rkdsc", seed), stage1_dir=_run_dir(workdir, "stage1", seed),
                         setup=setup)
        if "no_kd" in todo:
            train_stage2(child, _run_dir(workdir, "no_kd", seed), distill=False, setup=setup)
        if "cnn" in todo:
            train_cnn_baseline(child, _run_dir(workdir, "cnn", seed), setup=setup,
                               num_symbols=setup.system.max_symbols)

    _stage("encoder latency (batch 1, this machine)", 5, total, started)
    path = os.path.join(workdir, "latency.json")
    if _read_json(path) is None:
        setup = setup or _Setup(config, workdir)
        _write_json(path, encoder_latency(config, setup))

    _stage("export the deployable transmitter and receiver", 6, total, started)
    if _read_json(os.path.join(export_lib.export_directory(config, workdir), "latency.json")) is None:
        export_lib.export(config, workdir)

    _stage("report", 7, total, started)
    results = write_report(config, workdir)
    _stage(f"done: {os.path.join(workdir, 'report.md')}", 8, total, started)
    return results


# --- Report ------------------------------------------------------------------------------


def _per_seed(workdir: str, method: str) -> list[dict]:
    method_dir = os.path.join(workdir, "runs", method)
    names = sorted(os.listdir(method_dir)) if os.path.isdir(method_dir) else []
    return [s for s in (_read_json(os.path.join(method_dir, n, "summary.json")) for n in names) if s]


def collect_curves(workdir: str, methods) -> dict:
    curves = {}
    for method in ("rkdsc", *[m for m in methods if m != "rkdsc"], "teacher"):
        runs = _per_seed(workdir, method) if method != "teacher" else []
        if method == "teacher":
            teacher = _read_json(os.path.join(workdir, "runs", "teacher", "summary.json"))
            runs = [teacher] if teacher else []
        if runs:
            curves[METHOD_LABELS[method]] = evaluation.collect_seeds([r["curves"] for r in runs])
    return curves


def _bandwidth(workdir: str) -> dict | None:
    """{kind@snr: {budget: [acc per seed]}} of the RKD-SC runs, and the ratios."""
    runs = [r for r in _per_seed(workdir, "rkdsc") if r.get("bandwidth")]
    if not runs:
        return None
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for budget, curves in run["bandwidth"].items():
            for kind, curve in curves.items():
                for snr, acc in curve.items():
                    table.setdefault(f"{kind}@{snr}", {}).setdefault(budget, []).append(acc)
    input_size = runs[0]["input_size"]
    ratios = {b: int(b) / input_size for b in runs[0]["bandwidth"]}
    return {"accuracy": table, "bandwidth_ratio": ratios, "input_size": input_size}


def _plot_bandwidth(bandwidth: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for point, by_budget in bandwidth["accuracy"].items():
        budgets = sorted(by_budget, key=int)
        stats = np.array([evaluation.mean_std(by_budget[b]) for b in budgets]) * 100
        x = [bandwidth["bandwidth_ratio"][b] for b in budgets]
        kind, snr = point.split("@")
        line, = ax.plot(x, stats[:, 0], marker="o", label=f"{kind} {snr} dB")
        ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("bandwidth ratio (complex symbols / input values)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("One variable-length CAT model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)
    plt.close(fig)


def _symbols_per_image(workdir: str) -> dict[str, int]:
    """What each method sends: RKD-SC its largest budget, the others their feature width."""
    symbols = {}
    for method, key in (("rkdsc", "max_symbols"), ("no_kd", "max_symbols"), ("stage1", "num_symbols"),
                        ("cnn", "num_symbols")):
        runs = _per_seed(workdir, method)
        if runs and key in runs[0]:
            symbols[method] = runs[0][key]
    teacher = _read_json(os.path.join(workdir, "runs", "teacher", "summary.json"))
    if teacher and "num_symbols" in teacher:
        symbols["teacher"] = teacher["num_symbols"]
    return symbols


def _mean(curves, method: str, kind: str, snr: str) -> float | None:
    values = curves.get(METHOD_LABELS[method], {}).get(kind, {}).get(snr)
    return evaluation.mean_std(values)[0] if values else None


def paper_claims(curves: dict, complexity: dict | None, latency: dict | None, teacher_clean: float | None,
                 snrs: list[str]) -> list[dict]:
    """Paper A's claims (SPEC §4.4) next to what this run measured; nothing is tuned to them."""
    claims = []
    if complexity:
        reduction = 1.0 - complexity["student_deployed"] / complexity["teacher"]
        claims.append({"claim": "parameters cut by 94.06 % (student transmitter + receiver vs teacher)",
                       "measured": f"{100 * reduction:.2f} %", "holds": bool(reduction >= 0.9406)})
    high, low = snrs[-1], snrs[0]
    for kind in ("awgn", "rayleigh"):
        student, teacher = _mean(curves, "rkdsc", kind, high), _mean(curves, "teacher", kind, high)
        if student is not None and teacher is not None:
            claims.append({"claim": f"keeps 95.86 % of the teacher's accuracy at {high} dB ({kind}, teacher "
                                    "over the same channel)",
                           "measured": f"{100 * student / teacher:.2f} % ({100 * student:.2f} vs {100 * teacher:.2f})",
                           "holds": bool(student / teacher >= 0.9586)})
        if student is not None and teacher_clean and kind == "awgn":
            claims.append({"claim": f"… of the teacher's clean accuracy at {high} dB ({kind})",
                           "measured": f"{100 * student / teacher_clean:.2f} %",
                           "holds": bool(student / teacher_clean >= 0.9586)})
        student, teacher = _mean(curves, "rkdsc", kind, low), _mean(curves, "teacher", kind, low)
        if student is not None and teacher is not None:
            relative = student / teacher - 1.0 if teacher > 0 else float("inf")
            claims.append({"claim": f"more than 83.12 % higher than the teacher at {low} dB ({kind})",
                           "measured": f"{100 * relative:+.1f} % relative, {100 * (student - teacher):+.2f} points "
                                       f"({100 * student:.2f} vs {100 * teacher:.2f})",
                           "holds": bool(relative > 0.8312)})
        for snr in ("0", high):
            kd, nokd = _mean(curves, "rkdsc", kind, snr), _mean(curves, "no_kd", kind, snr)
            if kd is not None and nokd is not None:
                claims.append({"claim": f"distillation beats the same student trained without KD at {snr} dB ({kind})",
                               "measured": f"{100 * kd:.2f} vs {100 * nokd:.2f}", "holds": bool(kd > nokd)})
    if latency:
        ratio = latency["teacher_over_student_transmitter"]
        claims.append({"claim": "encoder ~10× faster than the teacher's (1058.86 / 106.21 ms on an IoT device)",
                       "measured": f"{ratio:.2f}× ({latency['teacher_encoder_ms']:.2f} vs "
                                   f"{latency['student_transmitter_ms']:.2f} ms, {latency['platform']}, batch 1)",
                       "holds": bool(ratio >= 9.97)})
    return claims


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever stages have finished."""
    methods = list(config.pipeline.methods)
    curves = collect_curves(workdir, methods)
    snrs = [evaluation.snr_key(s) for s in config.eval.snrs_db]
    results: dict[str, Any] = {"curves": curves, "snrs_db": snrs, "seeds": list(config.pipeline.seeds)}
    lines = ["# RKD-SC pipeline (paper A)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; student `{config.student.encoder}`; "
             f"stage-2 SNR U{tuple(config.stage2.snr_range)} dB over {', '.join(config.stage2.channels)}; "
             f"seeds {list(config.pipeline.seeds)}. Accuracy in %, mean ± std over seeds.", ""]
    teacher = _read_json(os.path.join(workdir, "runs", "teacher", "summary.json"))
    finetuned = _read_json(os.path.join(workdir, "teacher", "summary.json"))
    if finetuned:
        results["teacher_finetune"] = finetuned
        lines += [f"Teacher `{finetuned['teacher']['name']}` fine-tuned for {finetuned['steps']} steps: "
                  f"{100 * finetuned['eval']['accuracy']:.2f} % clean test accuracy.", ""]
    search = _read_json(os.path.join(workdir, "search", "summary.json"))
    if search:
        results["search"] = {k: search[k] for k in ("genotype", "op_histogram", "derived_params", "derived_params_at",
                                                     "lam", "mu", "order", "steps", "total_wall_time_s")}
        lines += ["## KDL-DARTS search", "",
                  f"{search['steps']} {search['order']}-order steps, λ = {search['lam']}, μ = {search['mu']}, "
                  f"{search['total_wall_time_s']:.0f} s. Derived network at {search['derived_params_at']}: "
                  f"{search['derived_params']:,} parameters.", "",
                  *[f"- {cell} cell: " + ", ".join(f"`{op}`←{source}" for op, source in search["genotype"][cell])
                    for cell in ("normal", "reduce")], "",
                  evaluation.markdown_table(
                      ["cell", *genotypes.PRIMITIVES],
                      [[cell, *[search["op_histogram"][cell].get(op, 0) for op in genotypes.PRIMITIVES]]
                       for cell in ("normal", "reduce")]), ""]
    if curves:
        evaluation.plot_accuracy_vs_snr(curves, os.path.join(workdir, "accuracy_vs_snr.png"),
                                        title="Accuracy vs SNR (paper A)")
        symbols = _symbols_per_image(workdir)
        if symbols:
            lines += ["Complex channel symbols per image: " + "; ".join(
                f"{METHOD_LABELS[m]} {n}" for m, n in symbols.items()) + ".", ""]
        for kind in config.eval.channels:
            lines += [f"## Accuracy vs SNR, {kind}", "", evaluation.curves_table(curves, kind, snrs), ""]
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    bandwidth = _bandwidth(workdir)
    if bandwidth:
        results["bandwidth"] = bandwidth
        _plot_bandwidth(bandwidth, os.path.join(workdir, "accuracy_vs_bandwidth.png"))
        points = sorted(bandwidth["accuracy"])
        budgets = sorted(bandwidth["bandwidth_ratio"], key=int)
        rows = []
        for budget in budgets:
            row = [budget, f"{bandwidth['bandwidth_ratio'][budget]:.4f}"]
            for point in points:
                values = bandwidth["accuracy"][point].get(budget, [])
                mean, std = evaluation.mean_std(values) if values else (float("nan"), 0.0)
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f}")
            rows.append(row)
        lines += ["## Accuracy vs bandwidth ratio (one variable-length CAT model)", "",
                  evaluation.markdown_table(["symbols", "ratio", *[p.replace("@", " ") + " dB" for p in points]], rows),
                  "", "![bandwidth](accuracy_vs_bandwidth.png)", ""]
    complexity = None
    rkdsc_runs, stage1_runs = _per_seed(workdir, "rkdsc"), _per_seed(workdir, "stage1")
    if teacher and (rkdsc_runs or stage1_runs):
        counts = (rkdsc_runs or stage1_runs)[0]["params"]
        complexity = {"teacher": teacher["num_params"], "student_deployed": counts["deployed"],
                      "student_transmitter": counts["transmitter"], "student_encoder": counts["encoder"],
                      "cat_encoder": counts["cat_encoder"], "receiver": counts["receiver"]}
        cnn = _per_seed(workdir, "cnn")
        rows = [["teacher (features → its head)", f"{teacher['num_params']:,}", "—", teacher["num_symbols"]],
                ["RKD-SC transmitter (student + CAT encoder)", f"{counts['transmitter']:,}",
                 f"{100 * (1 - counts['transmitter'] / teacher['num_params']):.2f} %",
                 (rkdsc_runs[0]["max_symbols"] if rkdsc_runs else "—")],
                ["RKD-SC transmitter + receiver", f"{counts['deployed']:,}",
                 f"{100 * (1 - counts['deployed'] / teacher['num_params']):.2f} %", ""]]
        if cnn:
            rows.append(["CNN SemCom (all)", f"{cnn[0]['params']['deployed']:,}", "", cnn[0]["num_symbols"]])
        results["complexity"] = complexity
        lines += ["## Parameters", "", evaluation.markdown_table(["model", "params", "reduction vs teacher",
                                                                   "complex symbols"], rows), ""]
        if stage1_runs:
            clean = [r["clean_accuracy"] for r in stage1_runs]
            mean, std = evaluation.mean_std(clean)
            results["stage1_clean_accuracy"] = clean
            lines += [f"Stage-1 student, clean (no channel): {100 * mean:.2f} ± {100 * std:.2f} %; teacher clean: "
                      f"{100 * teacher['clean_accuracy']:.2f} %.", ""]
    latency = _read_json(os.path.join(workdir, "latency.json"))
    if latency:
        results["latency"] = latency
        lines += ["## Encoder latency (batch 1, this machine, same run)", "", evaluation.markdown_table(
            ["encoder", "ms / image"],
            [["teacher", latency["teacher_encoder_ms"]], ["student encoder", latency["student_encoder_ms"]],
             ["student + CAT encoder (transmitter)", latency["student_transmitter_ms"]]]), "",
            f"Teacher / transmitter: {latency['teacher_over_student_transmitter']:.2f}× on {latency['platform']} "
            f"({latency['device']}), median of {latency['repeats']}.", ""]
    exported, export_lines = export_lib.report_section(config, workdir)
    if exported:
        results["export"] = exported
        lines += export_lines
    claims = paper_claims(curves, complexity, latency, teacher["clean_accuracy"] if teacher else None, snrs)
    return ltosc.finish_report(workdir, results, lines, claims, "Paper A")
