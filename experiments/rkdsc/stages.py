"""Paper A's trained stages (SPEC §4): stage 1 (the student encoder distils the teacher's
features and logits, no channel), stage 2 (CAT codec + channel from stage 1's weights; without
a teacher, the no-KD student), the CNN semantic-communication baseline, encoder latency."""

from __future__ import annotations

import copy
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from rkdsc_jax import deploy, evaluation, train
from rkdsc_jax.distill import rkd_steps, tosc_steps
from rkdsc_jax.models import rkd, tosc
from rkdsc_jax.nas import genotypes
from rkdsc_jax.train import mesh as mesh_lib
from rkdsc_jax.train import workdir as workdir_lib


def pipeline_layout(config, pipeline_dir) -> RunLayout:
    return RunLayout.from_config(config, pipeline_dir)


def resolve_genotype(config, layout: RunLayout) -> genotypes.Genotype:
    """``config.student.genotype``: a name, JSON path or search workdir; None: the pipeline's search."""
    return genotypes.load(config.student.get("genotype") or layout.search)


def genotype_input(config, layout: RunLayout) -> dict:
    """The student's cell as an input of a stage: the pipeline's search run, or the given genotype's
    content (a genotype file edited in place makes the stages that used it stale)."""
    if config.student.encoder != "genotype":
        return {}
    if not config.student.get("genotype"):
        return {"search": workdir_lib.artifact_fingerprint(layout.search)}
    return {"genotype": resolve_genotype(config, layout).to_dict()}


def run_identity(config, layout: RunLayout, method: str, stage1_dir=None) -> dict:
    """A trained stage's identity: its fields (not other stages') and the artifacts it consumes —
    the teacher (its features' width shapes every student), the searched genotype, and for
    ``rkdsc`` the stage-1 run it starts from."""
    found = {"teacher": teacher_lib.teacher_input(config, layout)} | genotype_input(config, layout)
    # The baselines train as long as stage 1 + stage 2 together (baseline_steps): stage 1's length counts.
    stage1_rest = tuple(f"stage1.{k}" for k in config.stage1.keys() if k not in ("num_steps", "num_epochs",
                                                                                 "batch_size"))
    exclude = {"stage1": ("stage2", "baselines"), "rkdsc": ("stage1", "baselines"),
               "no_kd": (*stage1_rest, "baselines.cnn", "baselines.cnn_decoder_hidden"),
               "cnn": stage1_rest}[method]
    if method == "rkdsc":
        found["stage1"] = workdir_lib.artifact_fingerprint(stage1_dir or layout.run("stage1", config.seed))
    return results.run_identity(config, exclude=exclude, inputs=found)


def latency_identity(config, layout: RunLayout) -> dict:
    """What the encoder latencies depend on: the data's shape, the teacher, the student system."""
    found = {"teacher": teacher_lib.teacher_input(config, layout)} | genotype_input(config, layout)
    return results.run_identity(config, only=("data", "teacher", "student", "codec"), inputs=found)


def objective_from_config(config, stage: str) -> rkd_steps.RKDObjective:
    o, s2 = config.objective, config.stage2
    common = dict(feature_loss=o.feature_loss, feature_weight=o.feature_weight, kd_weight=o.kd_weight,
                  ce_weight=o.ce_weight, temperature=o.temperature)
    if stage == "stage1":
        return rkd_steps.RKDObjective(**common)
    return rkd_steps.RKDObjective(**common, snr_range=inputs.tuple_field(config, "stage2.snr_range", (int, float)),
                                  channels=inputs.tuple_field(config, "stage2.channels", str),
                                  budgets=inputs.tuple_field(config, "codec.budgets", int) or None, csi=config.channel.csi,
                                  equalizer=config.channel.equalizer, freeze_encoder=s2.freeze_encoder)


class Setup:
    """Data, teacher and models of one pipeline, built once from the config."""

    def __init__(self, config, pipeline_dir: str):
        self.config = config
        self.layout = pipeline_layout(config, pipeline_dir)
        self.mesh = train.make_mesh(config.mesh.num_devices)
        for batch_size in (config.stage1.batch_size, config.stage2.batch_size, config.eval.batch_size):
            mesh_lib.check_batch_size(batch_size, self.mesh)
        self.train_source = inputs.train_source(config)
        self.eval_source = inputs.eval_source(config)
        info = self.train_source.info
        self.num_classes = info.num_classes
        self.class_names = inputs.class_names(self.train_source)
        self.preprocess = inputs.preprocess(config, normalize=False)
        self.input_shape = self.preprocess.output_shape(info.image_shape)
        self.teacher = teacher_lib.load_teacher(config, self.class_names, self.layout)
        if self.teacher.num_classes != self.num_classes:
            raise ValueError(
                f"The teacher {self.teacher.name!r} predicts {self.teacher.num_classes} classes but {info.name} has "
                f"{self.num_classes}: fine-tune it on this dataset (teacher.finetune.enabled) or use a zero-shot "
                "CLIP teacher with this dataset's class names.")

    # --- Models -----------------------------------------------------------------------

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
            kwargs["genotype"] = resolve_genotype(self.config, self.layout)
        encoder = tosc.make_encoder(student.encoder, **kwargs)
        sample = jnp.zeros((1, *self.input_shape), jnp.float32)
        shapes = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), sample, train=False))
        features = jax.eval_shape(lambda v: encoder.apply(v, sample, train=False), shapes)
        if len(features.shape) not in (3, 4):
            raise ValueError(f"The student encoder must give a feature map or tokens, got shape {features.shape}.")
        c = self.config.codec
        mean, std = inputs.input_normalization(self.config, self.input_shape[-1])
        system = dict(num_classes=self.num_classes, teacher_dim=self.teacher_dim,
                      num_tokens=int(np.prod(features.shape[1:-1])), cat_width=c.width, cat_depth=c.depth,
                      cat_heads=c.heads, symbols_per_token=c.symbols_per_token, input_mean=mean, input_std=std)
        return deploy.SystemSpec(kind="rkdsc", encoder=student.encoder, encoder_kwargs=kwargs, system_kwargs=system,
                                 input_shape=self.input_shape, class_names=self.class_names)

    @functools.cached_property
    def system(self) -> rkd.RKDSystem:
        return self.system_spec.build()

    def cnn_spec(self, num_symbols: int) -> deploy.SystemSpec:
        mean, std = inputs.input_normalization(self.config, self.input_shape[-1])
        b = self.config.baselines
        system = dict(num_classes=self.num_classes, num_symbols=num_symbols, channel_adaptive=False,
                      decoder_hidden=b.cnn_decoder_hidden, input_mean=mean, input_std=std)
        return deploy.SystemSpec(kind="tosc", encoder="cnn", encoder_kwargs=dict(b.cnn), system_kwargs=system,
                                 input_shape=self.input_shape, class_names=self.class_names)

    def init_state(self, model, tx, seed: int, **init_kwargs):
        sample = jnp.zeros((1, *self.input_shape), jnp.float32)
        return jax.jit(functools.partial(train.create_train_state, model, tx, seed=seed, **init_kwargs),
                       out_shardings=train.replicated(self.mesh))(sample)

    # --- Data and steps ---------------------------------------------------------------

    def train_iterator(self, stage, num_steps: int, seed: int):
        return inputs.train_iterator(self.config, self.train_source, batch_size=stage.batch_size,
                                     num_steps=num_steps, seed=seed, preprocess_config=self.preprocess)

    def eval_batches(self):
        return inputs.eval_batches(self.eval_source, self.config.eval.batch_size, self.preprocess)

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

    def fit(self, state, step, stage, num_steps: int, workdir, *, seed: int):
        """Trains ``num_steps``; ``seed`` orders the data (each seed its own order, not the setup's)."""
        loop = train.LoopConfig(num_steps=num_steps, batch_size=stage.batch_size, log_every=stage.log_every,
                                checkpoint_every=stage.checkpoint_every, keep_checkpoints=stage.keep_checkpoints,
                                skip_nonfinite=bool(stage.get("skip_nonfinite", False)))
        return train.fit(state=state, train_step=step, train_iter=self.train_iterator(stage, num_steps, seed),
                         mesh=self.mesh, workdir=str(workdir), config=loop)


def baseline_steps(config, num_examples: int) -> int:
    """The baselines' optimiser steps: ``baselines.num_steps``, else as many as RKD-SC's whole
    training (stage 1 + stage 2), so every compared arm gets equal compute (issue 19)."""
    if config.baselines.get("num_steps"):
        return int(config.baselines.num_steps)
    return inputs.steps(config.stage1, num_examples) + inputs.steps(config.stage2, num_examples)


def seed_config(config, seed: int) -> ml_collections.ConfigDict:
    child = copy.deepcopy(config)
    with child.unlocked():
        child.seed = seed
    return child


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


def _stage1_tx(setup: Setup):
    num_steps = inputs.steps(setup.config.stage1, len(setup.train_source))
    return train.make_optimizer(setup.config.stage1, num_steps), num_steps


def train_stage1(config, workdir: str, *, setup: Setup) -> dict:
    """Stage 1 into ``workdir`` (resumable); summary with clean and over-the-channel accuracy."""
    workdir, start = results.start_run(config, workdir, f"RKD stage 1 (seed {config.seed})",
                                       identity=run_identity(config, setup.layout, "stage1"))
    tx, num_steps = _stage1_tx(setup)
    state = setup.init_state(setup.system, tx, config.seed, method="init_all")
    fn, variables = setup.teacher_arguments()
    step = functools.partial(rkd_steps.stage1_step, objective=objective_from_config(config, "stage1"), teacher_fn=fn)
    logging.info("Student: %s parameters (encoder %s), %d tokens → teacher width %d; %d steps of batch %d.",
                 f"{train.param_count(state.params):,}", f"{train.param_count(state.params['encoder']):,}",
                 setup.system.num_tokens, setup.teacher_dim, num_steps, config.stage1.batch_size)
    state, summary = setup.fit(state, setup.jit_with_teacher(step, variables), config.stage1, num_steps, workdir,
                               seed=config.seed)
    clean = train.evaluate(train.jit_eval_step(rkd_steps.stage1_eval_step, setup.mesh), state,
                           setup.eval_batches()(), setup.mesh)
    curves = setup.curves(functools.partial(_stage1_over_channel_step, csi=config.channel.csi,
                                            equalizer=config.channel.equalizer), state)
    summary |= {"mode": "rkd_stage1", "seed": config.seed, "clean_accuracy": clean["accuracy"], "curves": curves,
                "params": system_param_counts(state.params), "num_symbols": setup.teacher_dim // 2,
                "steps": num_steps, "batch_size": config.stage1.batch_size,
                "examples_seen": num_steps * config.stage1.batch_size,
                "total_wall_time_s": time.perf_counter() - start}
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("Stage 1 seed %d: clean accuracy %.4f | %s", config.seed, clean["accuracy"],
                 results.curve_line(curves))
    return summary


def load_stage1_state(setup: Setup, stage1_dir, seed: int):
    tx, _ = _stage1_tx(setup)
    template = setup.init_state(setup.system, tx, seed, method="init_all")
    checkpointer = train.Checkpointer(epath.Path(stage1_dir) / "checkpoints")
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"No stage-1 checkpoint in {stage1_dir}/checkpoints; run mode rkd_stage1 first "
                                "or point --config.stage2.init_from at a finished stage-1 workdir.")
    state = checkpointer.restore(template)
    checkpointer.close()
    return state


# --- Stage 2 (and the no-KD student of the same network) ---------------------------------


def _budgets(config, max_symbols: int) -> list[int]:
    return sorted({int(b) for b in (config.codec.budgets or ())} | {max_symbols})


def train_stage2(config, workdir: str, *, setup: Setup, stage1_dir=None, distill: bool = True) -> dict:
    """Stage 2 from stage 1's weights (``distill``) or, without a teacher, from scratch on the labels."""
    label = "RKD stage 2" if distill else "no-KD student"
    identity = run_identity(config, setup.layout, "rkdsc" if distill else "no_kd", stage1_dir)
    workdir, start = results.start_run(config, workdir, f"{label} (seed {config.seed})", identity=identity)
    stage = config.stage2
    num_steps = (inputs.steps(stage, len(setup.train_source)) if distill
                 else baseline_steps(config, len(setup.train_source)))
    state = setup.init_state(setup.system, train.make_optimizer(stage, num_steps), config.seed, method="init_all")
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
    state, summary = setup.fit(state, setup.jit_with_teacher(step, variables), stage, num_steps, workdir,
                               seed=config.seed)
    eval_step = functools.partial(rkd_steps.stage2_eval_step, csi=config.channel.csi,
                                  equalizer=config.channel.equalizer)
    curves = setup.curves(eval_step, state)
    bandwidth = {}
    if distill:
        for budget in _budgets(config, setup.system.max_symbols):
            bandwidth[str(budget)] = setup.curves(functools.partial(eval_step, num_symbols=budget), state,
                                                  snrs_db=config.eval.bandwidth_snrs_db)
    compute = {"steps": num_steps, "batch_size": stage.batch_size, "examples_seen": num_steps * stage.batch_size}
    if distill:  # RKD-SC's whole training: stage 1, then stage 2 (issue 19: equal compute, stated).
        before = results.read_json(epath.Path(stage1_dir) / "summary.json") or {}
        stage1_steps = before.get("steps", inputs.steps(config.stage1, len(setup.train_source)))
        stage1_seen = before.get("examples_seen", stage1_steps * config.stage1.batch_size)
        compute |= {"stage1_steps": stage1_steps, "stage1_examples_seen": stage1_seen,
                    "total_steps": stage1_steps + num_steps,
                    "total_examples_seen": stage1_seen + compute["examples_seen"]}
    else:
        compute |= {"total_steps": num_steps, "total_examples_seen": compute["examples_seen"]}
    summary |= compute
    summary |= {"mode": "rkd_stage2" if distill else "no_kd", "seed": config.seed, "curves": curves,
                "bandwidth": bandwidth, "max_symbols": setup.system.max_symbols,
                "input_size": int(np.prod(setup.input_shape)), "params": system_param_counts(state.params),
                "total_wall_time_s": time.perf_counter() - start}
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("%s seed %d: %s", label, config.seed, results.curve_line(curves))
    return summary


# --- Baseline: a plain CNN semantic-communication system ---------------------------------


def train_cnn_baseline(config, workdir: str, *, setup: Setup, num_symbols: int) -> dict:
    """CNN → dense JSCC head → channel → dense decoder → classifier, trained on the labels
    under stage 2's SNR and channel mix, with RKD-SC's largest symbol budget."""
    workdir, start = results.start_run(config, workdir, f"CNN SemCom baseline (seed {config.seed})",
                                       identity=run_identity(config, setup.layout, "cnn"))
    stage = config.stage2
    num_steps = baseline_steps(config, len(setup.train_source))
    model = setup.cnn_spec(num_symbols).build()
    state = setup.init_state(model, train.make_optimizer(stage, num_steps), config.seed, snr_db=0.0,
                             channel_fn=lambda x: x, train=False)
    objective = tosc_steps.Objective(loss="ce", targets="labels", num_classes=setup.num_classes,
                                     snr_range=tuple(stage.snr_range), channels=tuple(stage.channels),
                                     csi=config.channel.csi, equalizer=config.channel.equalizer)
    step = train.jit_train_step(functools.partial(tosc_steps.train_step, objective=objective), setup.mesh)
    state, summary = setup.fit(state, step, stage, num_steps, workdir, seed=config.seed)
    curves = setup.curves(functools.partial(tosc_steps.eval_step, csi=config.channel.csi,
                                            equalizer=config.channel.equalizer), state)
    transmitter = train.param_count({k: v for k, v in state.params.items() if k != "decoder"})
    summary |= {"steps": num_steps, "batch_size": stage.batch_size, "examples_seen": num_steps * stage.batch_size,
                "total_steps": num_steps, "total_examples_seen": num_steps * stage.batch_size}
    summary |= {"mode": "cnn_baseline", "seed": config.seed, "curves": curves, "num_symbols": num_symbols,
                "params": {"deployed": train.param_count(state.params), "transmitter": transmitter},
                "total_wall_time_s": time.perf_counter() - start}
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("CNN baseline seed %d: %s", config.seed, results.curve_line(curves))
    return summary


# --- Latency -------------------------------------------------------------------------------


def encoder_latency(config, setup: Setup) -> dict:
    """Milliseconds per image at batch 1 on this machine, same process: the student's
    transmitter (encoder + CAT encoder), the student encoder alone, the teacher's encoder.
    Timing does not depend on the weights' values, so fresh ones are used."""
    state = setup.init_state(setup.system, train.make_optimizer(config.stage2, 1), config.seed, method="init_all")
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
