"""The teacher-logit store's on-disk format: one ``.npy`` per shard against ArrayRecord.

Issue 17 asked whether ArrayRecord (what grain reads natively) would serve the store better
than its numpy shards.  Both hold the same records (top-K float16 probabilities, int16 class
indices, the uint32 augmentation seed), written from one store that ``precompute_logits``
built with a cheap linear "teacher" over ImageNet's 1000 classes.  Per format, in one run:
bytes on disk, write time, open time, and random lookups of training batches (``batch``
random (example, epoch) pairs, decoded to the structured records distillation reads),
median of ``repeats``.  ArrayRecord is measured with ``group_size:1`` (one record per
chunk, the setting for random access) and with its default options (chunks of 65536 records, compressed).

    python -m benchmarks.logit_store_format [--examples=65536] [--epochs=4] [--top_k=10]
        [--batch=256] [--repeats=50] [--out=benchmarks/results/logit_store_format.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from array_record.python import array_record_data_source, array_record_module

from benchmarks.channel_throughput import median_seconds
from rkdsc_jax import files
from rkdsc_jax.data import sources
from rkdsc_jax.data.pipeline import AugmentConfig
from rkdsc_jax.distill import logit_store

NUM_CLASSES = 1000
IMAGE_SHAPE = (4, 4, 3)  # The teacher's input size does not matter to the store.


def build_store(directory: str, examples: int, epochs: int, top_k: int) -> logit_store.LogitStore:
    rng = np.random.default_rng(0)
    weights = rng.normal(0.0, 4.0, (int(np.prod(IMAGE_SHAPE)), NUM_CLASSES)).astype(np.float32)
    teacher = lambda images: (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ weights  # noqa: E731
    source = sources.synthetic("train", examples, IMAGE_SHAPE, NUM_CLASSES, seed=0)
    logit_store.precompute_logits(
        teacher, source, directory, teacher_identity={"name": "linear", "params_sha256": "0"},
        num_epochs=epochs, top_k=top_k, augment_config=AugmentConfig(), seed=0, batch_size=1024,
        log_every_s=1e9)
    return logit_store.LogitStore.open(directory)


def _directory_bytes(directory: str, suffix: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(suffix))


def bench_npy(store: logit_store.LogitStore, directory: str, queries, repeats: int) -> dict:
    shards = [np.load(os.path.join(directory, s.file)) for s in store.manifest.shards]
    copy = tempfile.mkdtemp()
    t0 = time.perf_counter()
    for s, array in zip(store.manifest.shards, shards):
        files.atomic_write_bytes(os.path.join(copy, s.file), _npy_bytes(array))
    write_s = time.perf_counter() - t0
    shutil.rmtree(copy)
    t0 = time.perf_counter()
    opened = logit_store.LogitStore.open(directory, verify_checksums=False, check_values=False)
    open_s = time.perf_counter() - t0
    lookup_s = median_seconds(lambda r: opened._records(*queries[r % len(queries)]), repeats)
    return dict(format="npy shards (mmap)", bytes=_directory_bytes(directory, ".npy"), write_s=write_s,
                open_s=open_s, lookup_s=lookup_s)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def bench_array_record(store: logit_store.LogitStore, directory: str, queries, repeats: int,
                       options: str) -> dict:
    """One ArrayRecord file per shard, one record per example; key = epoch·N + example."""
    out = tempfile.mkdtemp()
    paths = []
    shards = [np.load(os.path.join(directory, s.file)) for s in store.manifest.shards]  # Read outside the timing.
    t0 = time.perf_counter()
    for s, array in zip(store.manifest.shards, shards):  # The manifest lists shards epoch-major, in index order.
        path = os.path.join(out, s.file.replace(".npy", ".array_record"))
        writer = array_record_module.ArrayRecordWriter(path, options)
        for row in array:
            writer.write(row.tobytes())
        writer.close()
        paths.append(path)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_source = array_record_data_source.ArrayRecordDataSource(paths)
    open_s = time.perf_counter() - t0
    n, dtype = store.num_examples, logit_store.record_dtype(store.manifest.top_k, store.manifest.index_dtype)

    def lookup(r):
        indices, epochs = queries[r % len(queries)]
        records = data_source.__getitems__((epochs * n + indices).tolist())
        return np.frombuffer(b"".join(records), dtype)

    lookup_s = median_seconds(lookup, repeats)
    indices, epochs = queries[0]
    np.testing.assert_array_equal(lookup(0), store._records(indices, epochs)[0])  # Same records.
    row = dict(format=f"ArrayRecord ({options})", bytes=_directory_bytes(out, ".array_record"),
               write_s=write_s, open_s=open_s, lookup_s=lookup_s)
    shutil.rmtree(out)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/logit_store_format.json")
    args = parser.parse_args()

    directory = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        store = build_store(directory, args.examples, args.epochs, args.top_k)
        print(f"built a store of {args.examples} examples × {args.epochs} epochs, K={args.top_k}, "
              f"C={NUM_CLASSES} in {time.perf_counter() - t0:.1f} s")
        rng = np.random.default_rng(1)
        queries = [(rng.integers(0, args.examples, args.batch), rng.integers(0, args.epochs, args.batch))
                   for _ in range(8)]
        rows = [bench_npy(store, directory, queries, args.repeats)]
        for options in ("group_size:1,uncompressed", "group_size:65536"):
            rows.append(bench_array_record(store, directory, queries, args.repeats, options))
    finally:
        shutil.rmtree(directory)

    for row in rows:
        row["records_per_s"] = args.batch / row["lookup_s"]
    base = rows[0]["lookup_s"]
    header = f"{'format':>38} {'MB on disk':>10} {'write s':>8} {'open s':>7} {'lookup/batch':>13} {'records/s':>10} {'vs npy':>7}"
    print(f"random lookups of {args.batch} (example, epoch) pairs, median of {args.repeats}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['format']:>38} {r['bytes'] / 1e6:>10.2f} {r['write_s']:>8.2f} {r['open_s']:>7.3f} "
              f"{r['lookup_s'] * 1e3:>10.2f} ms {r['records_per_s']:>10.3g} {r['lookup_s'] / base:>6.1f}×")
    files.atomic_write_json(args.out, dict(
        benchmark="logit_store_format", examples=args.examples, epochs=args.epochs, top_k=args.top_k,
        num_classes=NUM_CLASSES, batch=args.batch, repeats=args.repeats, machine=platform.machine(),
        cpu_count=os.cpu_count(), timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"), results=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
