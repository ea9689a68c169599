"""A ``gs://`` workdir runs end to end: a short classifier and a teacher-logit store.

The bucket is faked locally with ``etils.epath.testing.mock_epath`` (every ``gs://bucket/...``
path that goes through ``etils.epath`` lands in a temporary folder), so the test runs offline.
Code that bypassed epath (``os``/``open`` on a ``gs://`` string) would instead create a
``gs:`` folder in the working directory, which the test forbids.  Orbax writes ``gs://``
itself (through TensorStore's own GCS driver, which no local fake reaches): its checkpoint
folder alone is mapped to the fake bucket before Orbax sees it.
"""

import hashlib
import os

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from rkdsc_jax import data, files, train
from rkdsc_jax.distill import logit_store as ls


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """``gs://bucket/`` → ``tmp_path/gcs/bucket/``; yields that local folder."""
    root = tmp_path / "gcs"
    root.mkdir()

    def local(path):
        path = os.fspath(path)
        return str(root / path[len("gs://"):]) if path.startswith("gs://") else path

    def mapped(original, path, *args, **kwargs):
        return original(local(path), *[local(a) if isinstance(a, (str, os.PathLike)) else a for a in args],
                        **kwargs)

    names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rename",
             "replace", "rmtree", "stat", "walk")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    original_init = train.Checkpointer.__init__
    monkeypatch.setattr(train.Checkpointer, "__init__",
                        lambda self, directory, *a, **k: original_init(self, local(directory), *a, **k))
    with epath_testing.mock_epath(**{name: mapped for name in names}):
        yield root / "bucket"
    assert os.listdir(workdir) == [], "something wrote a gs:// path with os/open instead of etils.epath"


def test_a_classifier_runs_in_a_gs_workdir(bucket):
    from experiments.common.classifier import train_classifier
    from experiments.configs import synthetic_classifier

    config = synthetic_classifier.get_config()
    config.data.num_train_examples, config.data.num_eval_examples = 64, 64
    config.train.num_steps, config.train.log_every, config.train.checkpoint_every = 4, 2, 2
    config.mesh.num_devices = 1
    workdir = "gs://bucket/runs/classifier"
    assert not files.is_local(workdir) and files.is_local("/tmp/x")
    summary = train_classifier(config, workdir)
    assert summary["steps"] == 4 and 0.0 <= summary["eval"]["accuracy"] <= 1.0
    run = bucket / "runs" / "classifier"
    assert files.read_json(epath.Path(workdir) / "summary.json") == files.read_json(run / "summary.json")
    rows = train.read_metrics(epath.Path(workdir) / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == [(2, "train"), (4, "train"), (4, "eval")]
    assert (run / "config.json").exists() and list((run / "tensorboard").iterdir())
    assert (run / "checkpoints").is_dir()
    # A rerun resumes from the gs:// checkpoints: finished, nothing trained again.
    again = train_classifier(config, workdir)
    assert again["resumed_from_step"] == 4 and again["eval"] == summary["eval"]


def _teacher(images):
    w = np.random.default_rng(0).normal(size=(int(np.prod(images.shape[1:])), 6)).astype(np.float32)
    return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ w


def test_a_logit_store_is_written_to_and_read_from_gs(bucket, tmp_path):
    source = data.synthetic("train", 40, (8, 8, 1), 6, seed=0)
    identity = {"name": "fake", "params_sha256": hashlib.sha256(b"fake").hexdigest(), "num_classes": 6}
    kwargs = dict(teacher_identity=identity, num_epochs=2, top_k=3, augment_config=data.AugmentConfig("crop_flip", 2),
                  seed=1, batch_size=8, shard_size=16)
    remote = ls.precompute_logits(_teacher, source, "gs://bucket/logits", **kwargs)
    local = ls.precompute_logits(_teacher, source, str(tmp_path / "local"), **kwargs)
    assert remote.to_json() == local.to_json()
    store = ls.LogitStore.open("gs://bucket/logits", expect_teacher=identity)
    assert not store._mmap  # Read whole, not memory-mapped.
    reference = ls.LogitStore.open(str(tmp_path / "local"))
    indices, epochs = np.tile(np.arange(40), 2), np.repeat(np.arange(2), 40)
    for key, value in store.lookup(indices, epochs).items():
        np.testing.assert_array_equal(value, reference.lookup(indices, epochs)[key])
    assert store.nbytes() == reference.nbytes()
    assert sorted(p.name for p in (bucket / "logits").iterdir()) == sorted(os.listdir(tmp_path / "local"))
    # Resuming on gs:// finds every shard done and rewrites nothing.
    calls = []
    ls.precompute_logits(lambda x: calls.append(1) or _teacher(x), source, "gs://bucket/logits", **kwargs)
    assert not calls


def test_fashion_mnist_files_are_read_from_gs(bucket):
    import gzip
    import struct

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5, dtype=np.uint8)
    for name, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)):
        header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        files.atomic_write_bytes(f"gs://bucket/fmnist/{name}", gzip.compress(header + array.tobytes()))
    source = data.fashion_mnist("test", "gs://bucket/fmnist")
    assert len(source) == 5 and (bucket / "fmnist" / "t10k-labels-idx1-ubyte.gz").exists()
    np.testing.assert_array_equal(source[3]["image"][..., 0], images[3])
