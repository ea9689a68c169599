"""FDM teacher-logit store: round trip, replay, eq. 6, resume, multi-process, refusals,
distillation pipeline, verification and storage accounting.

The teacher is a fixed random linear map of the image, so every stored value can be
recomputed here independently (in float64) and compared.
"""

import hashlib
import io
import os
import pickle
import shutil

import numpy as np
import pytest

from rkdsc_jax import data
from rkdsc_jax.distill import logit_store as ls

N, SHAPE, C, K, E, T = 50, (8, 8, 1), 12, 4, 3, 2.0
SEED, BATCH, SHARD = 7, 8, 16  # 4 shards per epoch: 16, 16, 16, 2 examples (2, 2, 2, 1 batches).
AUG = data.AugmentConfig("crop_flip", 2)
CALLS_PER_EPOCH = 7


class FakeTeacher:
    """logits = x·W + b on [0, 1] pixels; counts calls and can fail after ``fail_after``."""

    def __init__(self, seed=0, num_classes=C, fail_after=None):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0.0, 1.0, (int(np.prod(SHAPE)), num_classes)).astype(np.float32)
        self.b = rng.normal(0.0, 1.0, num_classes).astype(np.float32)
        self.num_classes, self.fail_after = num_classes, fail_after
        self.calls, self.shapes = 0, set()

    def __call__(self, images):
        self.calls += 1
        self.shapes.add((images.shape, images.dtype))
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("preempted")
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ self.w + self.b

    def exact_logits(self, images):
        return (images.reshape(len(images), -1).astype(np.float64) / 255.0) @ self.w.astype(np.float64) + self.b

    def identity(self):
        digest = hashlib.sha256(self.w.tobytes() + self.b.tobytes()).hexdigest()
        return {"name": "fake-linear", "head": "linear", "num_classes": self.num_classes,
                "image_size": (8, 8), "params_sha256": digest}


def _source(seed=0, num_examples=N):
    return data.synthetic("train", num_examples, SHAPE, 10, seed=seed)


def _build(directory, teacher, source=None, **overrides):
    kwargs = dict(teacher_identity=getattr(teacher, "identity", dict)(), num_epochs=E, top_k=K, temperature=T,
                  augment_config=AUG, seed=SEED, batch_size=BATCH, shard_size=SHARD)
    kwargs.update(overrides)
    return ls.precompute_logits(teacher, source or _source(), str(directory), **kwargs)


def _files(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _all_pairs():
    return np.tile(np.arange(N), E), np.repeat(np.arange(E), N)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("store")
    teacher = FakeTeacher()
    manifest = _build(directory, teacher)
    return directory, teacher, manifest


def test_round_trip_equals_the_teachers_top_k_on_the_replayed_views(built):
    directory, teacher, manifest = built
    src = _source()
    assert teacher.calls == E * CALLS_PER_EPOCH
    assert teacher.shapes == {((BATCH, *SHAPE), np.dtype(np.uint8))}  # One batch shape: one compile.
    assert manifest.complete and len(manifest.shards) == E * 4
    assert sorted(n for n in os.listdir(directory) if n.endswith(".npy")) == sorted(
        f"epoch{e:04d}-shard{j:04d}.npy" for e in range(E) for j in range(4))
    store = ls.LogitStore.open(str(directory), expect_teacher=teacher.identity(),
                               expect_dataset=ls.dataset_identity(src))
    assert (store.num_epochs, store.top_k, store.num_classes, store.num_examples) == (E, K, C, N)

    idx, ep = _all_pairs()
    record = store.lookup(idx, ep)
    assert record["probs"].dtype == np.float32 and record["indices"].dtype == np.int32
    assert record["aug_seed"].dtype == np.uint32 and record["probs"].shape == (N * E, K)
    seeds = data.augmentation_seed(SEED, idx, ep)
    np.testing.assert_array_equal(record["aug_seed"], seeds)
    views = data.augment_batch(src.images[idx], seeds, AUG)
    np.testing.assert_array_equal(store.replay(src, idx, ep), views)

    probs = _softmax(teacher.exact_logits(views) / T)
    order = np.argsort(-probs, axis=-1)[:, :K]
    np.testing.assert_array_equal(record["indices"], order)
    np.testing.assert_allclose(record["probs"], np.take_along_axis(probs, order, -1), rtol=2**-11, atol=1e-7)

    # On disk: float16 values, int16 indices, uint32 seeds, examples in index order.
    raw = np.load(os.path.join(directory, "epoch0001-shard0003.npy"))
    assert raw.shape == (2,)
    assert (raw["probs"].dtype, raw["indices"].dtype, raw["aug_seed"].dtype) == (
        np.float16, np.int16, np.uint32)
    np.testing.assert_array_equal(raw["aug_seed"], data.augmentation_seed(SEED, [48, 49], 1))
    # A pickled store (grain workers) reads the same.
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again.lookup(idx, ep)["probs"], record["probs"])


def test_stored_views_are_the_training_pipelines_views(built):
    directory, _, _ = built
    src, store = _source(), ls.LogitStore.open(str(directory))
    num_steps = 12  # 120 positions: epochs 0, 1 and part of 2.
    train = list(data.train_iterator(src, batch_size=10, num_steps=num_steps, seed=SEED, augment_config=AUG))
    distill = list(ls.distill_iterator(src, store, batch_size=10, num_steps=num_steps, seed=SEED))
    for t, d in zip(train, distill):
        np.testing.assert_array_equal(store.replay(src, t["index"], t["epoch"]),
                                      data.augment_batch(src.images[t["index"]], t["aug_seed"], AUG))
        np.testing.assert_array_equal(store.lookup(t["index"], t["epoch"])["aug_seed"], t["aug_seed"])
        for key in ("image", "label", "index", "epoch", "aug_seed"):
            np.testing.assert_array_equal(d[key], t[key])


def test_a_label_stream_with_the_stores_views_equals_the_distill_stream_for_any_seed(built):
    """Equal data for paper B's arms: a run on labels with the store's seed and epochs sees the
    distillation run's images in its order, also past the stored epochs (replay)."""
    directory, _, _ = built
    src, store = _source(), ls.LogitStore.open(str(directory))
    num_steps = 20  # 200 positions: 4 epochs of 50, the last one past the E = 3 stored.
    for seed in (SEED + 1, SEED + 7):
        labels = data.train_iterator(src, batch_size=10, num_steps=num_steps, seed=seed, augment_config=AUG,
                                     augment_seed=SEED, view_epochs=E)
        distill = ls.distill_iterator(src, store, batch_size=10, num_steps=num_steps, seed=seed)
        for t, d in zip(labels, distill):
            for key in ("image", "label", "index", "epoch", "aug_seed"):
                np.testing.assert_array_equal(d[key], t[key])
    # Without them the views differ (the test can fail): fresh views from the run's own seed.
    fresh = next(iter(data.train_iterator(src, batch_size=10, num_steps=1, seed=SEED + 1, augment_config=AUG)))
    first = next(iter(ls.distill_iterator(src, store, batch_size=10, num_steps=1, seed=SEED + 1)))
    assert not np.array_equal(fresh["aug_seed"], first["aug_seed"])
    with pytest.raises(ValueError, match="view_epochs must be an int >= 1"):
        data.train_iterator(src, batch_size=10, num_steps=1, seed=0, view_epochs=0)
    with pytest.raises(ValueError, match="augment_seed must be an int >= 0"):
        data.train_iterator(src, batch_size=10, num_steps=1, seed=0, augment_seed=-1)


def test_soft_targets_follow_eq6():
    # By hand: K = 2 of C = 5, remainder (1 - 0.7) / 3 = 0.1.
    want = np.array([[0.2, 0.1, 0.1, 0.5, 0.1]], np.float32)
    probs, indices = np.array([[0.5, 0.2]]), np.array([[3, 0]])
    np.testing.assert_allclose(ls.dense_soft_targets(probs, indices, 5), want, atol=1e-7)
    np.testing.assert_allclose(ls.soft_targets_numpy(probs, indices, 5), want, atol=1e-7)
    # Mass above 1 by float16 rounding: the remainder is clipped at 0; far above 1 is refused.
    clipped = ls.dense_soft_targets(np.array([[0.6, 0.4005]]), indices, 5)
    np.testing.assert_allclose(clipped, [[0.4005, 0.0, 0.0, 0.6, 0.0]], atol=1e-7)
    with pytest.raises(ValueError, match="sum to 1.1000 > 1"):
        ls.dense_soft_targets(np.array([[0.7, 0.4]]), indices, 5)
    # Leading batch dimensions are kept.
    two = np.broadcast_to(np.arange(2), (2, 3, 2))
    assert ls.dense_soft_targets(np.zeros((2, 3, 2)), two, 5).shape == (2, 3, 5)


def test_store_soft_targets_and_a_smaller_k(built):
    directory, _, _ = built
    idx, ep = np.array([0, 17, 49, 3]), np.array([0, 1, 2, 2])
    for k in (K, 2):
        store = ls.LogitStore.open(str(directory), top_k=k)
        record = store.lookup(idx, ep)
        full = ls.LogitStore.open(str(directory)).lookup(idx, ep)
        np.testing.assert_array_equal(record["probs"], full["probs"][:, :k])
        np.testing.assert_array_equal(record["indices"], full["indices"][:, :k])
        dense = store.soft_targets(idx, ep)
        assert dense.shape == (4, C) and dense.dtype == np.float32
        for row in range(4):
            rest = (1.0 - record["probs"][row].sum()) / (C - k)
            want = np.full(C, rest)
            want[record["indices"][row]] = record["probs"][row]
            np.testing.assert_allclose(dense[row], want, atol=1e-7)
        np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-6)


def test_resume_recomputes_only_unfinished_shards_and_equals_an_uninterrupted_run(built, tmp_path):
    reference, _, _ = built
    failing = FakeTeacher(fail_after=4)
    with pytest.raises(RuntimeError, match="preempted"):
        _build(tmp_path, failing)
    # Calls 1-4 finished shards 0 and 1 of epoch 0; the 5th failed; no manifest yet.
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".npy")) == [
        "epoch0000-shard0000.npy", "epoch0000-shard0001.npy"]
    with pytest.raises(FileNotFoundError, match="interrupted.*precompute_logits"):
        ls.LogitStore.open(str(tmp_path))
    resumed = FakeTeacher()
    _build(tmp_path, resumed)
    assert resumed.calls == E * CALLS_PER_EPOCH - 4
    assert _files(tmp_path) == _files(reference)  # Bit for bit, manifest and sidecars included.

    # A corrupted shard is recomputed on a rerun (and only it: 2 batches).
    path = tmp_path / "epoch0002-shard0001.npy"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    repair = FakeTeacher()
    _build(tmp_path, repair)
    assert repair.calls == 2
    assert _files(tmp_path) == _files(reference)


def test_two_processes_write_the_same_store_as_one(built, tmp_path):
    reference, _, _ = built
    first = FakeTeacher()
    with pytest.raises(TimeoutError, match=r"owned by processes \[1\]"):
        _build(tmp_path, first, process_index=0, process_count=2, wait_timeout_s=0)
    # Global shard g = 4·epoch + j is process g mod 2's: here the even j.
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".npy")) == sorted(
        f"epoch{e:04d}-shard{j:04d}.npy" for e in range(E) for j in (0, 2))
    assert first.calls == E * 4
    second = FakeTeacher()
    partial = _build(tmp_path, second, process_index=1, process_count=2)
    assert second.calls == E * 3 and not partial.complete
    assert [(s.epoch, s.start) for s in partial.shards] == [(e, s) for e in range(E) for s in (16, 48)]
    assert not (tmp_path / "manifest.json").exists()
    last = FakeTeacher()
    manifest = _build(tmp_path, last, process_index=0, process_count=2)
    assert last.calls == 0 and manifest.complete
    assert _files(tmp_path) == _files(reference)


def test_refusals_name_the_problem_and_the_fix(built, tmp_path):
    directory, teacher, _ = built
    d = str(directory)
    with pytest.raises(ValueError, match=r"params_sha256=.*Rerun precompute_logits for this teacher"):
        ls.LogitStore.open(d, expect_teacher=dict(teacher.identity(), params_sha256="0" * 64))
    with pytest.raises(ValueError, match="name='fake-linear'.*name='other'"):
        ls.LogitStore.open(d, expect_teacher=dict(teacher.identity(), name="other"))
    with pytest.raises(ValueError, match="num_examples=50.*num_examples=40"):
        ls.LogitStore.open(d, expect_dataset=ls.dataset_identity(_source(num_examples=40)))
    with pytest.raises(ValueError, match="fingerprint"):  # Same name and size, other images.
        ls.LogitStore.open(d, expect_dataset=ls.dataset_identity(_source(seed=1)))
    with pytest.raises(ValueError, match="fingerprint"):
        ls.distill_iterator(_source(seed=1), ls.LogitStore.open(d), batch_size=10, num_steps=1, seed=0)
    with pytest.raises(ValueError, match="top_k=5.*only the top 4"):
        ls.LogitStore.open(d, top_k=5)
    with pytest.raises(FileNotFoundError, match="No manifest.json.*precompute_logits"):
        ls.LogitStore.open(str(tmp_path / "nowhere"))

    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    path = copy / "epoch0001-shard0002.npy"
    blob = bytearray(path.read_bytes())
    blob[-7] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="epoch0001-shard0002.npy.*checksum"):
        ls.LogitStore.open(str(copy))
    # Without the checksum the value check still sees the flipped index byte (+256).
    with pytest.raises(ValueError, match=r"epoch0001-shard0002.npy.*class indices outside \[0, 12\)"):
        ls.LogitStore.open(str(copy), verify_checksums=False)
    ls.LogitStore.open(str(copy), verify_checksums=False, check_values=False)  # Data bytes only: readable.
    os.remove(copy / "epoch0000-shard0003.npy")
    with pytest.raises(ValueError, match="epoch0000-shard0003.npy.*missing"):
        ls.LogitStore.open(str(copy))
    # Rerunning into a store of another configuration is refused, naming the field.
    with pytest.raises(ValueError, match="temperature"):
        _build(copy, FakeTeacher(), temperature=1.0)


def test_writer_validates_k_shapes_and_finiteness(tmp_path):
    teacher = FakeTeacher()
    with pytest.raises(ValueError, match="top_k=13 exceeds the teacher's 12 classes"):
        _build(tmp_path / "a", teacher, top_k=13)
    assert teacher.calls == 0
    with pytest.raises(ValueError, match=r"shape \(8, 12\).*expected \(8, 11\)"):
        _build(tmp_path / "b", teacher, teacher_identity=dict(teacher.identity(), num_classes=11))

    def nan_for_example_5(images):
        logits = teacher(images)
        if nan_for_example_5.first:
            logits[5, 3] = np.nan
            nan_for_example_5.first = False
        return logits

    nan_for_example_5.first = True
    with pytest.raises(ValueError, match=r"non-finite logits for example indices \[5\] of epoch 0"):
        _build(tmp_path / "c", nan_for_example_5, teacher_identity=teacher.identity())


def test_int32_indices_beyond_int16_classes(tmp_path):
    many = 40000
    teacher = FakeTeacher(num_classes=many)
    src = _source(num_examples=5)
    manifest = _build(tmp_path, teacher, src, num_epochs=1, top_k=3, shard_size=8)
    assert manifest.index_dtype == "int32"
    store = ls.LogitStore.open(str(tmp_path))
    seeds = data.augmentation_seed(SEED, np.arange(5), 0)
    logits = teacher.exact_logits(data.augment_batch(src.images, seeds, AUG))
    np.testing.assert_array_equal(store.lookup(np.arange(5), 0)["indices"], np.argsort(-logits, -1)[:, :3])
    assert store.lookup(np.arange(5), 0)["indices"].max() > np.iinfo(np.int16).max


def test_epochs_wrap_around(built):
    directory, _, _ = built
    store = ls.LogitStore.open(str(directory))
    idx, ep = _all_pairs()
    first = store.lookup(idx, ep)
    for shift in (E, 2 * E):
        wrapped = store.lookup(idx, ep + shift)
        for key in first:
            np.testing.assert_array_equal(wrapped[key], first[key])
    # The pipeline past the stored epochs reuses them: 20 steps of 10 = 4 epochs of 50.
    batches = list(ls.distill_iterator(_source(), store, batch_size=10, num_steps=20, seed=3))
    late = [b for b in batches if b["epoch"][0] == E]
    assert len(late) == 5
    for b in late:
        np.testing.assert_array_equal(b["aug_seed"], data.augmentation_seed(SEED, b["index"], 0))
        np.testing.assert_array_equal(b["teacher_probs"], store.lookup(b["index"], 0)["probs"])


def test_distill_iterator_carries_each_rows_targets_and_resumes(built):
    directory, _, _ = built
    src, store = _source(), ls.LogitStore.open(str(directory))
    make = lambda **kw: ls.distill_iterator(src, store, batch_size=10, num_steps=12, seed=3, **kw)
    batches = list(make())
    order = list(data.train_iterator(src, batch_size=10, num_steps=12, seed=3, augment_config=AUG))
    for b, o in zip(batches, order):
        np.testing.assert_array_equal(b["index"], o["index"])  # train_iterator's order for seed 3.
        np.testing.assert_array_equal(b["epoch"], o["epoch"])
        assert b["teacher_probs"].shape == (10, K) and b["teacher_probs"].dtype == np.float32
        assert b["teacher_indices"].dtype == np.int32
        want = store.lookup(b["index"], b["epoch"])
        np.testing.assert_array_equal(b["teacher_probs"], want["probs"])
        np.testing.assert_array_equal(b["teacher_indices"], want["indices"])
        # Views come from the store's seed (7), not the pipeline's (3).
        seeds = data.augmentation_seed(SEED, b["index"], b["epoch"])
        np.testing.assert_array_equal(b["aug_seed"], seeds)
        view = data.augment_batch(src.images[b["index"]], seeds, AUG)
        np.testing.assert_allclose(b["image"], view.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(b["label"], src.labels[b["index"]])

    it = make()
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(batches[5:], resumed):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # Two processes' rows reassemble the global batch.
    halves = [list(make(process_index=p, process_count=2)) for p in range(2)]
    for step, want in enumerate(batches):
        for key in want:
            np.testing.assert_array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]), want[key])


def test_verify_passes_for_the_teacher_and_fails_for_another(built):
    directory, _, _ = built
    store, src = ls.LogitStore.open(str(directory)), _source()
    same = FakeTeacher()
    report = ls.verify(store, same, src, num_samples=20, batch_size=8)
    assert report["num_samples"] == 20 and report["ok"]
    assert report["max_abs_prob_diff"] <= 2**-12 and report["topk_index_agreement"] == 1.0
    assert same.shapes == {((8, *SHAPE), np.dtype(np.uint8))}  # The last batch was padded.
    other = ls.verify(store, FakeTeacher(seed=1), src, num_samples=64)
    assert not other["ok"] and other["max_abs_prob_diff"] > 0.1 and other["topk_index_agreement"] < 0.8
    assert other["mean_abs_prob_diff"] > 0.01


def test_store_summary_byte_counts(built):
    directory, _, _ = built
    store, src = ls.LogitStore.open(str(directory)), _source()
    record = K * 2 + K * 2 + 4  # float16 values, int16 indices, uint32 seed.
    dtype = np.dtype([("probs", "<f2", (K,)), ("indices", "<i2", (K,)), ("aug_seed", "<u4")])
    assert dtype.itemsize == record == 20

    def npy_size(n):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(n, dtype))
        return len(buffer.getvalue())

    on_disk = E * (3 * npy_size(16) + npy_size(2))
    assert E * (3 * (npy_size(16) - 16 * 20) + npy_size(2) - 2 * 20) + N * E * 20 == on_disk
    summary = ls.store_summary(store, src)
    assert store.nbytes() == on_disk == summary["bytes_on_disk"]
    assert summary["records"] == 150 and summary["record_nbytes"] == 20
    assert (summary["top_k"], summary["num_classes"]) == (K, C)
    assert summary["full_logits_nbytes"] == store.full_logits_nbytes() == 150 * 12 * 4
    assert summary["augmented_images_nbytes"] == 150 * 64
    assert summary["raw_dataset_nbytes"] == 50 * 64
    assert summary["bytes_per_record"] == pytest.approx(on_disk / 150)
    assert summary["full_logits_over_store"] == pytest.approx(7200 / on_disk)
    assert summary["augmented_images_over_store"] == pytest.approx(9600 / on_disk)
    assert summary["store_over_raw_dataset"] == pytest.approx(on_disk / 3200)


def test_distill_iterator_on_a_subset_reads_the_parents_records(built):
    directory, _, _ = built
    src, store = _source(), ls.LogitStore.open(str(directory))
    rows = np.array([1, 4, 5, 9, 12, 20, 33, 40])
    subset = data.SubsetSource(src, rows, "train")
    for batch in ls.distill_iterator(subset, store, batch_size=4, num_steps=4, seed=0):
        assert set(batch["index"]) <= set(rows)  # Indices of the full dataset.
        want = store.lookup(batch["index"], batch["epoch"])
        np.testing.assert_array_equal(batch["teacher_probs"], want["probs"])
        np.testing.assert_array_equal(batch["label"], src.labels[batch["index"]])
        view = data.augment_batch(src.images[batch["index"]], want["aug_seed"], AUG)
        np.testing.assert_allclose(batch["image"], view.astype(np.float32) / 255.0)
    # A subset of another dataset is still refused.
    other = data.SubsetSource(_source(seed=1), rows, "train")
    with pytest.raises(ValueError, match="dataset"):
        ls.distill_iterator(other, store, batch_size=4, num_steps=1, seed=0)
