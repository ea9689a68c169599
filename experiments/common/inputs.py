"""Data from a config: sources, subsets, augmentation, preprocessing, batches, run lengths.

``config.data`` fields every experiment shares (``experiments/configs/common.py``): ``name``,
``data_dir``, ``train_split``/``eval_split``, ``num_train_examples`` (with ``subset``: the first
ones or a random subset)/``num_eval_examples``,
``augment``/``crop_padding``, ``image_size``/``channels``, ``normalization`` (the model
input's mean/std; see :func:`preprocess`), ``resize_to`` (TFDS images of varying size),
``worker_count``.
"""

from __future__ import annotations

import jax
import numpy as np

from rkdsc_jax import data, train


def source(config, split: str, num_examples: int | None = None):
    """``config.data``'s dataset ``split``, its first ``num_examples`` examples."""
    kwargs = {"resize_to": config.data.resize_to} if config.data.get("resize_to") else {}
    return data.take(data.get_source(config.data.name, split, config.data.data_dir, **kwargs), num_examples)


def random_subset(source_, num_examples: int, seed: int):
    """A reproducible random subset that keeps the parent's example indices (store lookups)."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"data.num_train_examples must be a whole number >= 1 (or None for all), got "
                         f"{num_examples!r}; pass e.g. --config.data.num_train_examples=1000.")
    if num_examples >= len(source_):
        return source_
    indices = np.sort(np.random.default_rng([seed, len(source_)]).permutation(len(source_))[:num_examples])
    return data.SubsetSource(source_, indices, source_.info.split)


def train_source(config):
    """``data.num_train_examples`` examples of the training split (all when None): the first
    ones (``data.subset="first"``) or a reproducible random subset (``"random"``, ``subset_seed``).
    With ``data.subset_of`` (a study's training-set-size run), they are drawn the same way from
    the study's own ``subset_of`` examples, whose logit store they then read."""
    num_examples = config.data.get("num_train_examples")
    if config.data.subset not in ("first", "random"):
        raise ValueError(f"data.subset must be 'first' or 'random', got {config.data.subset!r}.")
    parent_size = config.data.get("subset_of")
    if parent_size is not None:
        parent = _subset(config, source(config, config.data.train_split), parent_size)
        return _subset(config, parent, num_examples) if num_examples is not None else parent
    if config.data.subset == "first":
        return source(config, config.data.train_split, num_examples)
    full = source(config, config.data.train_split)
    return random_subset(full, num_examples, seed=config.data.subset_seed) if num_examples is not None else full


def _subset(config, source_, num_examples: int):
    if config.data.subset == "first":
        return data.take(source_, num_examples) if num_examples < len(source_) else source_
    return random_subset(source_, num_examples, seed=config.data.subset_seed)


def eval_source(config):
    return source(config, config.data.eval_split, config.data.get("num_eval_examples"))


def class_names(source_) -> tuple[str, ...]:
    return source_.info.class_names or tuple(str(i) for i in range(source_.info.num_classes))


def augment(config) -> data.AugmentConfig:
    return data.AugmentConfig(config.data.augment, config.data.crop_padding)


def preprocess(config, *, normalize: bool) -> data.PreprocessConfig:
    """The batches' images at ``data.image_size``/``channels``.  ``normalize``: standardised
    with ``data.normalization`` in the pipeline (classifier, search); otherwise in [0, 1], and
    the model standardises its input with the same statistics (:func:`input_normalization`),
    so that a deployed transmitter takes raw images."""
    return data.PreprocessConfig(config.data.get("image_size"), config.data.get("channels"),
                                 config.data.normalization if normalize else "unit")


def input_normalization(config, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.normalization``'s (mean, std), one value per input channel."""
    mean, std = data.NORMALIZATIONS[config.data.normalization]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    return tuple(mean), tuple(std)


def train_iterator(config, source_, *, batch_size: int, num_steps: int, seed: int,
                   preprocess_config: data.PreprocessConfig | None = None, augment_config=None, **views):
    """This process's share of the shuffled, augmented training batches (checkpointable);
    ``views``: ``augment_seed``/``view_epochs`` of ``rkdsc_jax.data.train_iterator``."""
    return data.train_iterator(
        source_, batch_size=batch_size, num_steps=num_steps, seed=seed,
        augment_config=augment(config) if augment_config is None else augment_config,
        preprocess_config=preprocess_config, process_index=jax.process_index(),
        process_count=jax.process_count(), worker_count=config.data.get("worker_count", 0), **views)


def eval_batches(source_, batch_size: int, preprocess_config: data.PreprocessConfig | None = None):
    """A function giving this process's share of the padded evaluation batches, every call anew."""
    return lambda: data.eval_batches(source_, batch_size=batch_size, preprocess_config=preprocess_config,
                                     process_index=jax.process_index(), process_count=jax.process_count())


def steps(stage, num_examples: int) -> int:
    """A config section's run length (``num_steps``, else ``num_epochs`` of ``batch_size``)."""
    return train.steps_from_epochs(num_examples, stage.batch_size, stage.get("num_epochs"), stage.get("num_steps"))


def tuple_field(config, name: str, kind=None) -> tuple:
    """``config.<name>`` as a tuple, refused when it is a plain string or holds other than ``kind``
    values (``--config.pipeline.seeds=0,1,2`` and ``'(0, 1, 2)'`` both give a tuple of ints)."""
    value = config
    for part in name.split("."):
        value = value[part]
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"config.{name} must be a tuple, got {value!r}; pass e.g. --config.{name}=0,1,2 or "
                         f"--config.{name}='(0, 1, 2)'.")
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kinds)]
        if bad:
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"config.{name} must hold {names} values, got {bad[0]!r} in {tuple(value)!r}.")
    return tuple(value)
