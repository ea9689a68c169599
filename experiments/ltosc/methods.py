"""Paper B's methods: the TOSC systems and objectives of L-TOSC-KD and its baselines, and mode
``ltosc`` (train one method, then its accuracy vs SNR)."""

from __future__ import annotations

import copy
import functools
import inspect
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments.common import inputs, results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from rkdsc_jax import deploy, evaluation, train
from rkdsc_jax.distill import logit_store, tosc_steps
from rkdsc_jax.train import mesh as mesh_lib
from rkdsc_jax.train import workdir as workdir_lib

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


def _method(config) -> dict:
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; available: {sorted(METHODS)}.")
    return METHODS[config.method]


def method_config(config, method: str, seed: int, **data_overrides) -> ml_collections.ConfigDict:
    """The study's config for one method and seed (mode ``ltosc``)."""
    child = copy.deepcopy(config)
    with child.unlocked():
        child.mode = "ltosc"
        child.method = method
        child.seed = seed
        for key, value in data_overrides.items():
            child.data[key] = value
    return child


def run_identity(config, layout: RunLayout) -> dict:
    """One method's run: every field but the study's lists (and, for a method trained on labels, the
    teacher's and store's), and the teacher and store it consumes."""
    targets = _method(config)["targets"]
    if targets == "labels":  # The store's views, not its contents (see Setup.train_iterator).
        store_contents = ("directory", "top_k", "temperature", "batch_size", "shard_size", "verify_samples")
        views = () if config.store.get("shared_views", False) else ("seed", "num_epochs", "shared_views")
        return results.run_identity(config, exclude=("teacher", *(f"store.{f}" for f in store_contents + views)))
    found = {"teacher": teacher_lib.teacher_input(config, layout)}
    if targets == "store":
        found["store"] = workdir_lib.artifact_fingerprint(layout.store)
    return results.run_identity(config, exclude=("store.verify_samples",), inputs=found)


def model_spec(config, num_classes: int, input_shape, class_names=None) -> deploy.SystemSpec:
    """The TOSC system of ``config.method`` as a rebuildable (and exportable) spec."""
    method = _method(config)
    name = config.model.student if method["encoder"] == "student" else method["encoder"]
    mean, std = inputs.input_normalization(config, input_shape[-1])
    system = dict(num_classes=num_classes, num_symbols=config.model.num_symbols,
                  channel_adaptive=config.model.channel_adaptive, cam_hidden=config.model.get("cam_hidden"),
                  decoder_hidden=config.model.decoder_hidden, input_mean=mean, input_std=std)
    return deploy.SystemSpec(kind="tosc", encoder=name, encoder_kwargs=dict(config.model.encoders.get(name, {})),
                             system_kwargs=system, input_shape=tuple(input_shape), class_names=class_names)


def build_objective(config, num_classes: int) -> tosc_steps.Objective:
    method = _method(config)
    return tosc_steps.Objective(
        loss=method["loss"], targets=method["targets"], num_classes=num_classes, beta=config.objective.beta,
        temperature=config.objective.temperature, top_k=config.store.top_k,
        target_temperature=config.store.temperature, label_smoothing=config.objective.label_smoothing,
        snr_range=inputs.tuple_field(config, "objective.snr_range", (int, float)),
        channels=inputs.tuple_field(config, "objective.channels", str),
        csi=config.channel.csi, equalizer=config.channel.equalizer,
        rate_estimator=config.objective.rate_estimator,
    )


def teacher_logits_fn(teacher):
    """A pure (variables, images) → logits of a teacher, for the online ablation."""
    def logits(variables, images):
        return teacher.head_fn(variables["head"], teacher.feature_fn(variables["network"], teacher.preprocess(images)))

    return logits, {"network": teacher.variables, "head": teacher.head_params}


def transmitter_param_count(params) -> int:
    return train.param_count({k: v for k, v in params.items() if k != "decoder"})


def open_store(config, layout: RunLayout, source, class_names):
    """The logit store, refused unless it was written by this config's teacher on this dataset
    (and, where the store can tell, for its number of classes).  A training-set-size run's
    source is a subset of the store's: then its name, split, shape and classes are compared."""
    teacher = teacher_lib.load_teacher(config, class_names, layout)
    dataset = logit_store.dataset_identity(source)
    stored = logit_store.LogitStore.open(layout.store, verify_checksums=False).num_examples
    if len(source) < stored:
        dataset = {k: v for k, v in dataset.items() if k not in ("num_examples", "fingerprint")}
    kwargs = dict(expect_teacher=teacher.identity(), expect_dataset=dataset, top_k=config.store.top_k)
    if "expect_num_classes" in inspect.signature(logit_store.LogitStore.open).parameters:
        kwargs["expect_num_classes"] = source.info.num_classes
    store = logit_store.LogitStore.open(layout.store, **kwargs)
    if store.num_classes != source.info.num_classes:  # Indices >= the student's classes would be dropped.
        raise ValueError(f"The logit store at {layout.store} holds a {store.num_classes}-class teacher's "
                         f"probabilities, but {source.info.name} has {source.info.num_classes} classes; rerun "
                         "precompute_logits with this dataset's teacher, or set store.directory to such a store.")
    return store


class Setup:
    """Everything a TOSC run needs, built once from the config; ``layout`` holds the teacher and store."""

    def __init__(self, config, layout: RunLayout, *, mesh=None):
        self.config = config
        self.mesh = mesh or train.make_mesh(config.mesh.num_devices)
        for batch_size in (config.train.batch_size, config.eval.batch_size):
            mesh_lib.check_batch_size(batch_size, self.mesh)
        self.train_source = inputs.train_source(config)
        self.eval_source = inputs.eval_source(config)
        info = self.train_source.info
        self.num_classes = info.num_classes
        self.preprocess = inputs.preprocess(config, normalize=False)
        self.input_shape = self.preprocess.output_shape(info.image_shape)
        class_names = inputs.class_names(self.train_source)
        self.model_spec = model_spec(config, info.num_classes, self.input_shape, class_names)
        self.model = self.model_spec.build()
        self.objective = build_objective(config, info.num_classes)
        self.num_steps = inputs.steps(config.train, len(self.train_source))
        self.teacher = None
        self.store = None
        if self.objective.targets == "store":
            self.store = open_store(config, layout, self.train_source, class_names)
        if self.objective.targets == "online":
            self.teacher = teacher_lib.load_teacher(config, class_names, layout)

    def train_iterator(self, num_steps: int | None = None, seed: int | None = None):
        num_steps = num_steps or self.num_steps
        seed = self.config.seed if seed is None else seed
        common = dict(batch_size=self.config.train.batch_size, num_steps=num_steps, seed=seed,
                      preprocess_config=self.preprocess, process_index=jax.process_index(),
                      process_count=jax.process_count(), worker_count=self.config.data.worker_count)
        if self.store is not None:
            return logit_store.distill_iterator(self.train_source, self.store, **common)
        views = {}
        if self.config.store.get("shared_views", False):  # Equal data: the distilled arms' images, same order.
            views = dict(augment_seed=self.config.store.seed, view_epochs=self.config.store.num_epochs)
        return inputs.train_iterator(self.config, self.train_source, batch_size=common["batch_size"],
                                     num_steps=num_steps, seed=seed, preprocess_config=self.preprocess, **views)

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

    def curves(self, state) -> dict:
        step = functools.partial(tosc_steps.eval_step, csi=self.config.channel.csi,
                                 equalizer=self.config.channel.equalizer)
        return evaluation.accuracy_vs_snr(
            step, state, inputs.eval_batches(self.eval_source, self.config.eval.batch_size, self.preprocess),
            snrs_db=self.config.eval.snrs_db, kinds=self.config.eval.channels, mesh=self.mesh,
            seed=self.config.eval.seed)


def data_stream(config, setup: "Setup") -> str:
    """Which augmented views a run trains on: the store's (FDM replays its pre-stored epochs) or
    fresh ones drawn by the input pipeline."""
    augment = config.data.get("augment", "none")
    if setup.store is not None or config.store.get("shared_views", False):
        epochs = setup.num_steps * config.train.batch_size / len(setup.train_source)
        replay = f", replayed over {epochs:.3g} epochs" if epochs > config.store.num_epochs else ""
        return (f"the store's views of {config.store.num_epochs} augmented epochs (seed {config.store.seed}, "
                f"{augment}){replay}")
    return f"fresh augmentation ({augment})"


def train_method(config: ml_collections.ConfigDict, workdir: str, *, study_dir: str | None = None) -> dict:
    """Trains ``config.method`` into ``workdir`` (resumable) and evaluates it vs SNR.

    ``study_dir`` is where the teacher and the store live (default: ``workdir``).
    """
    label = METHOD_LABELS.get(config.method, config.method)
    layout = RunLayout.from_config(config, study_dir or workdir)
    workdir, start = results.start_run(config, workdir, f"{label} (seed {config.seed})",
                                       identity=run_identity(config, layout))
    setup = Setup(config, layout)
    state = setup.init_state(config.seed)
    logging.info("%s (%s): %s parameters (transmitter %s); %d steps of batch %d on %d examples.",
                 label, config.method, f"{train.param_count(state.params):,}",
                 f"{transmitter_param_count(state.params):,}", setup.num_steps, config.train.batch_size,
                 len(setup.train_source))
    loop_config = train.LoopConfig(num_steps=setup.num_steps, batch_size=config.train.batch_size,
                                   log_every=config.train.log_every, checkpoint_every=config.train.checkpoint_every,
                                   keep_checkpoints=config.train.keep_checkpoints,
                                   skip_nonfinite=bool(config.train.get("skip_nonfinite", False)))
    state, summary = train.fit(state=state, train_step=setup.train_step(), train_iter=setup.train_iterator(),
                               mesh=setup.mesh, workdir=str(workdir), config=loop_config, batch_keys=setup.batch_keys)
    curves = setup.curves(state)
    summary |= {
        "mode": "ltosc", "method": config.method, "seed": config.seed, "curves": curves,
        "num_params": train.param_count(state.params), "transmitter_params": transmitter_param_count(state.params),
        "num_symbols": config.model.num_symbols,
        "bandwidth_ratio": config.model.num_symbols / float(np.prod(setup.input_shape)),
        "num_train_examples": len(setup.train_source), "total_wall_time_s": time.perf_counter() - start,
        # Equal compute (issue 19): optimiser steps, examples seen and where they came from.
        "steps": setup.num_steps, "batch_size": config.train.batch_size,
        "examples_seen": setup.num_steps * config.train.batch_size, "data_stream": data_stream(config, setup),
    }
    results.write_json(workdir / "summary.json", summary, checksum=True)
    logging.info("%s seed %d: %s", config.method, config.seed, results.curve_line(curves))
    return summary


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``ltosc``: the teacher and the store live in ``config.study_dir`` (default: workdir)."""
    return train_method(config, workdir, study_dir=config.get("study_dir") or workdir)
