"""Data sources and grain pipelines: determinism, coverage, sharding, replay, resume."""

import gzip
import os
import struct

import numpy as np
import pytest

from rkdsc_jax import data
from rkdsc_jax.data import sources

HAVE_FMNIST = os.path.exists(os.path.join(sources.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist_dir(tmp_path, n=12):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    for split, (img_name, lbl_name) in sources._FASHION_MNIST_FILES.items():
        _write_idx(tmp_path / img_name, images)
        _write_idx(tmp_path / lbl_name, labels)
    return images, labels


def test_idx_reader_round_trips_hand_written_files(tmp_path):
    images, labels = _fake_fmnist_dir(tmp_path)
    src = data.fashion_mnist("test", str(tmp_path))
    assert len(src) == 12 and src.info.image_shape == (28, 28, 1) and src.info.num_classes == 10
    np.testing.assert_array_equal(src[5]["image"][..., 0], images[5])
    assert src[5]["label"] == labels[5]


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train", str(tmp_path))
    with pytest.raises(ValueError, match="splits"):
        data.fashion_mnist("validation", str(tmp_path))


@pytest.mark.skipif(not HAVE_FMNIST, reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_matches_its_published_description():
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    assert (len(train), len(test)) == (60000, 10000)
    # Fashion-MNIST is exactly balanced: 6,000 train and 1,000 test images per class.
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    # The "fashion_mnist" normalisation constants are the training set's mean and std.
    pixels = train.images.astype(np.float64) / 255.0
    mean, std = data.NORMALIZATIONS["fashion_mnist"]
    assert abs(pixels.mean() - mean[0]) < 1e-3 and abs(pixels.std() - std[0]) < 1e-3


def test_synthetic_is_deterministic_and_splits_share_templates():
    a, b = data.synthetic("train", 64, seed=3), data.synthetic("train", 64, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    test = data.synthetic("test", 64, seed=3)
    assert not np.array_equal(a.images, test.images)
    # Class templates are shared: the per-class mean images of two splits agree closely.
    for c in range(3):
        diff = a.images[a.labels == c].mean(0) - test.images[test.labels == c].mean(0)
        assert np.abs(diff).mean() < 40


def test_train_validation_split_is_disjoint_complete_and_reproducible():
    src = data.synthetic("train", 101)
    train, val = data.split_train_validation(src, 0.5, seed=7)
    assert len(train) + len(val) == 101 and len(val) == 50
    assert not set(train.indices) & set(val.indices)
    assert set(train.indices) | set(val.indices) == set(range(101))
    train2, _ = data.split_train_validation(src, 0.5, seed=7)
    np.testing.assert_array_equal(train.indices, train2.indices)
    train3, _ = data.split_train_validation(src, 0.5, seed=8)
    assert not np.array_equal(train.indices, train3.indices)
    np.testing.assert_array_equal(val[3]["image"], src[int(val.indices[3])]["image"])
    with pytest.raises(ValueError, match="validation_fraction"):
        data.split_train_validation(src, 1.0)


def _collect(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_each_epoch_is_a_fresh_permutation_of_every_example():
    src = data.synthetic("train", 48)
    batches = _collect(data.train_iterator(src, batch_size=16, num_steps=6, seed=1), 6)
    indices = np.concatenate([b["index"] for b in batches])
    epochs = np.concatenate([b["epoch"] for b in batches])
    first, second = indices[:48], indices[48:]
    assert sorted(first) == list(range(48)) and sorted(second) == list(range(48))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(epochs, np.repeat([0, 1], 48))
    # Labels travel with their examples.
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, src.labels[indices])


def test_same_seed_same_stream_other_seed_other_stream():
    src = data.synthetic("train", 40)
    a = _collect(data.train_iterator(src, batch_size=8, num_steps=5, seed=0), 5)
    b = _collect(data.train_iterator(src, batch_size=8, num_steps=5, seed=0), 5)
    c = _collect(data.train_iterator(src, batch_size=8, num_steps=5, seed=1), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not all(np.array_equal(x["index"], z["index"]) for x, z in zip(a, c))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_reassemble_the_global_batch(process_count):
    src = data.synthetic("train", 30)
    kwargs = dict(batch_size=8, num_steps=7, seed=2)
    global_batches = _collect(data.train_iterator(src, **kwargs), 7)
    shards = [
        _collect(data.train_iterator(src, process_index=p, process_count=process_count, **kwargs), 7)
        for p in range(process_count)
    ]
    for step, full in enumerate(global_batches):
        for key in ("image", "label", "index", "aug_seed"):
            joined = np.concatenate([shards[p][step][key] for p in range(process_count)])
            np.testing.assert_array_equal(joined, full[key])
    with pytest.raises(ValueError, match="divisible"):
        data.train_iterator(src, batch_size=6, num_steps=1, seed=0, process_count=4)


def test_iterator_state_resumes_on_exactly_the_next_batch():
    src = data.synthetic("train", 50)
    make = lambda: data.train_iterator(src, batch_size=8, num_steps=20, seed=5, worker_count=0)
    reference = _collect(make(), 20)
    it = make()
    _collect(it, 9)
    state = it.get_state()
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(reference[9:], _collect(resumed, 11)):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def _all_crops(image, pad, flip):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    views = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            views.append(crop)
            if flip:
                views.append(crop[:, ::-1])
    return views


def test_augmented_view_replays_from_index_epoch_and_seed():
    src = data.synthetic("train", 20)
    aug = data.AugmentConfig("crop_flip", 3)
    batches = _collect(
        data.train_iterator(src, batch_size=10, num_steps=6, seed=11, augment_config=aug), 6
    )
    flips = 0
    for batch in batches:
        for row in range(10):
            index, epoch, seed = batch["index"][row], batch["epoch"][row], batch["aug_seed"][row]
            assert seed == data.augmentation_seed(11, index, epoch)
            view = data.augment(src[index]["image"], seed, aug)
            np.testing.assert_allclose(data.preprocess(view, data.PreprocessConfig()), batch["image"][row])
            # The view is one of the legal pad-and-crop(-and-flip) views of the original.
            candidates = _all_crops(src[index]["image"], 3, True)
            matches = [np.array_equal(view, c) for c in candidates]
            assert any(matches)
            flips += any(matches[1::2]) and not any(matches[0::2])
    assert 10 < flips < 50  # About half of the 60 views are flipped.
    # The same example gets different seeds in different epochs.
    assert data.augmentation_seed(11, 3, 0) != data.augmentation_seed(11, 3, 1)


def test_augment_policies():
    image = np.arange(5 * 4 * 1, dtype=np.uint8).reshape(5, 4, 1)
    np.testing.assert_array_equal(data.augment(image, 123, data.AugmentConfig("none")), image)
    np.testing.assert_array_equal(data.augment(image, 123, data.AugmentConfig("crop", 0)), image)
    with pytest.raises(ValueError, match="policy"):
        data.AugmentConfig("mixup")


def test_preprocess_against_hand_computed_values():
    image = np.array([[[0], [255]], [[51], [102]]], dtype=np.uint8)
    out = data.preprocess(image, data.PreprocessConfig(normalization="minus_one_one"))
    np.testing.assert_allclose(out[..., 0], [[-1.0, 1.0], [-0.6, -0.2]], atol=1e-6)
    rgb = data.preprocess(image, data.PreprocessConfig(channels=3, normalization="imagenet"))
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 1], (1.0 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-5)
    big = data.preprocess(np.full((28, 28, 1), 200, np.uint8), data.PreprocessConfig(image_size=32, channels=3))
    assert big.shape == (32, 32, 3)
    np.testing.assert_allclose(big, 200 / 255, rtol=1e-6)  # Resizing a constant image keeps it.
    batch = data.preprocess(np.zeros((4, 7, 7, 3), np.uint8), data.PreprocessConfig(image_size=14))
    assert batch.shape == (4, 14, 14, 3)
    with pytest.raises(ValueError, match="normalization"):
        data.PreprocessConfig(normalization="bogus")


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_once_with_padding_masked(process_count):
    src = data.synthetic("test", 37)
    seen, masked = [], 0
    for p in range(process_count):
        for batch in data.eval_batches(src, batch_size=8, process_index=p, process_count=process_count):
            assert batch["image"].shape[0] == 8 // process_count
            valid = batch["mask"] > 0
            seen.extend(batch["index"][valid])
            masked += int((~valid).sum())
            np.testing.assert_array_equal(batch["label"][valid], src.labels[batch["index"][valid]])
    assert sorted(seen) == list(range(37)) and masked == 40 - 37


def test_tfds_source_reads_mock_data_without_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        src = data.get_source("cifar10", "train")
        assert len(src) == 24 and src.info.num_classes == 10 and src.info.image_shape == (32, 32, 3)
        assert len(src.info.class_names) == 10  # The mock has no label names, only 0..9.
        batch = next(data.train_iterator(src, batch_size=8, num_steps=1, seed=0))
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    with pytest.raises(ValueError, match="no dataset named"):
        data.get_source("no_such_dataset_xyz", "train")


def test_unprepared_tfds_dataset_explains_how_to_prepare_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        data.get_source("cifar10", "train", data_dir=str(tmp_path))


def test_resize_center_crop_keeps_the_centre_of_the_longer_side():
    from rkdsc_jax.data.sources import resize_center_crop

    image = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8, 1)
    # The shorter side is already 4: no resampling, only the central 4 columns remain.
    np.testing.assert_array_equal(resize_center_crop(image, 4), image[:, 2:6])
    assert resize_center_crop(np.zeros((30, 20, 3), np.uint8), 10).shape == (10, 10, 3)


def _write_tiny_imagenet(root, rng):
    """A Tiny-ImageNet tree as unpacked from tiny-imagenet-200.zip, 3 classes, 8×8 RGB."""
    from PIL import Image

    wnids = ["n01443537", "n01629819", "n01641577"]
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
                                    "n01641577\tbullfrog, Rana catesbeiana\nn00000001\tunused\n")
    pixels = {}
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(2):
            array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(array).save(folder / f"{wnid}_{i}.png")
            pixels[(wnid, i)] = array
    (root / "val" / "images").mkdir(parents=True)
    rows = []
    for i, wnid in enumerate(["n01641577", "n01443537"]):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(root / "val" / "images" / f"val_{i}.png")
        rows.append(f"val_{i}.png\t{wnid}\t0\t0\t8\t8")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return wnids, pixels


def test_tiny_imagenet_folders_are_read_with_wnid_labels_and_names(tmp_path):
    wnids, pixels = _write_tiny_imagenet(tmp_path, np.random.default_rng(0))
    train = data.get_source("tiny_imagenet", "train", str(tmp_path))
    assert train.info.num_classes == 3 and train.info.image_shape == (8, 8, 3) and len(train) == 6
    assert train.info.class_names == ("goldfish", "European fire salamander", "bullfrog")
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(train.images[3], pixels[(wnids[1], 1)])  # PNG is lossless.
    val = data.get_source("tiny_imagenet", "val", str(tmp_path))
    np.testing.assert_array_equal(val.labels, [2, 0])  # From val_annotations.txt, in wnids.txt order.
    assert int(val.images[1].max()) == 10


def test_image_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config.data.data_dir"):
        data.get_source("tiny_imagenet", "train", None)
    _write_tiny_imagenet(tmp_path, np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="split 'test' not found"):
        data.get_source("tiny_imagenet", "test", str(tmp_path))
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "n01443537" / "images" / "odd.png")
    with pytest.raises(ValueError, match="resize the folder's images"):
        data.get_source("tiny_imagenet", "train", str(tmp_path))
