"""Random-access image-classification sources behind one interface.

Every source is a ``grain``-compatible random-access data source (``__len__`` and
``__getitem__``) whose records are ``{"image": uint8 (H, W, C), "label": int32}``, plus an
``info`` describing the dataset.  Pipelines (``rkdsc_jax.data.pipeline``) add the example
index, the epoch and the augmentation seed to each record.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import math
import os
import struct
from typing import Any, Protocol, Sequence

import numpy as np
from etils import epath

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a logit store need to know about a source."""

    name: str
    split: str
    num_examples: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the stored uint8 images.
    class_names: tuple[str, ...] = ()


class DataSource(Protocol):
    info: DatasetInfo

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class ArraySource:
    """A source over in-memory arrays: ``images`` (N, H, W, C) uint8, ``labels`` (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 of shape (N, H, W, C), got {images.dtype} {images.shape}."
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}."
            )
        labels = np.asarray(labels)
        if labels.size and (not np.issubdtype(labels.dtype, np.number) or np.iscomplexobj(labels)
                            or not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels))):
            raise ValueError(f"labels must be integer class indices, got {labels.dtype} values such as "
                             f"{labels[:4].tolist()}.")
        bad = labels[(labels < 0) | (labels >= info.num_classes)] if labels.size else labels
        if bad.size:
            raise ValueError(f"labels must lie in [0, num_classes={info.num_classes}), got {bad[:4].tolist()}; "
                             f"fix the labels or the DatasetInfo's num_classes.")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.info = info

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": self.images[indices], "label": self.labels[indices]}

    def __repr__(self) -> str:
        return f"ArraySource({self.info.name}/{self.info.split}, n={len(self)})"


def _read_idx(path: epath.PathLike) -> np.ndarray:
    """Reads one (optionally gzipped) IDX file, the format of (Fashion-)MNIST, from any file system."""
    path = epath.Path(path)
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}).")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} bytes.")
    return array.reshape(shape)


def fashion_mnist(split: str = "train", data_dir: str | None = None) -> ArraySource:
    """Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` by default)."""
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST has splits {sorted(_FASHION_MNIST_FILES)}, not {split!r}.")
    data_dir = data_dir or FASHION_MNIST_DIR
    image_file, label_file = (epath.Path(data_dir) / f for f in _FASHION_MNIST_FILES[split])
    unzipped = lambda p: p.parent / p.name[: -len(".gz")]  # noqa: E731
    for path in (image_file, label_file):
        if not path.exists() and not unzipped(path).exists():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found. Install it with "
                "`sudo apt-get install dataset-fashion-mnist` (files land in "
                f"{FASHION_MNIST_DIR}), or download the four *-ubyte.gz files from "
                "https://github.com/zalandoresearch/fashion-mnist and pass their folder "
                "as data_dir (--config.data.data_dir=...)."
            )
    resolve = lambda p: p if p.exists() else unzipped(p)  # noqa: E731
    images = _read_idx(resolve(image_file))[..., None]
    labels = _read_idx(resolve(label_file))
    info = DatasetInfo(
        name="fashion_mnist", split=split, num_examples=len(labels), num_classes=10,
        image_shape=tuple(images.shape[1:]), class_names=FASHION_MNIST_CLASSES,
    )
    return ArraySource(images, labels, info)


def synthetic(
    split: str = "train",
    num_examples: int = 512,
    image_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 48.0,
) -> ArraySource:
    """A learnable synthetic dataset for tests: one fixed random template per class + noise.

    Templates depend only on ``seed`` (shared by all splits); the noise depends on the split.
    """
    if not _positive_int(num_examples) or not _positive_int(num_classes):
        raise ValueError(f"synthetic needs num_examples >= 1 and num_classes >= 1 (ints), got "
                         f"num_examples={num_examples!r}, num_classes={num_classes!r}.")
    if len(tuple(image_shape)) != 3 or not all(_positive_int(d) for d in image_shape):
        raise ValueError(f"synthetic needs image_shape (H, W, C) of positive ints, got {tuple(image_shape)}.")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"synthetic needs a finite noise >= 0 (pixel std), got {noise!r}.")
    templates = np.random.default_rng(seed).uniform(0, 255, (num_classes, *image_shape))
    split_seed = {"train": 1, "validation": 2, "test": 3}.get(split, 4)
    rng = np.random.default_rng([seed, split_seed])
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    images = templates[labels] + rng.normal(0.0, noise, (num_examples, *image_shape))
    info = DatasetInfo(
        name="synthetic", split=split, num_examples=num_examples, num_classes=num_classes,
        image_shape=tuple(image_shape),
        class_names=tuple(f"class_{c}" for c in range(num_classes)),
    )
    return ArraySource(np.clip(images, 0, 255).astype(np.uint8), labels, info)


_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def _list_images(directory: str) -> list[str]:
    return sorted(os.path.join(root, f) for root, _, names in os.walk(directory) for f in names
                  if f.lower().endswith(_IMAGE_SUFFIXES))


def image_folder(split: str, data_dir: str | None, name: str = "image_folder") -> ArraySource:
    """Images in class folders, read into memory: ``data_dir/<split>/<class>/**/*.jpg``.

    Also reads Tiny-ImageNet as unpacked from ``tiny-imagenet-200.zip`` (it is not in TFDS's
    catalogue): ``train/<wnid>/images/*.JPEG``, and ``val/images`` labelled by
    ``val/val_annotations.txt``.  Classes are ``data_dir/wnids.txt`` when present (else the
    sorted folders of ``train``); class names come from ``words.txt`` when present (its first
    synonym, for CLIP prompts).  All images must share one size and colour mode.
    """
    from PIL import Image

    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"{name}: no data directory {data_dir!r}. Pass --config.data.data_dir=DIR with DIR/train/<class>/ "
            "image folders (e.g. Tiny-ImageNet unpacked from tiny-imagenet-200.zip; see BUILD.md).")
    split_dir = os.path.join(data_dir, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{name}: split {split!r} not found: {split_dir} is not a directory "
                                f"(found {sorted(os.listdir(data_dir))}).")
    wnids_path = os.path.join(data_dir, "wnids.txt")
    if os.path.exists(wnids_path):
        classes = [line.strip() for line in open(wnids_path) if line.strip()]
    else:
        classes = sorted(d for d in os.listdir(os.path.join(data_dir, "train"))
                         if os.path.isdir(os.path.join(data_dir, "train", d)))
    index = {c: i for i, c in enumerate(classes)}
    annotations = os.path.join(split_dir, f"{split}_annotations.txt")
    if os.path.exists(annotations):  # Tiny-ImageNet's validation layout.
        rows = [line.split("\t")[:2] for line in open(annotations) if line.strip()]
        paths = [os.path.join(split_dir, "images", f) for f, _ in rows]
        wanted = [w for _, w in rows]
    else:
        paths, wanted = [], []
        for c in sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))):
            found = _list_images(os.path.join(split_dir, c))
            paths += found
            wanted += [c] * len(found)
    unknown = sorted(set(wanted) - set(index))
    if unknown:
        raise ValueError(f"{name}/{split}: classes {unknown[:5]} are not among the {len(classes)} training classes.")
    if not paths:
        raise FileNotFoundError(f"{name}/{split}: no images ({', '.join(_IMAGE_SUFFIXES)}) under {split_dir}.")
    first = np.asarray(Image.open(paths[0]))
    mode = "L" if first.ndim == 2 else "RGB"
    images = np.empty((len(paths), first.shape[0], first.shape[1], 1 if mode == "L" else 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode))
        if array.shape[:2] != images.shape[1:3]:
            raise ValueError(f"{path} is {array.shape[1]}×{array.shape[0]}, the others {images.shape[2]}×"
                             f"{images.shape[1]}: resize the folder's images to one size first.")
        images[i] = array.reshape(images.shape[1:])
    words_path = os.path.join(data_dir, "words.txt")
    names = dict(line.rstrip("\n").split("\t", 1) for line in open(words_path) if "\t" in line) \
        if os.path.exists(words_path) else {}
    class_names = tuple(names.get(c, c).split(",")[0].strip() for c in classes)
    labels = np.array([index[w] for w in wanted], np.int32)
    info = DatasetInfo(name=name, split=split, num_examples=len(labels), num_classes=len(classes),
                       image_shape=tuple(images.shape[1:]), class_names=class_names)
    return ArraySource(images, labels, info)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C): shorter side to ``size`` (bicubic), then the central size × size crop."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).resize((new_w, new_h), Image.BICUBIC)
    resized = np.asarray(pil).reshape(new_h, new_w, image.shape[-1])
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size]


class TfdsSource:
    """Any TFDS image-classification dataset through ``tfds.data_source`` (no TensorFlow).

    The dataset must already be prepared in ``data_dir`` in the ``array_record`` format
    (``tfds build NAME --file_format=array_record`` once, which needs TensorFlow; see
    BUILD.md).  Nothing is downloaded here.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label", resize_to: int | None = None):
        import tensorflow_datasets as tfds  # Heavy import: only when a TFDS source is used.

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(
                f"TFDS has no dataset named {name!r}, nor is it a local source {LOCAL_SOURCES}; check the "
                f"spelling (--config.data.name; TFDS names: tfds.list_builders()).") from e
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except (NotImplementedError, AssertionError, FileNotFoundError) as e:
            raise FileNotFoundError(
                f"TFDS dataset {name!r} ({split}) is not prepared for random access in "
                f"{builder.data_dir!r}. Prepare it once with `tfds build {name} "
                "--file_format=array_record --data_dir=DIR` (needs tensorflow; imagenet2012 "
                "also needs its manual-download tars), then pass --config.data.data_dir=DIR."
            ) from e
        self._image_key, self._label_key = image_key, label_key
        features = builder.info.features
        shape = tuple(features[image_key].shape)
        if None in shape[:2] and not resize_to:
            raise ValueError(f"TFDS {name!r} images have varying sizes {shape}; pass resize_to=N "
                             "(--config.data.resize_to=N, e.g. 256 for ImageNet) so batches can be stacked.")
        self._resize_to = resize_to
        if resize_to:
            shape = (resize_to, resize_to, shape[2] or 3)
        self.info = DatasetInfo(
            name=name, split=split, num_examples=len(self._source),
            num_classes=features[label_key].num_classes,
            image_shape=shape, class_names=tuple(features[label_key].names),
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[int(index)]
        image = np.asarray(record[self._image_key], dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if self._resize_to:
            image = resize_center_crop(image, self._resize_to)
        return {"image": image, "label": np.int32(record[self._label_key])}

    def __repr__(self) -> str:
        return f"TfdsSource({self.info.name}/{self.info.split}, n={len(self)})"


def read_batch(source: DataSource, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Stacks ``source[i]`` for ``indices``; uses the source's ``get_batch`` when it has one."""
    if hasattr(source, "get_batch"):
        return source.get_batch(indices)
    records = [source[int(i)] for i in indices]
    return {
        "image": np.stack([np.asarray(r["image"], np.uint8) for r in records]),
        "label": np.asarray([r["label"] for r in records], np.int32),
    }


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


class SubsetSource:
    """A view of ``source`` restricted to ``indices`` (used for train/validation splits)."""

    def __init__(self, source: DataSource, indices: np.ndarray, split: str):
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"SubsetSource needs a 1-D array of integer indices, got {indices.dtype} {indices.shape}.")
        if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
            raise IndexError(f"SubsetSource indices must lie in [0, {len(source)}) for {source!r}, got "
                             f"[{indices.min()}, {indices.max()}].")
        self._source = source
        self.parent = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.info = dataclasses.replace(source.info, split=split, num_examples=len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self.indices[index])]

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return read_batch(self._source, self.indices[indices])

    def __repr__(self) -> str:
        return f"SubsetSource({self.info.name}/{self.info.split}, n={len(self)})"


def split_train_validation(
    source: DataSource, validation_fraction: float, seed: int = 0
) -> tuple[SubsetSource, SubsetSource]:
    """A reproducible split of ``source`` into disjoint train and validation views.

    The split depends only on (len(source), validation_fraction, seed), never on the
    device or process count.  DARTS searches use ``validation_fraction=0.5``.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    permutation = np.random.default_rng([seed, len(source)]).permutation(len(source))
    num_val = int(round(len(source) * validation_fraction))
    if num_val == 0 or num_val == len(source):
        raise ValueError(
            f"validation_fraction={validation_fraction} of {len(source)} examples leaves one "
            "side empty; use a fraction that keeps at least one example on each side."
        )
    val, train = np.sort(permutation[:num_val]), np.sort(permutation[num_val:])
    return SubsetSource(source, train, "train"), SubsetSource(source, val, "validation")


def take(source: DataSource, num_examples: int | None) -> DataSource:
    """The first ``num_examples`` of ``source`` (all of it when None); for quick runs."""
    if num_examples is None:
        return source
    if not _positive_int(num_examples) or num_examples > len(source):
        raise ValueError(
            f"num_examples={num_examples!r}: {source!r} has {len(source)} examples; ask for an int in "
            f"[1, {len(source)}] (e.g. --config.data.num_train_examples), or None for all of them.")
    if num_examples == len(source):
        return source
    return SubsetSource(source, np.arange(num_examples), source.info.split)


LOCAL_SOURCES = ("fashion_mnist", "synthetic", "image_folder", "tiny_imagenet")


def get_source(name: str, split: str, data_dir: str | None = None, **kwargs) -> DataSource:
    """Builds a source by name: ``fashion_mnist``, ``synthetic``, ``image_folder`` or
    ``tiny_imagenet`` (class folders under ``data_dir``, see ``image_folder``), or ``tfds:NAME``.

    Any other name is taken as a TFDS dataset name (``cifar10``, ``imagenet2012``, ...).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}; use one of {LOCAL_SOURCES} "
                         f"or a TFDS name.")
    close = difflib.get_close_matches(name, LOCAL_SOURCES, n=1, cutoff=0.75)
    if name not in LOCAL_SOURCES and close:  # A typo of a local name, not a TFDS dataset.
        raise ValueError(f"unknown dataset {name!r}; did you mean {close[0]!r}? The local sources are "
                         f"{LOCAL_SOURCES}; other names are TFDS datasets (tfds:NAME).")
    if name in ("fashion_mnist", "image_folder", "tiny_imagenet") and kwargs:
        raise ValueError(f"dataset {name!r} takes no options {sorted(kwargs)}; resize with "
                         f"--config.data.image_size instead (resize_to is for TFDS images of varying size).")
    if name == "fashion_mnist":
        return fashion_mnist(split, data_dir)
    if name in ("image_folder", "tiny_imagenet"):
        return image_folder(split, data_dir, name)
    if name == "synthetic":
        return synthetic(split, **kwargs)
    return TfdsSource(name.removeprefix("tfds:"), split, data_dir, **kwargs)
