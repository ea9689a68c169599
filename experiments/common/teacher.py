"""Teachers from configs, and mode ``finetune_teacher``.

``config.teacher`` fields:
- ``kind``: ``efficientnet_lite0`` (offline ImageNet weights; fine-tuned on the task, then
  read from the run layout's ``teacher/teacher``), ``clip`` (zero-shot from ``hub_id`` with
  ``prompt``) or ``vit`` (``hub_id``'s own classifier, e.g. ImageNet-1k).
- ``image_size``: the resolution the teacher sees (None: its own, 224 for the
  pretrained checkpoints).  Small images (28 px Fashion-MNIST) gain nothing from 224 px
  and a CPU cannot afford it; EfficientNet's static 'SAME' padding is exact at any
  multiple of 32.
- ``finetune``: whether and how the whole teacher and a new head are fine-tuned on the task.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from experiments.common import inputs, results
from experiments.common.layout import RunLayout
from rkdsc_jax import data, teachers, train
from rkdsc_jax.train import workdir as workdir_lib

TEACHER_KINDS = ("efficientnet_lite0", "clip", "vit")


def teacher_identity(config) -> dict:
    """The fine-tuning run's identity: the seed, the data and the teacher's own fields (not the
    training subset of the students, nor any later stage's fields)."""
    return results.run_identity(config, only=("seed", "data", "teacher"),
                                exclude=("data.num_train_examples", "data.subset", "data.subset_seed"))


def teacher_input(config, layout: RunLayout) -> str | None:
    """The fingerprint of the teacher a stage consumes: its fine-tuning run's (or a classifier
    teacher's run's) ``run.json``; None for a pretrained teacher (its config fields identify it)."""
    kind = config.teacher.get("kind")
    if kind == "classifier":
        return workdir_lib.artifact_fingerprint(config.teacher.workdir)
    if kind not in TEACHER_KINDS or not config.teacher.finetune.enabled:
        return None
    return workdir_lib.artifact_fingerprint(layout.teacher.parent)


def _with_image_size(teacher: teachers.Teacher, image_size) -> teachers.Teacher:
    if not image_size:
        return teacher
    return dataclasses.replace(teacher, preprocess=dataclasses.replace(teacher.preprocess, image_size=image_size))


def pretrained_teacher(config, class_names=()) -> teachers.Teacher:
    """The teacher before any task fine-tuning."""
    kind = config.teacher.kind
    if kind == "efficientnet_lite0":
        teacher = teachers.efficientnet_lite0_teacher(config.teacher.get("cache_dir"))
    elif kind == "clip":
        teacher = teachers.clip_teacher(config.teacher.hub_id, class_names, config.teacher.prompt)
    elif kind == "vit":
        teacher = teachers.vit_teacher(config.teacher.hub_id)
    else:
        raise ValueError(f"Unknown teacher kind {kind!r}; use one of {TEACHER_KINDS}.")
    return _with_image_size(teacher, config.teacher.get("image_size"))


def load_teacher(config, class_names, layout: RunLayout) -> teachers.Teacher:
    """The teacher a distillation run uses: fine-tuned (from ``layout.teacher``) when the config asks for it."""
    teacher = pretrained_teacher(config, class_names)
    if not config.teacher.finetune.enabled:
        return teacher
    if not (layout.teacher / "teacher.json").exists():
        raise FileNotFoundError(
            f"No fine-tuned teacher at {layout.teacher}. Run mode finetune_teacher first (or the study mode, "
            "which does), or set --config.teacher.finetuned_dir to where one was saved.")
    return teachers.load_finetuned_teacher(teacher, layout.teacher)


def evaluate_teacher(teacher: teachers.Teacher, source, batch_size: int) -> dict:
    """Clean test accuracy of the teacher's logits."""
    correct = count = 0
    for batch in data.eval_batches(source, batch_size=batch_size):
        predictions = np.asarray(jnp.argmax(teacher.logits(batch["image"]), -1))
        correct += float(np.sum((predictions == batch["label"]) * batch["mask"]))
        count += float(np.sum(batch["mask"]))
    return {"accuracy": correct / count, "count": int(count)}


def finetune_teacher(teacher: teachers.Teacher, train_iter, *, class_names: Sequence[str], workdir: epath.PathLike,
                     save_to: epath.PathLike, num_steps: int, batch_size: int, learning_rate: float = 1e-4,
                     head_learning_rate: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 100,
                     log_every: int = 50, checkpoint_every: int = 500, seed: int = 0, mesh=None) -> teachers.Teacher:
    """Fine-tunes the whole teacher and a new linear head on a task on ``train.fit``; resumable.

    Needed when the pretrained features fit the task poorly (ImageNet features on
    Fashion-MNIST).  ``train_iter`` yields batches with ``image`` in [0, 1] at any size (the
    teacher's own preprocessing resizes) and ``label``.  BatchNorm statistics stay frozen
    at their pretrained values (the usual choice for small fine-tuning batches), so the
    network runs exactly as at inference.  The backbone and the head get separate AdamW
    learning rates with one warm-up + cosine schedule.  Checkpoints go to
    ``workdir/checkpoints`` (a rerun resumes), the weights to ``save_to`` (see
    ``teachers.load_finetuned_teacher``); the returned teacher carries the fitted head.
    """
    for name, value in (("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate),
                        ("weight_decay", weight_decay)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"teacher.finetune.{name} must be a finite number >= 0, got {value!r}; pass e.g. "
                             f"--config.teacher.finetune.{name}=1e-3.")
    mesh = mesh or train.make_mesh()
    network = teacher.variables["params"]
    frozen = {k: v for k, v in teacher.variables.items() if k != "params"}
    feature_dim = jax.eval_shape(
        lambda v: teacher.feature_fn(v, teacher.preprocess(jnp.zeros((1, 8, 8, 3)))), teacher.variables).shape[-1]
    head = {"kernel": jnp.zeros((feature_dim, len(class_names))), "bias": jnp.zeros(len(class_names))}

    def schedule(peak):
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(num_steps, warmup_steps + 1))

    tx = optax.multi_transform(
        {"network": optax.adamw(schedule(learning_rate), weight_decay=weight_decay),
         "head": optax.adamw(schedule(head_learning_rate), weight_decay=0.0)},
        {"network": "network", "head": "head"},
    )
    state = jax.jit(
        lambda p: train.TrainState.create(apply_fn=None, params=p, tx=tx, batch_stats=frozen,
                                          rng=jax.random.PRNGKey(seed)),
        out_shardings=train.replicated(mesh),
    )({"network": network, "head": head})

    def step(state, batch):
        def loss_fn(p):
            features = teacher.feature_fn({"params": p["network"], **state.batch_stats},
                                          teacher.preprocess(batch["image"]))
            logits = teachers.linear_head(p["head"], features)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
        return state.apply_gradients(grads=grads), metrics

    config = train.LoopConfig(num_steps=num_steps, batch_size=batch_size, log_every=log_every,
                              checkpoint_every=checkpoint_every)
    state, _ = train.fit(state=state, train_step=train.jit_train_step(step, mesh), train_iter=train_iter,
                         mesh=mesh, workdir=str(workdir), config=config)
    variables = {"params": state.params["network"], **state.batch_stats}
    tuned = teachers.Teacher(f"{teacher.name}+finetuned", variables, teacher.preprocess, teacher.feature_fn)
    tuned = tuned.with_head(teachers.linear_head, state.params["head"], "finetuned", class_names)
    teachers.save_teacher_weights(tuned, save_to)
    return tuned


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Mode ``finetune_teacher``: fine-tunes the whole pretrained teacher and a new head on
    ``config.data``; resumable.  Writes the layout's ``teacher/`` (checkpoints, summary.json)
    and ``teacher/teacher/`` (Orbax weights + teacher.json), where every stage reads it."""
    start = time.perf_counter()
    layout = RunLayout.from_config(config, workdir)
    run_dir, _ = results.start_run(config, layout.teacher_run, "Fine-tune the teacher",
                                   identity=teacher_identity(config))
    mesh = train.make_mesh(config.mesh.num_devices)
    tune = config.teacher.finetune
    source = inputs.source(config, config.data.train_split, tune.get("num_train_examples"))
    eval_source = inputs.eval_source(config)
    class_names = inputs.class_names(source)
    teacher = pretrained_teacher(config, class_names)
    num_steps = inputs.steps(tune, len(source))
    logging.info("Fine-tuning %s at %s px on %s (%d examples): %d steps of batch %d.", teacher.name,
                 teacher.preprocess.image_size, source.info.name, len(source), num_steps, tune.batch_size)
    train_iter = data.train_iterator(
        source, batch_size=tune.batch_size, num_steps=num_steps, seed=config.seed, augment_config=inputs.augment(config),
        process_index=jax.process_index(), process_count=jax.process_count())
    tuned = finetune_teacher(
        teacher, train_iter, class_names=class_names, workdir=run_dir, save_to=layout.teacher, num_steps=num_steps,
        batch_size=tune.batch_size, learning_rate=tune.learning_rate, head_learning_rate=tune.head_learning_rate,
        weight_decay=tune.weight_decay, warmup_steps=tune.warmup_steps, log_every=tune.log_every,
        checkpoint_every=tune.checkpoint_every, seed=config.seed, mesh=mesh)
    result = evaluate_teacher(tuned, eval_source, config.eval.batch_size)
    summary = {"mode": "finetune_teacher", "teacher": tuned.identity(), "steps": num_steps,
               "eval": result, "wall_time_s": time.perf_counter() - start}
    results.write_json(run_dir / "summary.json", summary, checksum=True)
    logging.info("Teacher test accuracy %.4f (%d images).", result["accuracy"], result["count"])
    return summary


REFERENCE_LABEL = "teacher, all features ({symbols} symbols, reference)"
PCA_LABEL = "teacher, PCA {symbols} symbols"
LINEAR_LABEL = "teacher, linear codec {symbols} symbols (trained, upper bound)"


def equal_bandwidth_labels(summary: dict) -> dict[str, dict[str, str]]:
    """{codec: {symbols: row label}} of a ``teacher_over_channel`` summary's equal-bandwidth rows."""
    labels = {"pca": PCA_LABEL, "linear": LINEAR_LABEL}

    def label(codec, k, row):
        sent = int(row.get("num_symbols", k))
        text = labels[codec].format(symbols=sent)
        # A budget above the teacher's D/2 symbols: all its features fit, rotated by the full-rank codec.
        return text if sent == int(k) else f"{text} (all features; budget {k})"

    return {codec: {k: label(codec, k, row) for k, row in rows.items()}
            for codec, rows in summary.get("equal_bandwidth", {}).items()}


def equal_bandwidth_paragraph(summary: dict, sent: str, trained_under: str) -> str:
    """The report's sentence on how the teacher was sent at equal bandwidth (both studies);
    ``sent`` e.g. "the students' 16 complex symbols"."""
    linear = (f"; the linear codec is that PCA codec trained through the frozen head for "
              f"{summary['linear_codec_steps']} steps under {trained_under} (an upper bound of a linear "
              "fixed-rate scheme)") if summary.get("linear_codec_steps") else ""
    return (f"The teacher at equal bandwidth: its {2 * summary['num_symbols']} features through a PCA codec to "
            f"{sent}, fitted on the teacher's features of the first "
            f"{summary['codec_fit_examples']:,} training images (un-augmented), unit power per image, the receiver "
            f"told each image's norm{linear}. The {summary['num_symbols']}-symbol row sends every feature: a "
            "reference, never the comparison.")


def comparison_codec(summary: dict | None, symbols) -> tuple[str, dict | None]:
    """The teacher's equal-bandwidth row a claim compares with at ``symbols``: the linear codec
    trained under channel noise when there is one (the students' codecs are trained under noise
    too: equal effort), else the training-free PCA codec.  Returns (description, row or None)."""
    rows = (summary or {}).get("equal_bandwidth", {})
    for codec, what in (("linear", "its linear codec trained under noise"), ("pca", "PCA")):
        row = rows.get(codec, {}).get(str(symbols))
        if row is not None:
            return what, row
    return "", None


def teacher_rows(summary: dict | None, symbols=None) -> dict[str, dict]:
    """The teacher's method rows of a ``teacher_over_channel`` summary as {label: per-seed curves}:
    the 640-symbol reference and, for every symbol count in ``symbols`` (default: all), the
    equal-bandwidth PCA (and trained linear codec) rows."""
    from rkdsc_jax import evaluation

    if not summary:
        return {}
    rows = {REFERENCE_LABEL.format(symbols=summary["num_symbols"]): evaluation.collect_seeds([summary["curves"]])}
    for codec, by_symbols in equal_bandwidth_labels(summary).items():
        for k, label in sorted(by_symbols.items(), key=lambda item: int(item[0])):
            if symbols is None or int(k) in {int(s) for s in symbols}:
                rows[label] = evaluation.collect_seeds([summary["equal_bandwidth"][codec][k]["curves"]])
    return rows


def _feature_batches(make_batches, feature_fn, variables):
    """The evaluation batches with ``image`` replaced by the teacher's features (computed once)."""
    jitted = jax.jit(feature_fn)
    out = []
    for batch in make_batches():
        out.append(dict(batch, image=np.asarray(jitted(variables, batch["image"]), np.float32)))
    return out


def teacher_over_channel(config, layout: RunLayout, equal_symbols=(), codec_snr_range=(-10.0, 25.0)) -> dict:
    """The (fine-tuned) teacher's features sent uncoded over the channel to its own head
    (paper B's LA-TOSC, paper A's teacher baseline, D/2 symbols: a labelled reference), its clean
    accuracy, and the teacher at equal bandwidth (issue 19): for every k in ``equal_symbols``
    its features through a PCA codec to k complex symbols (fitted on the teacher's features of
    the first ``eval.codec_fit_examples`` training images, un-augmented), and with
    ``eval.linear_codec_steps`` > 0 the linear codec trained through the frozen head with
    channel noise (SNR uniform over ``codec_snr_range``, the students' training range) from
    that PCA start (``distill.bandwidth``); both evaluated at ``eval.snrs_db`` and
    ``eval.bandwidth_snrs_db``, and clean."""
    from rkdsc_jax import data as data_lib
    from rkdsc_jax import evaluation
    from rkdsc_jax.distill import bandwidth, tosc_steps

    mesh = train.make_mesh(config.mesh.num_devices)
    eval_source = inputs.eval_source(config)
    teacher = load_teacher(config, inputs.class_names(eval_source), layout)

    def feature_fn(variables, images):
        return teacher.feature_fn(variables, teacher.preprocess(images))

    # The teacher runs once over the test set; every curve below sends its stored features.
    identity = lambda variables, x: x  # noqa: E731
    step = functools.partial(tosc_steps.teacher_over_channel_eval_step, feature_fn=identity,
                             head_fn=teacher.head_fn, csi=config.channel.csi, equalizer=config.channel.equalizer)
    preprocess = inputs.preprocess(config, normalize=False)
    batches = inputs.eval_batches(eval_source, config.eval.batch_size, preprocess)
    started = time.perf_counter()
    feature_batches = _feature_batches(batches, feature_fn, teacher.variables)
    logging.info("Teacher over the channel: features of %d test images in %.0f s; %d SNRs × %d channels next.",
                 int(sum(np.sum(b["mask"]) for b in feature_batches)), time.perf_counter() - started,
                 len(config.eval.snrs_db), len(config.eval.channels))
    params = jax.device_put({"network": {}, "head": teacher.head_params}, train.replicated(mesh))
    curves = evaluation.accuracy_vs_snr(step, params, lambda: feature_batches, snrs_db=config.eval.snrs_db,
                                        kinds=config.eval.channels, mesh=mesh, seed=config.eval.seed)
    clean = evaluation.accuracy_vs_snr(step, params, lambda: feature_batches, snrs_db=[0.0], kinds=["none"],
                                       mesh=mesh)
    sample = jnp.zeros((1, *preprocess.output_shape(eval_source.info.image_shape)))
    feature_dim = jax.eval_shape(lambda: feature_fn(teacher.variables, sample)).shape[-1]
    summary = {"curves": curves, "clean_accuracy": clean["none"]["0"], "teacher": teacher.identity(),
               "num_symbols": feature_dim // 2, "num_params": train.param_count(teacher.variables["params"])}
    equal_symbols = sorted({int(k) for k in equal_symbols})
    if not equal_symbols:
        return summary

    # Equal bandwidth: the teacher runs once over the test set; the codecs act on its features.
    fit_examples = int(config.eval.get("codec_fit_examples") or 4096)
    train_source = inputs.train_source(config)
    train_batches = data_lib.eval_batches(train_source, batch_size=config.eval.batch_size, preprocess_config=preprocess)
    features, labels = bandwidth.collect_features(feature_fn, teacher.variables, train_batches,
                                                  max_examples=fit_examples)
    snrs = sorted({*config.eval.snrs_db, *config.eval.get("bandwidth_snrs_db", ())})
    linear_steps = int(config.eval.get("linear_codec_steps") or 0)
    head = jax.device_put(teacher.head_params, train.replicated(mesh))
    rows: dict[str, dict] = {"pca": {}}
    if linear_steps:
        rows["linear"] = {}
    for budget in equal_symbols:
        # More symbols than the teacher's D/2: every feature fits (the full-rank codec, D/2 symbols sent).
        k = min(budget, feature_dim // 2)
        codecs = {"pca": bandwidth.fit_pca_codec(features, k)}
        if linear_steps:
            codecs["linear"], _ = bandwidth.train_linear_codec(
                features, labels, teacher.head_fn, teacher.head_params, k, steps=linear_steps, seed=config.seed,
                snr_range=tuple(codec_snr_range), init=codecs["pca"],
                channel=_channel_spec(config))
        for name, codec in codecs.items():
            eb_params = {"network": {}, "head": head, "codec": jax.device_put(codec, train.replicated(mesh))}
            eb_step = functools.partial(bandwidth.equal_bandwidth_eval_step, feature_fn=identity,
                                        head_fn=teacher.head_fn, csi=config.channel.csi,
                                        equalizer=config.channel.equalizer)
            eb_curves = evaluation.accuracy_vs_snr(eb_step, eb_params, lambda: feature_batches, snrs_db=snrs,
                                                   kinds=config.eval.channels, mesh=mesh, seed=config.eval.seed)
            eb_clean = evaluation.accuracy_vs_snr(eb_step, eb_params, lambda: feature_batches, snrs_db=[0.0],
                                                  kinds=["none"], mesh=mesh)
            rows[name][str(budget)] = {"curves": eb_curves, "clean_accuracy": eb_clean["none"]["0"],
                                  "num_symbols": bandwidth.codec_num_symbols(codec)}
        logging.info("Teacher at %d symbols (%s codecs) evaluated; %.0f s in this stage.", budget,
                     "/".join(codecs), time.perf_counter() - started)
    summary |= {"equal_bandwidth": rows, "codec_fit_examples": int(len(features)),
                "linear_codec_steps": linear_steps, "codec_side_info": "norm"}
    return summary


def _channel_spec(config):
    from rkdsc_jax import channels as channels_lib

    return channels_lib.ChannelSpec(csi=config.channel.csi, equalizer=config.channel.equalizer)
