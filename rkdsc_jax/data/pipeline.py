"""Deterministic, resumable grain pipelines with replayable per-example augmentation.

Ordering.  The training stream is a flat sequence over epochs: position ``t`` is example
``perm_e[t mod N]`` of epoch ``e = t // N``, where ``perm_e`` is a permutation drawn from
``(seed, e)``.  Global batch ``s`` is positions ``[s·B, (s+1)·B)``; process ``p`` of ``P``
reads the contiguous rows ``[s·B + p·B/P, s·B + (p+1)·B/P)`` of it.  The global batch is
therefore the same whatever the number of processes or devices, and a resumed iterator
continues on exactly the next batch.

Augmentation.  Every (example, epoch) pair has its own seed, ``augmentation_seed(seed,
index, epoch)``, and ``augment(image, aug_seed, config)`` is a pure function of the image
and that seed, so the same augmented view can be replayed later (the teacher-logit store
saves the seed next to the teacher's outputs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import grain
import numpy as np
from PIL import Image

from rkdsc_jax.data.sources import DataSource, read_batch  # noqa: F401  (read_batch: also this module's API)

# Per-channel (mean, std) applied to images scaled to [0, 1].
NORMALIZATIONS = {
    "unit": ((0.0,), (1.0,)),  # [0, 1]
    "minus_one_one": ((0.5,), (0.5,)),  # [-1, 1], e.g. EfficientNet-Lite
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
AUGMENT_POLICIES = ("none", "crop_flip", "crop")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``crop``: pad by ``crop_padding`` (zeros), crop back to size;
    ``crop_flip``: the same plus a horizontal flip with probability 1/2."""

    policy: str = "crop_flip"
    crop_padding: int = 2

    def __post_init__(self):
        if self.policy not in AUGMENT_POLICIES:
            raise ValueError(f"Unknown augmentation policy {self.policy!r}; use one of {AUGMENT_POLICIES}.")
        if not _int(self.crop_padding) or self.crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0 (pixels), got {self.crop_padding!r}.")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Model-side preprocessing: resize, channel count, normalisation.

    ``image_size`` None keeps the stored size; ``channels`` 3 turns greyscale into RGB by
    repetition (and 1 averages RGB); ``normalization`` names an entry of NORMALIZATIONS.
    """

    image_size: int | None = None
    channels: int | None = None
    normalization: str = "unit"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown normalization {self.normalization!r}; use one of {sorted(NORMALIZATIONS)}."
            )
        if self.channels not in (None, 1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be None, 1 or 3, got {self.channels!r}.")
        if self.image_size is not None and (not _int(self.image_size) or self.image_size < 1):
            raise ValueError(f"image_size must be None (keep the stored size) or an int >= 1 (pixels), "
                             f"got {self.image_size!r}.")

    def output_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        h, w, c = image_shape
        size = (self.image_size, self.image_size) if self.image_size else (h, w)
        return (*size, self.channels or c)


def _int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a cheap, well-mixed, vectorised hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def augmentation_seed(seed: int, index, epoch) -> np.ndarray:
    """The uint32 augmentation seed of example ``index`` in ``epoch`` (vectorised)."""
    index = np.asarray(index, dtype=np.uint64)
    epoch = np.asarray(epoch, dtype=np.uint64)
    h = _splitmix64(np.uint64(seed) ^ np.uint64(0xA5A5A5A5))
    h = _splitmix64(h ^ epoch)
    h = _splitmix64(h ^ index)
    return (h >> np.uint64(32)).astype(np.uint32)


def _augment_params(aug_seeds: np.ndarray, config: AugmentConfig) -> tuple[np.ndarray, ...]:
    """Crop offsets and flip flags drawn from the seeds by hashing (vectorised, pure)."""
    seeds = np.asarray(aug_seeds, dtype=np.uint64)
    span = np.uint64(2 * config.crop_padding + 1)
    dy = (_splitmix64(seeds ^ np.uint64(1)) % span).astype(np.int64)
    dx = (_splitmix64(seeds ^ np.uint64(2)) % span).astype(np.int64)
    flip = (_splitmix64(seeds ^ np.uint64(3)) & np.uint64(1)).astype(bool)
    return dy, dx, flip & (config.policy == "crop_flip")


def augment_batch(images: np.ndarray, aug_seeds: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Applies ``config`` to uint8 images (B, H, W, C); row b depends only on (image b, seed b)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects images (B, H, W, C), got shape {images.shape}; "
                         f"use augment() for one image.")
    if np.shape(aug_seeds) != images.shape[:1]:
        raise ValueError(f"augment_batch needs one seed per image, shape ({images.shape[0]},), got "
                         f"{np.shape(aug_seeds)}.")
    if config.policy == "none":
        return images
    dy, dx, flip = _augment_params(aug_seeds, config)
    pad = config.crop_padding
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for b in range(len(images)):
        crop = padded[b, dy[b] : dy[b] + h, dx[b] : dx[b] + w]
        out[b] = crop[:, ::-1] if flip[b] else crop
    return out


def augment(image: np.ndarray, aug_seed: int, config: AugmentConfig) -> np.ndarray:
    """Applies ``config`` to one uint8 (H, W, C) image; pure in (image, aug_seed)."""
    return augment_batch(image[None], np.asarray([aug_seed]), config)[0]


def preprocess(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """uint8 (..., H, W, C) → float32 (..., H', W', C'): resized, channel-mapped, normalised."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 images in 0..255, got {images.dtype}; it scales by 1/255 "
                         f"itself (pass the source's images, not already scaled ones).")
    if images.ndim < 3:
        raise ValueError(f"preprocess expects images (..., H, W, C), got shape {images.shape}; add the channel "
                         f"axis (image[..., None]).")
    out_channels = config.channels or images.shape[-1]
    stats = len(NORMALIZATIONS[config.normalization][0])
    if stats not in (1, out_channels):
        raise ValueError(
            f"normalization {config.normalization!r} has {stats} channel statistics, the images "
            f"{out_channels} channels; set channels={stats} (--config.data.channels={stats}) or use a "
            f"normalization for {out_channels}-channel images.")
    if config.image_size and images.shape[-3:-1] != (config.image_size, config.image_size):
        size = (config.image_size, config.image_size)
        flat = images.reshape(-1, *images.shape[-3:])
        resized = [
            np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize(
                size, Image.BILINEAR)).reshape(*size, im.shape[-1])
            for im in flat
        ]
        images = np.stack(resized).reshape(*images.shape[:-3], *size, images.shape[-1])
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if config.channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif config.channels == 1 and x.shape[-1] == 3:
        x = x.mean(axis=-1, keepdims=True)
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[config.normalization])
    return (x - mean) / std


def check_sharding(batch_size: int, process_index: int, process_count: int) -> int:
    if not _int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    if batch_size % process_count:
        raise ValueError(
            f"Global batch size {batch_size} is not divisible by the {process_count} "
            "processes; choose a multiple of the process count."
        )
    return batch_size // process_count


def local_positions(step: int, global_batch: int, local_batch: int, process_index: int):
    """Flat stream positions of this process's rows of global batch ``step``."""
    start = step * global_batch + process_index * local_batch
    return np.arange(start, start + local_batch, dtype=np.int64)


class EpochPermutations:
    """Maps flat stream positions to (epoch, example index); caches recent epochs."""

    def __init__(self, num_examples: int, seed: int, shuffle: bool):
        self.num_examples, self.seed, self.shuffle = num_examples, seed, shuffle
        self._cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            self._cache[epoch] = rng.permutation(self.num_examples)
        return self._cache[epoch]

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        epochs, offsets = np.divmod(positions, self.num_examples)
        if not self.shuffle:
            return epochs, offsets
        indices = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            indices[rows] = self._permutation(int(epoch))[offsets[rows]]
        return epochs, indices


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """grain map step: step number → this process's augmented, preprocessed batch."""

    source: Any
    permutations: EpochPermutations
    seed: int
    global_batch: int
    local_batch: int
    process_index: int
    augment_config: AugmentConfig
    preprocess_config: PreprocessConfig
    view_epochs: int | None = None

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = local_positions(step, self.global_batch, self.local_batch, self.process_index)
        epochs, indices = self.permutations(positions)
        batch = read_batch(self.source, indices)
        view_epochs = epochs if self.view_epochs is None else epochs % self.view_epochs
        aug_seeds = augmentation_seed(self.seed, indices, view_epochs)
        images = augment_batch(batch["image"], aug_seeds, self.augment_config)
        return {
            "image": preprocess(images, self.preprocess_config),
            "label": batch["label"],
            "index": indices,
            "epoch": epochs.astype(np.int32),
            "aug_seed": aug_seeds,
        }


def check_stream(num_steps, seed) -> None:
    """A training stream needs num_steps >= 0 and a seed >= 0 (numpy seeds are unsigned)."""
    if not _int(num_steps) or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}.")
    if not _int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}.")


def maybe_prefetch(dataset: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    if worker_count > 0:
        return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return dataset


def train_iterator(
    source: DataSource,
    *,
    batch_size: int,
    num_steps: int,
    seed: int,
    augment_config: AugmentConfig = AugmentConfig(),
    preprocess_config: PreprocessConfig = PreprocessConfig(),
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    augment_seed: int | None = None,
    view_epochs: int | None = None,
) -> grain.DatasetIterator:
    """The process-local training batches for ``num_steps`` steps, as a grain iterator.

    ``batch_size`` is global.  The iterator's ``get_state()``/``set_state()`` (or orbax via
    ``grain.checkpoint.CheckpointSave``) capture its position exactly.  The order follows
    ``seed``; the augmented views follow ``augment_seed`` (default ``seed``) and, with
    ``view_epochs``, cycle through that many epochs' views: with a logit store's seed and
    ``num_epochs`` a run trained on labels sees exactly the images a distillation run of the
    same ``seed`` sees (``logit_store.distill_iterator``), so the two compare on equal data.
    """
    local_batch = check_sharding(batch_size, process_index, process_count)
    if len(source) < 1:
        raise ValueError(f"The training source {source!r} is empty.")
    check_stream(num_steps, seed)
    augment_seed = seed if augment_seed is None else augment_seed
    if not _int(augment_seed) or augment_seed < 0:
        raise ValueError(f"augment_seed must be an int >= 0 (or None for the order's seed), got {augment_seed!r}.")
    if view_epochs is not None and (not _int(view_epochs) or view_epochs < 1):
        raise ValueError(f"view_epochs must be an int >= 1 (or None for fresh views every epoch), got "
                         f"{view_epochs!r}.")
    make_batch = _TrainBatch(
        source=source,
        permutations=EpochPermutations(len(source), seed, shuffle),
        seed=augment_seed,
        global_batch=batch_size,
        local_batch=local_batch,
        process_index=process_index,
        augment_config=augment_config,
        preprocess_config=preprocess_config,
        view_epochs=view_epochs,
    )
    dataset = grain.MapDataset.range(num_steps).map(make_batch).to_iter_dataset()
    return iter(maybe_prefetch(dataset, worker_count))


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    source: Any
    global_batch: int
    local_batch: int
    process_index: int
    preprocess_config: PreprocessConfig

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = local_positions(step, self.global_batch, self.local_batch, self.process_index)
        valid = positions < len(self.source)
        batch = read_batch(self.source, np.where(valid, positions, 0))
        return {
            "image": preprocess(batch["image"], self.preprocess_config),
            "label": batch["label"],
            "index": np.where(valid, positions, -1),
            "mask": valid.astype(np.float32),
        }


def eval_batches(
    source: DataSource,
    *,
    batch_size: int,
    preprocess_config: PreprocessConfig = PreprocessConfig(),
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of ``source`` once, in order, in fixed-size batches.

    The last batch is padded; ``mask`` is 1 for real examples and 0 for padding, so metrics
    are exact and every process runs the same number of steps.
    """
    local_batch = check_sharding(batch_size, process_index, process_count)
    if len(source) < 1:
        raise ValueError(f"The evaluation source {source!r} is empty; evaluate on at least one example "
                         f"(check num_eval_examples).")
    num_batches = math.ceil(len(source) / batch_size)
    make_batch = _EvalBatch(source, batch_size, local_batch, process_index, preprocess_config)
    dataset = grain.MapDataset.range(num_batches).map(make_batch).to_iter_dataset()
    return iter(maybe_prefetch(dataset, worker_count))
