"""Bad inputs to the library API: channels, top-K targets, the logit store, data, genotypes.

Each case is one wrong input and the specific message it must end in (the problem and the
fix), raised on the host before any array enters jit. Valid controls sit next to them.
Cheap: nothing here compiles except the controls (a few small jits).
"""

import copy
import hashlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from rkdsc_jax import channels as ch
from rkdsc_jax import data, genotype_data
from rkdsc_jax.distill import logit_store as ls
from rkdsc_jax.distill import losses, rkd_steps, tosc_steps
from rkdsc_jax.nas import genotypes

KEY = jax.random.key(0)
X = np.ones((2, 6), np.float32)  # 2 samples, 3 complex symbols each.
Z = np.ones((2, 3), np.complex64)


def _nan_at(a, index):
    a = np.array(a)
    a[index] = np.nan
    return a


# --- channels -------------------------------------------------------------------------------

CHANNEL_CASES = {
    "x-nan": (lambda: ch.transmit(KEY, _nan_at(X, (0, 1)), 0.0), "features x contains NaN.*index \\(0, 1\\)"),
    "x-inf": (lambda: ch.transmit(KEY, X * np.inf, 0.0), "features x contains NaN or ±inf.*pass finite"),
    "x-int": (lambda: ch.transmit(KEY, X.astype(np.int32), 0.0), "real floating features, got dtype int32"),
    "x-bool": (lambda: ch.transmit(KEY, X > 0, 0.0), "real floating features, got dtype bool"),
    "x-complex": (lambda: ch.transmit(KEY, Z, 0.0), "real floating.*use simulate\\(\\)"),
    "x-unbatched": (lambda: ch.transmit(KEY, X[0], 0.0), "add a batch axis"),
    "x-empty-sample": (lambda: ch.transmit(KEY, np.ones((2, 0), np.float32), 0.0), "empty features"),
    "mask-wrong-length": (lambda: ch.transmit(KEY, X, 0.0, mask=np.ones(4)), "does not match the 3 symbols"),
    "mask-half": (lambda: ch.transmit(KEY, X, 0.0, mask=np.array([1, 0.5, 0])), "only 0 \\(not sent\\) and 1"),
    "mask-negative": (lambda: ch.transmit(KEY, X, 0.0, mask=np.array([1, -1, 0])), "only 0.*got \\[-1.0\\]"),
    "mask-nan": (lambda: ch.transmit(KEY, X, 0.0, mask=np.array([1, np.nan, 0])), "only 0.*got \\[nan\\]"),
    "mask-empty-row": (lambda: ch.transmit(KEY, X, 0.0, mask=np.array([[1, 1, 0], [0, 0, 0]])),
                       "mask row 1 sends no symbol"),
    "snr-shape": (lambda: ch.transmit(KEY, X, np.zeros(3)), "snr_db of shape \\(3,\\) does not broadcast"),
    "snr-nan": (lambda: ch.transmit(KEY, X, np.array([0.0, np.nan])), "snr_db contains NaN.*finite values in dB"),
    "snr-string": (lambda: ch.transmit(KEY, X, "10"), "snr_db must be numeric"),
    "kind-unknown": (lambda: ch.transmit(KEY, X, 0.0, kind="rice"), "unknown channel kind 'rice'; use one of"),
    "csi-unknown": (lambda: ch.transmit(KEY, X, 0.0, csi="partial"), "unknown csi mode 'partial'"),
    "equalizer-unknown": (lambda: ch.transmit(KEY, X, 0.0, equalizer="lmmse"), "unknown equalizer 'lmmse'"),
    "rician-negative": (lambda: ch.transmit(KEY, X, 0.0, kind="rician", rician_k=-1.0), "rician_k must be >= 0"),
    "rician-nan": (lambda: ch.transmit(KEY, X, 0.0, kind="rician", rician_k=np.nan),
                   "rician_k contains NaN.*K-factor >= 0 \\(linear, not dB\\)"),
    "key-int": (lambda: ch.transmit(0, X, 0.0), "key must be one PRNG key"),
    "key-batch": (lambda: ch.transmit(jax.random.split(KEY, 2), X, 0.0), "key must be one PRNG key.*shape \\(2,\\)"),
    "simulate-real": (lambda: ch.simulate(KEY, X, 0.0), "symbols z must be complex.*real_to_complex"),
    "simulate-nan": (lambda: ch.simulate(KEY, Z * np.nan, 0.0), "symbols z contains NaN"),
    "normalize-nan": (lambda: ch.normalize_power(Z * np.nan), "normalize_power input contains NaN"),
    "normalize-mask-2": (lambda: ch.normalize_power(Z, mask=np.array([1, 2, 0])), "only 0.*got \\[2.0\\]"),
    "normalize-power-0": (lambda: ch.normalize_power(Z, power=0.0), "power must be > 0"),
    "fading-negative-shape": (lambda: ch.fading(KEY, (2, -3), "rayleigh"), "non-negative ints, got \\(2, -3\\)"),
    "fading-real-dtype": (lambda: ch.fading(KEY, (2, 3), dtype=jnp.float32), "needs a complex dtype"),
    "equalize-zf-h0": (lambda: ch.equalize(Z, np.zeros((2, 1), np.complex64), 0.1, "zf"),
                       "h is 0.*use equalizer='mmse'"),
    "equalize-negative-noise": (lambda: ch.equalize(Z, 1.0, -1.0, "mmse"), "noise_var must be >= 0"),
    "equalize-shapes": (lambda: ch.equalize(Z, np.ones(4, np.complex64), 0.1, "mmse"), "do not broadcast"),
    "real-to-complex-odd": (lambda: ch.real_to_complex(np.ones(3, np.float32)), "even last axis"),
    "spec-equalizer": (lambda: ch.ChannelSpec(equalizer="MMSE"), "unknown equalizer 'MMSE'"),
    "spec-rician": (lambda: ch.ChannelSpec(rician_k=-2.0), "rician_k must be >= 0"),
    "spec-mixed-rows": (lambda: ch.ChannelSpec().mixed(KEY, X, 0.0, np.array([True, False, True])),
                        "use_rayleigh must be a bool array of shape \\(B,\\) = \\(2,\\)"),
    "spec-mixed-int-rows": (lambda: ch.ChannelSpec().mixed(KEY, X, 0.0, np.array([1, 0])),
                            "use_rayleigh must be a bool array"),
    "objective-equalizer": (lambda: tosc_steps.Objective(equalizer="lmmse"), "unknown equalizer 'lmmse'"),
    "rkd-objective-csi": (lambda: rkd_steps.RKDObjective(csi="estimated"), "unknown csi mode 'estimated'"),
}


@pytest.mark.parametrize("case", sorted(CHANNEL_CASES))
def test_channel_refuses(case):
    fn, match = CHANNEL_CASES[case]
    with pytest.raises(ValueError, match=match):
        fn()


def test_channel_valid_controls():
    out = ch.transmit(KEY, X, np.array([0.0, 10.0]), mask=np.array([1.0, 1.0, 0.0]))
    assert out.shape == X.shape and np.isfinite(out).all()
    assert ch.ChannelSpec().transmit(KEY, X, 0.0, "none") is X  # No channel: untouched.
    assert ch.normalize_power(Z, mask=np.zeros(3)).shape == Z.shape  # Documented: an empty row stays 0.


def test_checkify_reports_nan_and_bad_masks_inside_jit():
    send = ch.checked(lambda key, x, mask: ch.transmit(key, x, 0.0, mask=mask))
    assert np.isfinite(send(KEY, X, np.ones(3))).all()
    with pytest.raises(checkify.JaxRuntimeError, match="x contains NaN or ±inf inside jit"):
        send(KEY, _nan_at(X, (1, 2)), np.ones(3))
    with pytest.raises(checkify.JaxRuntimeError, match="mask must hold only 0"):
        send(KEY, X, np.array([1.0, 0.5, 0.0]))


# --- top-K targets ----------------------------------------------------------------------------

P = np.array([[0.6, 0.3], [0.5, 0.2]], np.float32)
I = np.array([[3, 1], [0, 2]], np.int32)

TOPK_CASES = {
    "index-beyond-classes": (lambda: losses.reconstruct_topk(P, np.array([[3, 1], [0, 999]]), 10),
                             "class index 999 .*more classes.*than this student's 10"),
    "index-negative": (lambda: losses.reconstruct_topk(P, np.array([[3, -1], [0, 2]]), 10),
                       "class index -1 .*outside \\[0, 10\\)"),
    "index-repeated": (lambda: losses.reconstruct_topk(P, np.array([[3, 3], [0, 2]]), 10), "row 0 repeats"),
    "probs-nan": (lambda: losses.reconstruct_topk(_nan_at(P, (1, 0)), I, 10), "finite and >= 0, row 1"),
    "probs-negative": (lambda: losses.reconstruct_topk(-P, I, 10), "finite and >= 0, row 0"),
    "probs-are-logits": (lambda: losses.reconstruct_topk(P * 5, I, 10), "sum to 4.5000 > 1.*softmax"),
    "k-zero": (lambda: losses.reconstruct_topk(np.zeros((2, 0)), np.zeros((2, 0), np.int32), 10), "K = 0"),
    "k-beyond-classes": (lambda: losses.reconstruct_topk(np.zeros((2, 6)), np.zeros((2, 6), np.int32), 5),
                         "K = 6 exceeds num_classes C = 5"),
    "num-classes-zero": (lambda: losses.reconstruct_topk(P, I, 0), "num_classes must be a positive"),
    "indices-float": (lambda: losses.reconstruct_topk(P, I.astype(np.float32), 10), "indices must be integers"),
    "dense-index-beyond": (lambda: ls.dense_soft_targets(P, np.array([[3, 1], [0, 12]]), 10),
                           "class index 12 .*outside \\[0, 10\\)"),
    "dense-shape-mismatch": (lambda: ls.dense_soft_targets(P, I[:, :1], 10), "same shape"),
    "numpy-index-beyond": (lambda: ls.soft_targets_numpy(P, np.array([[3, 1], [0, 10]]), 10),
                           "class index 10 .*outside"),
    "numpy-sum-above-one": (lambda: ls.soft_targets_numpy(P + 0.4, I, 10), "sum to 1.7000 > 1"),
}


@pytest.mark.parametrize("case", sorted(TOPK_CASES))
def test_topk_targets_refused(case):
    fn, match = TOPK_CASES[case]
    with pytest.raises(ValueError, match=match):
        fn()


def test_topk_valid_control():
    dense = ls.soft_targets_numpy(P, I, 10)
    np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(losses.reconstruct_topk(P, I, 10), dense, atol=1e-6)


# --- the logit store ---------------------------------------------------------------------------


class LinearTeacher:
    def __init__(self, num_classes):
        rng = np.random.default_rng(num_classes)
        self.w = rng.normal(size=(64, num_classes)).astype(np.float32)
        self.num_classes = num_classes

    def __call__(self, images):
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ self.w

    def identity(self):
        return {"name": f"linear{self.num_classes}", "num_classes": self.num_classes,
                "params_sha256": hashlib.sha256(self.w.tobytes()).hexdigest()}


def _build(directory, num_classes):
    teacher = LinearTeacher(num_classes)
    ls.precompute_logits(teacher, data.synthetic("train", 16, (8, 8, 1), 10), str(directory),
                         teacher_identity=teacher.identity(), num_epochs=1, top_k=3,
                         augment_config=data.AugmentConfig("none"), seed=0, batch_size=8, shard_size=8)
    return directory


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {"c10": _build(root / "c10", 10), "c1000": _build(root / "c1000", 1000)}


def _damaged_copy(src, dst, edit, fix_checksum=True):
    """A copy of the store whose shard 0 is edited; with ``fix_checksum`` the manifest is
    rewritten to match (the damage a checksum cannot see)."""
    import shutil

    shutil.copytree(src, dst)
    path = dst / "epoch0000-shard0000.npy"
    records = np.load(path)
    edit(records)
    buffer = io.BytesIO()
    np.save(buffer, records, allow_pickle=False)
    path.write_bytes(buffer.getvalue())
    if fix_checksum:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["shards"][0].update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
                                     nbytes=len(buffer.getvalue()))
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return str(dst)


def _set(field, row, col, value):
    def edit(records):
        records[field][row, col] = value
    return edit


def _reverse_row(row):
    def edit(records):
        records["probs"][row] = records["probs"][row][::-1].copy()  # Same mass, ascending.
    return edit


STORE_DAMAGE = {
    "prob-nan": (_set("probs", 2, 1, np.nan), "NaN, inf or negative probabilities \\(record 2"),
    "prob-negative": (_set("probs", 3, 2, -0.25), "NaN, inf or negative probabilities \\(record 3"),
    "probs-sum-above-one": (_set("probs", 1, 0, 1.5), "summing to more than 1 \\(record 1"),
    "probs-unsorted": (_reverse_row(4), "not sorted descending \\(record 4"),
    "index-beyond-classes": (_set("indices", 5, 0, 10), "class indices outside \\[0, 10\\) \\(record 5"),
}


@pytest.mark.parametrize("case", sorted(STORE_DAMAGE))
def test_store_with_damaged_values_refused_at_open(stores, tmp_path, case):
    edit, match = STORE_DAMAGE[case]
    damaged = _damaged_copy(stores["c10"], tmp_path / "store", edit)
    with pytest.raises(ValueError, match=f"epoch0000-shard0000.npy.*{match}.*Rerun precompute_logits"):
        ls.LogitStore.open(damaged)


def test_store_flipped_byte_refused_by_its_checksum(stores, tmp_path):
    def flip(records):
        records["aug_seed"][0] ^= 1  # A byte the value checks cannot judge.

    damaged = _damaged_copy(stores["c10"], tmp_path / "store", flip, fix_checksum=False)
    with pytest.raises(ValueError, match="epoch0000-shard0000.npy .*fails its checksum.*corrupted"):
        ls.LogitStore.open(damaged)


def test_store_of_a_1000_class_teacher_refused_for_a_10_class_student(stores):
    with pytest.raises(ValueError, match="written by a teacher with 1000 classes; this student has 10 classes.*"
                                         "precompute_logits"):
        ls.LogitStore.open(str(stores["c1000"]), expect_num_classes=10)
    with pytest.raises(ValueError, match="class index .* outside \\[0, 10\\)"):  # Without the check: refused late.
        store = ls.LogitStore.open(str(stores["c1000"]))
        record = store.lookup(np.arange(16), 0)
        losses.reconstruct_topk(record["probs"], record["indices"], 10)


def test_store_valid_control(stores):
    store = ls.LogitStore.open(str(stores["c10"]), expect_num_classes=10)
    assert store.soft_targets(np.arange(4), 0).shape == (4, 10)


# --- data ----------------------------------------------------------------------------------------

SRC = data.synthetic("train", 16, (8, 8, 1), 4)

DATA_CASES = {
    "take-zero": (lambda: data.take(SRC, 0), "num_examples=0: .*has 16 examples.*\\[1, 16\\]"),
    "take-negative": (lambda: data.take(SRC, -5), "num_examples=-5"),
    "take-more-than-split": (lambda: data.take(SRC, 100), "num_examples=100: .*has 16 examples"),
    "take-float": (lambda: data.take(SRC, 2.5), "num_examples=2.5"),
    "train-batch-zero": (lambda: data.train_iterator(SRC, batch_size=0, num_steps=1, seed=0),
                         "batch_size must be an int >= 1, got 0"),
    "train-batch-negative": (lambda: data.train_iterator(SRC, batch_size=-4, num_steps=1, seed=0),
                             "batch_size must be an int >= 1, got -4"),
    "train-steps-negative": (lambda: data.train_iterator(SRC, batch_size=4, num_steps=-1, seed=0),
                             "num_steps must be an int >= 0"),
    "train-seed-negative": (lambda: data.train_iterator(SRC, batch_size=4, num_steps=1, seed=-1),
                            "seed must be an int >= 0"),
    "eval-batch-zero": (lambda: data.eval_batches(SRC, batch_size=0), "batch_size must be an int >= 1, got 0"),
    "eval-batch-negative": (lambda: data.eval_batches(SRC, batch_size=-2), "batch_size must be an int >= 1"),
    "eval-empty-source": (lambda: data.eval_batches(data.SubsetSource(SRC, np.arange(0), "x"), batch_size=4),
                          "evaluation source .* is empty"),
    "normalization-unknown": (lambda: data.PreprocessConfig(normalization="imagenett"),
                              "Unknown normalization 'imagenett'; use one of"),
    "augment-unknown": (lambda: data.AugmentConfig("flip"), "Unknown augmentation policy 'flip'"),
    "augment-padding-float": (lambda: data.AugmentConfig("crop", 1.5), "crop_padding must be an int >= 0"),
    "image-size-zero": (lambda: data.PreprocessConfig(image_size=0), "image_size must be None .* int >= 1"),
    "image-size-negative": (lambda: data.PreprocessConfig(image_size=-3), "image_size must be None"),
    "channels-two": (lambda: data.PreprocessConfig(channels=2), "channels must be None, 1 or 3, got 2"),
    "preprocess-float-images": (lambda: data.preprocess(np.zeros((2, 8, 8, 1), np.float32), data.PreprocessConfig()),
                                "expects uint8 images in 0..255, got float32"),
    "preprocess-no-channel-axis": (lambda: data.preprocess(np.zeros((8, 8), np.uint8), data.PreprocessConfig()),
                                   "add the channel axis"),
    "normalization-channels": (lambda: data.preprocess(np.zeros((2, 8, 8, 1), np.uint8),
                                                       data.PreprocessConfig(normalization="imagenet")),
                               "'imagenet' has 3 channel statistics, the images 1 channels; set channels=3"),
    "dataset-typo": (lambda: data.get_source("fashon_mnist", "train"), "did you mean 'fashion_mnist'"),
    "dataset-options": (lambda: data.get_source("fashion_mnist", "train", resize_to=32),
                        "takes no options \\['resize_to'\\]"),
    "synthetic-zero-examples": (lambda: data.synthetic("train", 0), "num_examples >= 1"),
    "synthetic-bad-shape": (lambda: data.synthetic("train", 8, image_shape=(8, 8)), "image_shape \\(H, W, C\\)"),
    "labels-beyond-classes": (lambda: data.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 9]), SRC.info),
                              "labels must lie in \\[0, num_classes=4\\), got \\[9\\]"),
    "labels-fractional": (lambda: data.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.array([0.5, 1.0]),
                                                   SRC.info), "labels must be integer class indices"),
    "subset-out-of-range": (lambda: data.SubsetSource(SRC, np.array([0, 99]), "x"), "indices must lie in \\[0, 16\\)"),
    "augment-seed-count": (lambda: data.augment_batch(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(3, np.uint32),
                                                      data.AugmentConfig()), "one seed per image"),
    "split-fraction": (lambda: data.split_train_validation(SRC, 1.5), "validation_fraction must be in \\(0, 1\\)"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_refuses(case):
    fn, match = DATA_CASES[case]
    with pytest.raises((ValueError, IndexError), match=match):
        fn()


@pytest.mark.parametrize("call", ["fashion_mnist", "get_source"])
def test_missing_fashion_mnist_names_the_path_and_the_fix(tmp_path, call):
    where = str(tmp_path / "nowhere")
    load = data.fashion_mnist if call == "fashion_mnist" else lambda s, d: data.get_source("fashion_mnist", s, d)
    with pytest.raises(FileNotFoundError, match=f"{where}/train-images.*apt-get install dataset-fashion-mnist"
                                                f".*--config.data.data_dir"):
        load("train", where)


def test_data_valid_controls():
    assert len(data.take(SRC, 16)) == 16 and len(data.take(SRC, 5)) == 5 and data.take(SRC, None) is SRC
    batch = next(data.train_iterator(SRC, batch_size=4, num_steps=1, seed=0))
    assert batch["image"].shape == (4, 8, 8, 1) and batch["image"].dtype == np.float32
    rgb = data.preprocess(np.zeros((2, 8, 8, 1), np.uint8), data.PreprocessConfig(channels=3, normalization="imagenet"))
    assert rgb.shape == (2, 8, 8, 3)


# --- genotypes -----------------------------------------------------------------------------------

V2 = genotype_data.as_dict("DARTS_V2")


def _edited(edit):
    d = copy.deepcopy(V2)
    edit(d)
    return d


GENOTYPE_CASES = {
    "op-unknown": (lambda d: d["normal"].__setitem__(0, ["sep_conv_9x9", 0]),
                   "edge 0 uses unknown op 'sep_conv_9x9'; the op names are \\['none', 'max_pool_3x3'"),
    "op-not-a-string": (lambda d: d["reduce"].__setitem__(2, [3, 0]), "'reduce' edge 2 names its op 3"),
    "input-out-of-range": (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", 5]),
                           "edge 0 \\(node 2\\) takes input 5.*states 0..1"),
    "input-negative": (lambda d: d["reduce"].__setitem__(7, ["max_pool_3x3", -1]), "edge 7 \\(node 5\\) takes input -1"),
    "input-fractional": (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", 1.5]), "input is 1.5; state indices"),
    "input-bool": (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", True]), "input is True"),
    "input-string": (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", "1"]), "input is '1'"),
    "odd-edge-count": (lambda d: d["normal"].pop(), "'normal' has 7 edges; .*2 incoming edges per"),
    "entry-not-a-pair": (lambda d: d["normal"].__setitem__(0, ["sep_conv_3x3", 0, 1]), "is not an \\[op, input_index\\]"),
    "gene-a-string": (lambda d: d.__setitem__("normal", "sep_conv_3x3"), "must be a list of \\[op, input_index\\]"),
    "concat-out-of-range": (lambda d: d.__setitem__("normal_concat", [2, 3, 4, 9]), "must list states in 0..5"),
    "concat-repeated": (lambda d: d.__setitem__("reduce_concat", [2, 2, 3, 4]), "lists a state twice"),
    "concat-a-string": (lambda d: d.__setitem__("normal_concat", "2345"), "must be a list of state indices"),
    "concat-empty": (lambda d: d.__setitem__("normal_concat", []), "must list states"),
    "key-missing": (lambda d: d.pop("reduce_concat"), "lacks \\['reduce_concat'\\]"),
}


@pytest.mark.parametrize("case", sorted(GENOTYPE_CASES))
def test_genotype_refused(case):
    edit, match = GENOTYPE_CASES[case]
    with pytest.raises(ValueError, match=match):
        genotypes.Genotype.from_dict(_edited(edit))


def test_genotype_files_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="No genotype file .*published genotypes \\['DARTS_V1', 'DARTS_V2', "
                                                "'KDL_FMNIST'\\]"):
        genotypes.load(str(tmp_path / "DARTS_V3"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="one JSON object"):
        genotypes.load(str(tmp_path / "list.json"))
    assert genotypes.load("DARTS_V2") == genotypes.Genotype.from_dict(V2)  # Valid control, by name.
    for name in genotype_data.NAMES:  # Every shipped genotype is a valid cell that knows its name.
        assert genotypes.load(name).meta["name"] == name
    (tmp_path / "search").mkdir()  # A finished search workdir, as the RKD-SC pipeline passes it.
    (tmp_path / "search" / "genotype.json").write_text(json.dumps(V2))
    assert genotypes.load(tmp_path / "search") == genotypes.Genotype.from_dict(V2)
