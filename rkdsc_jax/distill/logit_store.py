"""The FDM teacher-logit store (SPEC §3.2): the teacher's top-K probabilities, computed once.

The teacher runs once over every (example, epoch) pair of the training stream, on exactly
the augmented view the training pipeline produces for that pair, and the store keeps the
top-K probabilities of ``softmax(logits / T)`` (float16), their class indices (int16, or
int32 beyond 32767 classes) and the uint32 augmentation seed of the view.  Distillation
then reads targets instead of running the teacher, and rebuilds the dense target of eq. 6
on device (:func:`dense_soft_targets`).  TinyViT (microsoft/Cream) is the public reference.

On disk (``directory``), numpy and JSON only:

* ``epoch{e:04d}-shard{j:04d}.npy``: the records of examples ``[j·S, min((j+1)·S, N))`` of
  epoch ``e`` in index order (S = ``shard_size``), one structured numpy array with fields
  ``probs`` float16 (K,), sorted descending, ``indices`` int16/int32 (K,), ``aug_seed``
  uint32.  It memory-maps (``np.load(mmap_mode="r")``) on a local disk, so a store larger than RAM is
  fine; on a remote file system (``gs://``, through ``etils.epath``) shards are read whole.
* ``epoch{e:04d}-shard{j:04d}.json``: the shard's sidecar, written after the shard: its
  range, byte count, sha256 and the configuration it was computed with.  A shard counts as
  done (and is skipped on a rerun) only when its sidecar matches the run's configuration
  and the file's bytes match the sidecar's sha256.
* ``manifest.json``: what a reader needs (format version, teacher and dataset identity,
  epochs, K, C, temperature, augmentation, seed, dtypes, every shard with its sha256).
  Every file is written atomically (temporary file + rename), local or remote.

Several processes (hosts) write disjoint shards: global shard ``g = e·J + j`` belongs to
process ``g mod P``.  In a multi-process JAX job the processes then meet at a barrier
(``jax.experimental.multihost_utils.sync_global_devices``) and process 0 writes
``manifest.json``; processes run as separate jobs (``process_count`` > ``jax.process_count()``)
instead poll until every shard's sidecar exists (up to ``wait_timeout_s``).  The other
processes return a manifest of their own shards only.  Readers read ``manifest.json`` and nothing else.

Batches never straddle shards and the last batch of a shard is padded with example 0, so the
teacher always sees one batch shape and every example is computed in the same batch whatever
the process count or however often the run was interrupted: resumed and multi-process
stores equal an uninterrupted single-process one bit for bit (for a deterministic teacher).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Any, Callable, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from rkdsc_jax import files
from rkdsc_jax.data.pipeline import (
    AugmentConfig,
    EpochPermutations,
    PreprocessConfig,
    augment_batch,
    augmentation_seed,
    check_sharding,
    local_positions,
    maybe_prefetch,
    preprocess,
    read_batch,
)
from rkdsc_jax.data.sources import DataSource, SubsetSource
from rkdsc_jax.distill import losses

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_EXAMPLES = 16384
DATASET_FIELDS = ("name", "split", "num_examples", "image_shape", "num_classes", "fingerprint")
VALUE_DTYPE = "float16"
SEED_DTYPE = "uint32"
# float16 values in [0.5, 1) are 2^-11 apart, so storing a probability errs by <= 2^-12;
# this bound leaves room for float32 noise in the teacher's own recomputation.
FLOAT16_PROB_TOLERANCE = 2.0**-11

LogitsFn = Callable[[np.ndarray], Any]


# --- Identities and file format ------------------------------------------------------------


def _json_normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples → lists, numpy scalars → Python)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=files.to_builtin))


def dataset_identity(source: DataSource) -> dict[str, Any]:
    """What a store records about its dataset: ``source.info`` fields, ``len(source)``, and a
    fingerprint (sha256 of up to 8 evenly spaced examples' images and labels), which tells
    apart two datasets with the same name and size (e.g. other synthetic seeds)."""
    info = source.info
    n = len(source)
    digest = hashlib.sha256()
    for i in sorted(set(np.linspace(0, n - 1, min(n, 8)).round().astype(int).tolist())) if n else []:
        record = source[i]
        image = np.ascontiguousarray(np.asarray(record["image"], np.uint8))
        digest.update(f"{i}:{image.shape}:{int(record['label'])}:".encode())
        digest.update(image.tobytes())
    return _json_normal({
        "name": info.name, "split": info.split, "num_examples": n,
        "image_shape": list(info.image_shape), "num_classes": info.num_classes,
        "fingerprint": digest.hexdigest(),
    })


def index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


def record_dtype(top_k: int, index_dtype_name: str) -> np.dtype:
    """The structured dtype of one stored record (packed: K·2 + K·2|4 + 4 bytes)."""
    return np.dtype([
        ("probs", np.dtype(VALUE_DTYPE).newbyteorder("<"), (top_k,)),
        ("indices", np.dtype(index_dtype_name).newbyteorder("<"), (top_k,)),
        ("aug_seed", np.dtype(SEED_DTYPE).newbyteorder("<")),
    ])


def shard_name(epoch: int, shard: int) -> str:
    return f"epoch{epoch:04d}-shard{shard:04d}.npy"


def _sidecar_name(epoch: int, shard: int) -> str:
    return f"epoch{epoch:04d}-shard{shard:04d}.json"


def _sha256_file(path: epath.Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: epath.Path) -> Any | None:
    try:
        return json.loads(epath.Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    epoch: int
    start: int  # First example index (inclusive).
    stop: int  # Last example index (exclusive).
    file: str
    sha256: str
    nbytes: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``."""

    format_version: int
    teacher: dict[str, Any]
    dataset: dict[str, Any]
    num_epochs: int
    top_k: int
    num_classes: int
    temperature: float
    augment: dict[str, Any]  # {"policy", "crop_padding"}.
    seed: int
    shard_size: int
    value_dtype: str
    index_dtype: str
    seed_dtype: str
    shards: tuple[ShardInfo, ...]

    @property
    def num_examples(self) -> int:
        return int(self.dataset["num_examples"])

    @property
    def shards_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.shard_size)

    @property
    def complete(self) -> bool:
        """Whether every shard of every epoch is listed (False for a non-zero process's)."""
        return len(self.shards) == self.num_epochs * self.shards_per_epoch

    @property
    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(self.augment["policy"], int(self.augment["crop_padding"]))

    def to_json(self) -> dict[str, Any]:
        return _json_normal(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Manifest":
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(obj)
        if missing:
            raise ValueError(f"The manifest lacks the fields {sorted(missing)}; it is not a logit-store manifest.")
        values = {k: obj[k] for k in fields}
        values["shards"] = tuple(ShardInfo(**s) for s in obj["shards"])
        return cls(**values)


def _config(manifest_fields: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the configuration that determines a shard's bytes (not num_epochs, so a
    store can be extended to more epochs by rerunning with a larger num_epochs)."""
    keys = ("format_version", "teacher", "dataset", "top_k", "num_classes", "temperature", "augment",
            "seed", "shard_size", "value_dtype", "index_dtype", "seed_dtype")
    return _json_normal({k: manifest_fields[k] for k in keys})


def _differences(got: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {got.get(k)!r} (found) vs {want.get(k)!r} (this run)"
            for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]


# --- Writing -------------------------------------------------------------------------------


def _softmax_topk(logits: np.ndarray, top_k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-K of softmax(logits / T), largest first (ties: lower class index first)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]
    return np.take_along_axis(probs, order, axis=-1), order


@dataclasses.dataclass
class _Job:
    shard: int  # Position in the shard list.
    epoch: int
    start: int
    stop: int


class _ShardWriter:
    """Runs the teacher over one process's shards, batch by batch, and writes them."""

    def __init__(self, logits_fn, source, directory, config, batch_size, log_every_s, total_batches):
        self.logits_fn, self.source, self.directory = logits_fn, source, directory
        self.config, self.batch_size, self.log_every_s = config, batch_size, log_every_s
        self.augment = AugmentConfig(config["augment"]["policy"], config["augment"]["crop_padding"])
        self.dtype = record_dtype(config["top_k"], config["index_dtype"])
        self.buffers: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.written: list[ShardInfo] = []
        self.total_batches, self.done_batches = total_batches, 0
        from rkdsc_jax.train.metrics import Progress  # Imported here: train imports heavier deps.

        self.progress = Progress(max(total_batches, 1), batch_size, name="precompute_logits")
        self._last_log = time.perf_counter()

    def prepare(self, job: _Job) -> tuple[np.ndarray, np.ndarray]:
        indices = np.arange(job.start, job.stop, dtype=np.int64)
        padded = np.concatenate([indices, np.zeros(self.batch_size - len(indices), np.int64)])
        seeds = augmentation_seed(self.config["seed"], padded, job.epoch)
        images = np.asarray(read_batch(self.source, padded)["image"], np.uint8)
        return augment_batch(images, seeds, self.augment), seeds

    def finish(self, job: _Job, shard: tuple[int, int, int, int], output: Any, seeds: np.ndarray) -> None:
        n = job.stop - job.start
        logits = np.asarray(output)
        num_classes = self.config["num_classes"]
        if logits.shape != (self.batch_size, num_classes):
            raise ValueError(
                f"logits_fn returned shape {logits.shape} for a batch of {self.batch_size} images; "
                f"expected ({self.batch_size}, {num_classes}) (num_classes from the teacher identity).")
        logits = logits[:n].astype(np.float32)
        finite = np.isfinite(logits).all(axis=-1)
        if not finite.all():
            bad = (job.start + np.flatnonzero(~finite)).tolist()
            raise ValueError(
                f"logits_fn returned non-finite logits for example indices {bad[:20]}"
                f"{' …' if len(bad) > 20 else ''} of epoch {job.epoch}; check the teacher and these images.")
        probs, order = _softmax_topk(logits, self.config["top_k"], self.config["temperature"])
        epoch, j, start, stop = shard
        if job.shard not in self.buffers:
            self.buffers[job.shard] = np.zeros(stop - start, self.dtype)
            self.filled[job.shard] = 0
        rows = slice(job.start - start, job.stop - start)
        buffer = self.buffers[job.shard]
        buffer["probs"][rows] = probs.astype(np.float16)
        buffer["indices"][rows] = order.astype(self.dtype["indices"].base)
        buffer["aug_seed"][rows] = seeds[:n]
        self.filled[job.shard] += n
        if self.filled[job.shard] == stop - start:
            self.write(epoch, j, start, stop, self.buffers.pop(job.shard))
        self.done_batches += 1
        now = time.perf_counter()
        if now - self._last_log >= self.log_every_s or self.done_batches == self.total_batches:
            self.progress.log(self.done_batches, {"shards_written": len(self.written)})
            self._last_log = now

    def write(self, epoch: int, j: int, start: int, stop: int, records: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, records, allow_pickle=False)
        data = buffer.getvalue()
        name = shard_name(epoch, j)
        files.atomic_write_bytes(self.directory / name, data)
        info = ShardInfo(epoch, start, stop, name, hashlib.sha256(data).hexdigest(), len(data))
        files.atomic_write_json(self.directory / _sidecar_name(epoch, j),
                                {**dataclasses.asdict(info), "config": self.config})
        self.written.append(info)


def _done_shard(directory: epath.Path, epoch: int, j: int, config: dict, verify: bool) -> ShardInfo | None:
    """The shard's info when its sidecar matches ``config`` (and, if ``verify``, its bytes)."""
    sidecar = _read_json(directory / _sidecar_name(epoch, j))
    if sidecar is None:
        return None
    if sidecar.get("config") != config:
        diffs = _differences(sidecar.get("config") or {}, config)
        raise ValueError(
            f"{directory} already holds shard {shard_name(epoch, j)} computed with another "
            f"configuration ({'; '.join(diffs)}). Write this store into a new directory, or delete "
            "the old store's files first.")
    info = ShardInfo(**{k: sidecar[k] for k in ("epoch", "start", "stop", "file", "sha256", "nbytes")})
    path = directory / info.file
    if not path.exists() or path.stat().length != info.nbytes:
        return None
    if verify and _sha256_file(path) != info.sha256:
        logging.warning("Shard %s fails its checksum; recomputing it.", path)
        return None
    return info


def precompute_logits(
    logits_fn: LogitsFn,
    source: DataSource,
    directory: epath.PathLike,
    *,
    teacher_identity: Mapping[str, Any],
    num_epochs: int,
    top_k: int,
    temperature: float = 1.0,
    augment_config: AugmentConfig,
    seed: int,
    batch_size: int = 256,
    shard_size: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    log_every_s: float = 30.0,
    wait_timeout_s: float = 3600.0,
    poll_interval_s: float = 1.0,
) -> Manifest:
    """Runs the teacher once over ``num_epochs`` augmented epochs of ``source`` and stores
    its top-K probabilities in ``directory`` (see the module docstring for the format).

    ``logits_fn(uint8 images (B, H, W, C)) -> (B, C)`` logits, e.g. ``teacher.logits``; it
    always gets ``batch_size`` images.  The view of example ``i`` in epoch ``e`` is
    ``augment_batch(image_i, augmentation_seed(seed, i, e), augment_config)``: with the
    training seed, exactly the view ``data.train_iterator`` produces.

    Rerunning with the same arguments resumes: shards whose file passes its checksum are
    skipped.  With ``process_count`` > 1, each process writes its own shards (global shard
    number mod ``process_count``); process 0 waits up to ``wait_timeout_s`` for the others'
    shards and writes ``manifest.json`` (``TimeoutError`` if they are missing; rerunning
    process 0 later only writes the manifest).  Returns the manifest (on processes other
    than 0, listing this process's shards only).
    """
    num_examples = len(source)
    if num_examples < 1:
        raise ValueError(f"The source {source!r} is empty.")
    if num_epochs < 1 or top_k < 1 or batch_size < 1:
        raise ValueError(f"num_epochs, top_k and batch_size must be >= 1; got {num_epochs}, {top_k}, {batch_size}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    if shard_size is None:
        shard_size = batch_size * max(1, round(DEFAULT_SHARD_EXAMPLES / batch_size))
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    teacher = _json_normal(dict(teacher_identity))
    for key in ("name", "params_sha256"):
        if key not in teacher:
            raise ValueError(f"teacher_identity needs {key!r} (Teacher.identity() has it); got keys {sorted(teacher)}.")
    dataset = dataset_identity(source)

    num_classes = teacher.get("num_classes")
    if num_classes is None:  # Unknown: ask the teacher once.
        probe = np.asarray(logits_fn(read_batch(source, np.arange(batch_size) % num_examples)["image"]))
        if probe.ndim != 2:
            raise ValueError(f"logits_fn must return (B, C) logits, got shape {probe.shape}.")
        num_classes = probe.shape[1]
    num_classes = int(num_classes)
    if top_k > num_classes:
        raise ValueError(f"top_k={top_k} exceeds the teacher's {num_classes} classes; choose top_k <= {num_classes}.")

    config = _config({
        "format_version": FORMAT_VERSION, "teacher": teacher, "dataset": dataset, "top_k": top_k,
        "num_classes": num_classes, "temperature": float(temperature),
        "augment": {"policy": augment_config.policy, "crop_padding": augment_config.crop_padding},
        "seed": int(seed), "shard_size": int(shard_size), "value_dtype": VALUE_DTYPE,
        "index_dtype": index_dtype(num_classes), "seed_dtype": SEED_DTYPE,
    })
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    per_epoch = math.ceil(num_examples / shard_size)
    shards = [(e, j, j * shard_size, min((j + 1) * shard_size, num_examples))
              for e in range(num_epochs) for j in range(per_epoch)]
    mine = [s for g, s in enumerate(shards) if g % process_count == process_index]
    done = {}
    for epoch, j, _, _ in mine:
        info = _done_shard(directory, epoch, j, config, verify=True)
        if info is not None:
            done[(epoch, j)] = info
    todo = [(pos, s) for pos, s in enumerate(mine) if (s[0], s[1]) not in done]
    jobs = [(_Job(pos, s[0], b, min(b + batch_size, s[3])), s)
            for pos, s in todo for b in range(s[2], s[3], batch_size)]
    logging.info(
        "precompute_logits: process %d/%d owns %d of %d shards (%d already done), %d batches of %d to "
        "compute into %s.", process_index, process_count, len(mine), len(shards), len(done), len(jobs),
        batch_size, directory)

    writer = _ShardWriter(logits_fn, source, directory, config, batch_size, log_every_s, len(jobs))
    # One batch in flight: the next batch is read and augmented while the teacher (dispatched
    # asynchronously when it is jitted) runs on the current one.
    pending = None
    for job, shard in jobs:
        images, seeds = writer.prepare(job)
        try:
            output = logits_fn(images)
        except BaseException:
            if pending is not None:  # Keep the work already done: it may complete a shard.
                writer.finish(*pending)
            raise
        if pending is not None:
            writer.finish(*pending)
        pending = (job, shard, output, seeds)
    if pending is not None:
        writer.finish(*pending)

    for info in writer.written:
        done[(info.epoch, info.start // shard_size)] = info
    fields = dict(config, num_epochs=int(num_epochs))

    # One JAX job: every process has written its shards once all reach the barrier.
    barrier = process_count > 1 and jax.process_count() == process_count
    if barrier:
        multihost_utils.sync_global_devices(f"precompute_logits:{directory}")
    if process_index != 0:
        own = tuple(sorted(done.values(), key=lambda s: (s.epoch, s.start)))
        return Manifest(**fields, shards=own)

    # Process 0: read (separate jobs: wait for) every other process's shards, then write the manifest.
    deadline = time.monotonic() + (0.0 if barrier else wait_timeout_s)
    missing = [(e, j) for e, j, _, _ in shards if (e, j) not in done]
    while True:
        still = []
        for epoch, j in missing:
            info = _done_shard(directory, epoch, j, config, verify=False)
            if info is None:
                still.append((epoch, j))
            else:
                done[(epoch, j)] = info
        missing = still
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval_s)
    if missing:
        names = [shard_name(e, j) for e, j in missing]
        owners = sorted({(e * per_epoch + j) % process_count for e, j in missing})
        when = "After every process reached the barrier" if barrier else f"After {wait_timeout_s:.0f} s"
        raise TimeoutError(
            f"{when}, {len(missing)} shards are still missing from {directory} "
            f"({', '.join(names[:5])}{' …' if len(names) > 5 else ''}), owned by processes {owners}. "
            "Run precompute_logits with those process_index values (it resumes), then rerun "
            "process 0 to write manifest.json.")
    manifest = Manifest(**fields, shards=tuple(done[(e, j)] for e, j, _, _ in shards))
    files.atomic_write_json(directory / MANIFEST, manifest.to_json())
    logging.info("precompute_logits: wrote %s (%d shards).", directory / MANIFEST, len(shards))
    return manifest


# --- Reading -------------------------------------------------------------------------------


def dense_soft_targets(probs, indices, num_classes: int) -> jax.Array:
    """SPEC eq. 6 on device: the K probabilities at their classes, and
    ``max(1 − Σ_k probs_k, 0) / (C − K)`` on every other class.  (..., K) → (..., C).
    Concrete inputs are checked first (``losses.check_topk_targets``)."""
    _check_targets(probs, indices, num_classes)
    probs = jnp.asarray(probs, jnp.float32)
    indices = jnp.asarray(indices, jnp.int32)
    k = probs.shape[-1]
    remainder = jnp.maximum(1.0 - probs.sum(-1), 0.0) / max(num_classes - k, 1)
    flat_p, flat_i = probs.reshape(-1, k), indices.reshape(-1, k)
    dense = jnp.broadcast_to(remainder.reshape(-1, 1), (flat_p.shape[0], num_classes))
    dense = jax.vmap(lambda d, i, p: d.at[i].set(p))(dense, flat_i, flat_p)
    return dense.reshape(*probs.shape[:-1], num_classes)


def soft_targets_numpy(probs: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """:func:`dense_soft_targets` in numpy, for host-side use. (B, K) → (B, C) float32."""
    _check_targets(probs, indices, num_classes)
    probs = np.asarray(probs, np.float32)
    k = probs.shape[-1]
    remainder = np.maximum(1.0 - probs.sum(-1), 0.0) / max(num_classes - k, 1)
    dense = np.repeat(remainder[:, None].astype(np.float32), num_classes, axis=1)
    np.put_along_axis(dense, np.asarray(indices, np.int64), probs, axis=1)
    return dense


def _check_targets(probs, indices, num_classes) -> None:
    if jnp.shape(probs) != jnp.shape(indices):
        raise ValueError(f"probs and indices must have the same shape (..., K), got {jnp.shape(probs)} and "
                         f"{jnp.shape(indices)}; pass lookup()'s probs and indices together.")
    if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
        raise ValueError(f"indices must be integer class indices, got dtype {jnp.result_type(indices)}.")
    losses.check_topk_targets(probs, indices, num_classes)


def _check_records(array: np.ndarray, num_classes: int, top_k: int, where: str, fix: str) -> None:
    """Every record of one shard: probabilities finite, >= 0, sorted descending and summing to
    <= 1 (+ float16 rounding); indices in [0, C). Whole-array tests in float32 (numpy's
    float16 is slow); the first bad record is located only on failure."""
    probs = np.asarray(array["probs"], np.float32)
    indices = np.asarray(array["indices"])
    tests = (
        ("NaN, inf or negative probabilities", lambda: ~(np.isfinite(probs) & (probs >= 0)).all(-1)),
        ("probabilities summing to more than 1", lambda: probs.sum(-1) > 1 + losses.topk_sum_tolerance(top_k)),
        ("probabilities not sorted descending", lambda: (probs[:, 1:] > probs[:, :-1]).any(-1)),
        (f"class indices outside [0, {num_classes})", lambda: ((indices < 0) | (indices >= num_classes)).any(-1)),
    )
    ok = (np.isfinite(probs).all() and probs.min(initial=0.0) >= 0,
          probs.sum(-1).max(initial=0.0) <= 1 + losses.topk_sum_tolerance(top_k),
          not (probs[:, 1:] > probs[:, :-1]).any(),
          indices.min(initial=0) >= 0 and indices.max(initial=0) < num_classes)
    for passed, (problem, rows) in zip(ok, tests):
        if not passed:
            row = int(np.flatnonzero(rows())[0])
            raise ValueError(
                f"{where} holds {problem} (record {row}: probs {probs[row][:8].tolist()}, indices "
                f"{indices[row][:8].tolist()}{' …' if top_k > 8 else ''}): the shard is damaged or was not written by precompute_logits. {fix}")


def _check_identity(kind: str, stored: Mapping[str, Any], expected: Mapping[str, Any], keys, directory, fix):
    expected = _json_normal(dict(expected))
    for key in keys:
        if key in expected and stored.get(key) != expected[key]:
            raise ValueError(
                f"The logit store at {directory} was computed for {kind} {key}={stored.get(key)!r}, but the "
                f"expected {kind} has {key}={expected[key]!r}. {fix}")


def _flat(indices, epochs) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    epochs = np.broadcast_to(np.asarray(epochs, np.int64), indices.shape)
    return indices.reshape(-1), epochs.reshape(-1)


class LogitStore:
    """A finished store, opened for reading: ``lookup`` by (example index, epoch).

    ``top_k`` is the K used by this reader (≤ the stored K: the K largest are kept).
    Epochs at or beyond the stored ``num_epochs`` wrap around (TinyViT reuses its stored
    epochs in a longer training run).
    """

    def __init__(self, directory: epath.PathLike, manifest: Manifest, top_k: int, mmap: bool = True):
        directory = epath.Path(directory)
        # Memory maps need a local file; remote shards are read whole.
        mmap = mmap and files.is_local(directory)
        self.directory, self.manifest, self._top_k, self._mmap = directory, manifest, top_k, mmap
        self._dtype = record_dtype(manifest.top_k, manifest.index_dtype)
        self._arrays: list[np.ndarray] | None = None

    @classmethod
    def open(
        cls,
        directory: epath.PathLike,
        *,
        expect_teacher: Mapping[str, Any] | None = None,
        expect_dataset: Mapping[str, Any] | None = None,
        top_k: int | None = None,
        verify_checksums: bool = True,
        mmap: bool = True,
        expect_num_classes: int | None = None,
        check_values: bool = True,
    ) -> "LogitStore":
        """Opens the store in ``directory`` after checking it is the one wanted.

        ``expect_teacher``: e.g. ``teacher.identity()`` (name and params_sha256 compared);
        ``expect_dataset``: e.g. ``dataset_identity(source)`` (its keys among
        DATASET_FIELDS compared); ``expect_num_classes``: the student's number of classes
        (a store of a teacher with other classes is refused: its indices would be dropped).
        Shards are memory-mapped (``mmap``) and, with ``verify_checksums``, their sha256
        checked first; with ``check_values`` every record's probabilities and indices are
        checked (finite, >= 0, sorted, summing to <= 1, indices < C): about the cost of the
        checksum, and it catches damage whose checksum was rewritten or not verified.
        """
        directory = epath.Path(directory)
        path = directory / MANIFEST
        if not path.exists():
            partial = any(p.name.endswith(".npy") for p in directory.iterdir()) if directory.is_dir() else False
            raise FileNotFoundError(
                f"No {MANIFEST} in {directory}: "
                + ("the store's computation was interrupted (or process 0 has not finished). "
                   if partial else "no teacher-logit store was written there. ")
                + "Run precompute_logits(...) for this teacher and dataset into that directory; rerunning "
                "it resumes an interrupted run, and in multi-process runs process 0 writes the manifest "
                "once every process's shards exist.")
        manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(
                f"The logit store at {directory} has format_version={manifest.format_version}; this code "
                f"reads version {FORMAT_VERSION}. Rerun precompute_logits into a new directory.")
        if expect_num_classes is not None and manifest.num_classes != expect_num_classes:
            raise ValueError(
                f"The logit store at {directory} was written by a teacher with {manifest.num_classes} classes; "
                f"this student has {expect_num_classes} classes. Use the store of a teacher fine-tuned on this "
                f"dataset (rerun precompute_logits into a new directory), or give the student "
                f"{manifest.num_classes} classes.")
        if expect_teacher is not None:
            _check_identity("teacher", manifest.teacher, expect_teacher, ("name", "params_sha256"), directory,
                            "Rerun precompute_logits for this teacher (into a new directory), or open the "
                            "store of the teacher it was built with.")
        if expect_dataset is not None:
            _check_identity("dataset", manifest.dataset, expect_dataset, DATASET_FIELDS, directory,
                            "Rerun precompute_logits on this dataset, or train on the dataset the store was built for.")
        if top_k is None:
            top_k = manifest.top_k
        if not 1 <= top_k <= manifest.top_k:
            raise ValueError(
                f"Requested top_k={top_k}, but the logit store at {directory} holds only the top "
                f"{manifest.top_k} probabilities per record. Rerun precompute_logits with top_k >= {top_k}, "
                f"or ask for top_k <= {manifest.top_k}.")
        if not manifest.complete:
            raise ValueError(
                f"The manifest of {directory} lists {len(manifest.shards)} shards, expected "
                f"{manifest.num_epochs * manifest.shards_per_epoch}; rerun precompute_logits to finish the store.")
        store = cls(directory, manifest, top_k, mmap)
        store._load(verify_checksums, check_values)
        return store

    def _load(self, verify_checksums: bool, check_values: bool = False) -> None:
        m = self.manifest
        per_epoch, s = m.shards_per_epoch, m.shard_size
        arrays: list[np.ndarray | None] = [None] * (m.num_epochs * per_epoch)
        rerun = "Rerun precompute_logits with the same arguments: it recomputes missing or corrupted shards."
        for info in m.shards:
            j = info.start // s
            expected = (j * s, min((j + 1) * s, m.num_examples))
            if not 0 <= info.epoch < m.num_epochs or (info.start, info.stop) != expected:
                raise ValueError(f"The manifest of {self.directory} lists shard {info.file} with a range "
                                 f"{info.epoch}:[{info.start}, {info.stop}) outside the store's layout.")
            path = self.directory / info.file
            if not path.exists():
                raise ValueError(f"Shard {info.file} of the logit store at {self.directory} is missing. {rerun}")
            if verify_checksums:
                digest = _sha256_file(path)
                if digest != info.sha256:
                    raise ValueError(
                        f"Shard {info.file} of the logit store at {self.directory} fails its checksum "
                        f"(sha256 {digest[:16]}…, manifest says {info.sha256[:16]}…): the file is "
                        f"corrupted. {rerun}")
            try:
                if self._mmap:
                    array = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
                else:
                    array = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
            except Exception as e:  # A damaged header when checksums are not verified.
                raise ValueError(f"Shard {info.file} of the logit store at {self.directory} cannot be "
                                 f"read ({e}). {rerun}") from e
            if array.dtype != self._dtype or array.shape != (info.stop - info.start,):
                raise ValueError(
                    f"Shard {info.file} of the logit store at {self.directory} holds {array.dtype} "
                    f"{array.shape}, expected {self._dtype} ({info.stop - info.start},). {rerun}")
            if check_values:
                _check_records(array, m.num_classes, m.top_k,
                               f"Shard {info.file} of the logit store at {self.directory}", rerun)
            arrays[info.epoch * per_epoch + j] = array
        if any(a is None for a in arrays):
            raise ValueError(f"The manifest of {self.directory} does not cover every shard. {rerun}")
        self._arrays = arrays

    # Pickling (grain worker processes) reopens the memory maps instead of copying them.
    def __getstate__(self):
        state = dict(self.__dict__)
        if self._mmap:
            state["_arrays"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._arrays is None:
            self._load(verify_checksums=False)

    @property
    def num_epochs(self) -> int:
        return self.manifest.num_epochs

    @property
    def top_k(self) -> int:
        return self._top_k

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def num_examples(self) -> int:
        return self.manifest.num_examples

    @property
    def temperature(self) -> float:
        return self.manifest.temperature

    @property
    def augment_config(self) -> AugmentConfig:
        return self.manifest.augment_config

    def check_dataset(self, source: DataSource) -> None:
        """Raises ValueError unless the store was built for ``source``."""
        _check_identity("dataset", self.manifest.dataset, dataset_identity(source), DATASET_FIELDS, self.directory,
                        "Rerun precompute_logits on this dataset, or use the dataset the store was built for.")

    def _records(self, indices, epochs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        epochs = np.broadcast_to(np.asarray(epochs, np.int64), indices.shape)
        flat_i, flat_e = indices.reshape(-1), epochs.reshape(-1)
        if flat_i.size and (flat_i.min() < 0 or flat_i.max() >= self.num_examples):
            raise IndexError(f"Example indices must be in [0, {self.num_examples}); got "
                             f"[{flat_i.min()}, {flat_i.max()}].")
        if flat_e.size and flat_e.min() < 0:
            raise IndexError(f"Epochs must be >= 0, got {flat_e.min()}.")
        s, per_epoch = self.manifest.shard_size, self.manifest.shards_per_epoch
        shard = flat_i // s
        key = (flat_e % self.num_epochs) * per_epoch + shard
        offset = flat_i - shard * s
        out = np.empty(flat_i.shape, self._dtype)
        for k in np.unique(key):
            rows = key == k
            out[rows] = self._arrays[k][offset[rows]]
        return out, indices.shape, flat_e

    def lookup(self, indices, epochs) -> dict[str, np.ndarray]:
        """The stored records of examples ``indices`` in ``epochs`` (broadcast; epochs wrap
        modulo num_epochs): ``probs`` float32 (..., K), ``indices`` int32 (..., K), largest
        first, and the view's ``aug_seed`` uint32 (...)."""
        out, shape, _ = self._records(indices, epochs)
        k = self._top_k
        return {
            "probs": out["probs"][:, :k].astype(np.float32).reshape(*shape, k),
            "indices": out["indices"][:, :k].astype(np.int32).reshape(*shape, k),
            "aug_seed": out["aug_seed"].astype(np.uint32).reshape(shape),
        }

    def soft_targets(self, indices, epochs) -> np.ndarray:
        """Dense (B, C) float32 targets of SPEC eq. 6 (host-side; on device use
        :func:`dense_soft_targets` on ``lookup``'s probs and indices)."""
        indices, epochs = _flat(indices, epochs)
        record = self.lookup(indices, epochs)
        return soft_targets_numpy(record["probs"], record["indices"], self.num_classes)

    def replay(self, source: DataSource, indices, epochs) -> np.ndarray:
        """The uint8 augmented views the stored targets belong to."""
        indices, epochs = _flat(indices, epochs)
        seeds = self.lookup(indices, epochs)["aug_seed"]
        return augment_batch(np.asarray(read_batch(source, indices)["image"], np.uint8), seeds, self.augment_config)

    def nbytes(self) -> int:
        """Bytes on disk of the shard files (the manifest and sidecars are not counted)."""
        return sum((self.directory / s.file).stat().length for s in self.manifest.shards)

    def full_logits_nbytes(self) -> int:
        """What storing float32 logits for every record would cost: N·E·C·4 bytes."""
        return self.num_examples * self.num_epochs * self.num_classes * 4

    def __repr__(self) -> str:
        return (f"LogitStore({str(self.directory)!r}, teacher={self.manifest.teacher.get('name')!r}, "
                f"N={self.num_examples}, epochs={self.num_epochs}, K={self.top_k}, C={self.num_classes})")


# --- Distillation pipeline -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _DistillBatch:
    """grain map step: step number → this process's batch with its stored teacher targets."""

    source: Any
    store: LogitStore
    permutations: EpochPermutations
    global_batch: int
    local_batch: int
    process_index: int
    preprocess_config: PreprocessConfig
    store_rows: np.ndarray | None = None  # Subset position → the store's example index.

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        positions = local_positions(step, self.global_batch, self.local_batch, self.process_index)
        epochs, positions_in_source = self.permutations(positions)
        batch = read_batch(self.source, positions_in_source)
        indices = positions_in_source if self.store_rows is None else self.store_rows[positions_in_source]
        record = self.store.lookup(indices, epochs)
        images = augment_batch(np.asarray(batch["image"], np.uint8), record["aug_seed"], self.store.augment_config)
        return {
            "image": preprocess(images, self.preprocess_config),
            "label": batch["label"],
            "index": indices,
            "epoch": epochs.astype(np.int32),
            "aug_seed": record["aug_seed"],
            "teacher_probs": record["probs"],
            "teacher_indices": record["indices"],
        }


def distill_iterator(
    source: DataSource,
    store: LogitStore,
    *,
    batch_size: int,
    num_steps: int,
    seed: int,
    preprocess_config: PreprocessConfig = PreprocessConfig(),
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Training batches with the stored teacher targets, as a grain iterator.

    Ordering is ``data.train_iterator``'s (same ``seed``, ``batch_size`` and sharding give the
    same (index, epoch) stream, and ``get_state``/``set_state`` resume exactly).  Each row's
    image is the stored augmented view of (index, epoch mod store.num_epochs), rebuilt from
    the stored ``aug_seed`` with the store's augmentation; ``epoch`` is the stream epoch.
    ``teacher_probs`` (B, K) float32 and ``teacher_indices`` (B, K) int32 stay sparse; the
    train step rebuilds eq. 6 with :func:`dense_soft_targets`.  If ``seed`` differs from the
    seed the store was built with, only the order follows ``seed``: the views are still the
    stored ones (their seeds define them), so images and targets always match.

    A ``SubsetSource`` of the dataset the store was built for (e.g. a random subset for a
    training-set-size sweep) reads its examples' records; ``index`` is then the index in
    the full dataset.
    """
    local_batch = check_sharding(batch_size, process_index, process_count)
    if len(source) < 1:
        raise ValueError(f"The training source {source!r} is empty.")
    full, store_rows = source, None
    if isinstance(source, SubsetSource) and len(source.parent) == store.num_examples:
        full, store_rows = source.parent, source.indices
    if len(full) != store.num_examples:
        raise ValueError(f"The logit store at {store.directory} holds {store.num_examples} examples, the "
                         f"source {source!r} has {len(source)}. Rerun precompute_logits on this dataset.")
    store.check_dataset(full)
    if seed != store.manifest.seed:
        logging.info("distill_iterator: order from seed %d, augmented views from the store's seeds (built "
                     "with seed %d).", seed, store.manifest.seed)
    make_batch = _DistillBatch(
        source=source, store=store, permutations=EpochPermutations(len(source), seed, shuffle),
        global_batch=batch_size, local_batch=local_batch, process_index=process_index,
        preprocess_config=preprocess_config, store_rows=store_rows,
    )
    dataset = grain.MapDataset.range(num_steps).map(make_batch).to_iter_dataset()
    return iter(maybe_prefetch(dataset, worker_count))


# --- Verification and accounting -----------------------------------------------------------


def verify(store: LogitStore, logits_fn: LogitsFn, source: DataSource, *, num_samples: int = 256,
           seed: int = 0, batch_size: int | None = None) -> dict[str, Any]:
    """Re-runs the teacher on a random sample of stored (index, epoch) records, on the
    replayed views, and compares with the store (TinyViT's check of saved logits).

    ``max_abs_prob_diff``/``mean_abs_prob_diff``: |p_teacher − p_stored| at the stored
    classes; ``topk_index_agreement``: mean fraction of a record's stored top-K classes that
    are in the recomputed top-K.  ``ok`` when the first is within float16 rounding
    (``tolerance``) and the last is 1.  Batches are padded to one shape (one compile).
    """
    total = store.num_examples * store.num_epochs
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(total, size=min(num_samples, total), replace=False))
    epochs, indices = np.divmod(flat, store.num_examples)
    batch_size = batch_size or min(len(flat), 256)
    k = store.top_k
    diffs, agreement = [], []
    for b in range(0, len(flat), batch_size):
        idx, ep = indices[b:b + batch_size], epochs[b:b + batch_size]
        n = len(idx)
        images = store.replay(source, idx, ep)
        if n < batch_size:
            images = np.concatenate([images, np.repeat(images[:1], batch_size - n, axis=0)])
        logits = np.asarray(logits_fn(images))[:n].astype(np.float32)
        if logits.shape[-1] != store.num_classes:
            raise ValueError(f"logits_fn returns {logits.shape[-1]} classes, the store has {store.num_classes}.")
        record = store.lookup(idx, ep)
        z = logits.astype(np.float64) / store.temperature
        z -= z.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        diffs.append(np.abs(np.take_along_axis(probs, record["indices"], -1) - record["probs"]))
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        agreement.append([len(set(a) & set(t)) / k for a, t in zip(record["indices"].tolist(), top.tolist())])
    diffs = np.concatenate(diffs)
    result = {
        "max_abs_prob_diff": float(diffs.max()),
        "mean_abs_prob_diff": float(diffs.mean()),
        "topk_index_agreement": float(np.mean(np.concatenate([np.asarray(a) for a in agreement]))),
        "num_samples": int(len(flat)),
        "tolerance": FLOAT16_PROB_TOLERANCE,
    }
    result["ok"] = result["max_abs_prob_diff"] <= 2 * FLOAT16_PROB_TOLERANCE and result["topk_index_agreement"] == 1.0
    return result


def store_summary(store: LogitStore, source: DataSource) -> dict[str, Any]:
    """Storage accounting for the paper's comparison (SPEC §3.2): the store against float32
    full logits, against storing every augmented view, and against the raw dataset."""
    if len(source) != store.num_examples:
        raise ValueError(f"The store holds {store.num_examples} examples, the source {len(source)}.")
    n, e, c, k = store.num_examples, store.num_epochs, store.num_classes, store.manifest.top_k
    records = n * e
    on_disk = store.nbytes()
    image_bytes = int(np.prod(source.info.image_shape))
    full = store.full_logits_nbytes()
    views = records * image_bytes
    raw = n * image_bytes
    return {
        "num_examples": n,
        "num_epochs": e,
        "records": records,
        "top_k": k,
        "num_classes": c,
        "record_nbytes": record_dtype(k, store.manifest.index_dtype).itemsize,
        "bytes_on_disk": on_disk,
        "bytes_per_record": on_disk / records,
        "full_logits_nbytes": full,
        "augmented_images_nbytes": views,
        "raw_dataset_nbytes": raw,
        "full_logits_over_store": full / on_disk,
        "augmented_images_over_store": views / on_disk,
        "store_over_raw_dataset": on_disk / raw,
    }
