"""Teachers from configs, and mode ``finetune_teacher``.

``config.teacher`` fields:
- ``kind``: ``efficientnet_lite0`` (offline ImageNet weights; fine-tuned on the task, then
  read from ``finetuned_dir``), ``clip`` (zero-shot from ``hub_id`` with ``prompt``) or
  ``vit`` (``hub_id``'s own classifier, e.g. ImageNet-1k).
- ``image_size``: the resolution the teacher sees (None: its own, 224 for the
  pretrained checkpoints).  Small images (28 px Fashion-MNIST) gain nothing from 224 px
  and a CPU cannot afford it; EfficientNet's static 'SAME' padding is exact at any
  multiple of 32.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import ml_collections
from absl import logging

from rkdsc_jax import data, files, teachers, train


TEACHER_KINDS = ("efficientnet_lite0", "clip", "vit")


def source_from_config(config, split: str, num_examples=None):
    """``config.data``'s dataset: name, data_dir, optional ``resize_to`` (TFDS), first N examples."""
    kwargs = {"resize_to": config.data.resize_to} if config.data.get("resize_to") else {}
    return data.take(data.get_source(config.data.name, split, config.data.data_dir, **kwargs), num_examples)


def finetuned_dir(config, workdir: str | None = None) -> str:
    return config.teacher.get("finetuned_dir") or os.path.join(workdir or ".", "teacher", "teacher")


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


def load_teacher(config, class_names, workdir: str | None = None) -> teachers.Teacher:
    """The teacher a distillation run uses: fine-tuned when the config asks for it."""
    teacher = pretrained_teacher(config, class_names)
    if not config.teacher.finetune.enabled:
        return teacher
    directory = finetuned_dir(config, workdir)
    if not os.path.exists(os.path.join(directory, "teacher.json")):
        raise FileNotFoundError(
            f"No fine-tuned teacher at {directory}. Run mode finetune_teacher first (or the study mode, "
            "which does), or set --config.teacher.finetuned_dir to where one was saved.")
    return teachers.load_finetuned_teacher(teacher, directory)


def evaluate_teacher(teacher: teachers.Teacher, source, batch_size: int) -> dict:
    """Clean test accuracy of the teacher's logits."""
    import jax.numpy as jnp
    import numpy as np

    correct = count = 0
    for batch in data.eval_batches(source, batch_size=batch_size):
        predictions = np.asarray(jnp.argmax(teacher.logits(batch["image"]), -1))
        correct += float(np.sum((predictions == batch["label"]) * batch["mask"]))
        count += float(np.sum(batch["mask"]))
    return {"accuracy": correct / count, "count": int(count)}


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Fine-tunes the whole pretrained teacher and a new head on ``config.data``; resumable.

    Writes ``workdir/teacher`` (Orbax weights + teacher.json) and ``workdir/summary.json``.
    """
    start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    mesh = train.make_mesh(config.mesh.num_devices)
    source = source_from_config(config, config.data.train_split, config.teacher.finetune.get("num_train_examples"))
    eval_source = source_from_config(config, config.data.eval_split, config.data.get("num_eval_examples"))
    class_names = source.info.class_names or tuple(str(i) for i in range(source.info.num_classes))
    teacher = pretrained_teacher(config, class_names)
    tune = config.teacher.finetune
    num_steps = tune.get("num_steps") or max(1, math.ceil(tune.num_epochs * len(source) / tune.batch_size))
    logging.info("Fine-tuning %s at %s px on %s (%d examples): %d steps of batch %d.", teacher.name,
                 teacher.preprocess.image_size, source.info.name, len(source), num_steps, tune.batch_size)
    train_iter = data.train_iterator(
        source, batch_size=tune.batch_size, num_steps=num_steps, seed=config.seed,
        augment_config=data.AugmentConfig(config.data.augment, config.data.crop_padding),
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    tuned = teachers.finetune_teacher(
        teacher, train_iter, class_names=class_names, workdir=workdir, num_steps=num_steps,
        batch_size=tune.batch_size, learning_rate=tune.learning_rate, head_learning_rate=tune.head_learning_rate,
        weight_decay=tune.weight_decay, warmup_steps=tune.warmup_steps, log_every=tune.log_every,
        checkpoint_every=tune.checkpoint_every, seed=config.seed, mesh=mesh,
    )
    result = evaluate_teacher(tuned, eval_source, config.eval.batch_size)
    summary = {"mode": "finetune_teacher", "teacher": tuned.identity(), "steps": num_steps,
               "eval": result, "wall_time_s": time.perf_counter() - start}
    if jax.process_index() == 0:
        files.atomic_write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("Teacher test accuracy %.4f (%d images).", result["accuracy"], result["count"])
    return summary
