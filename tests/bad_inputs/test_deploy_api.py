"""Bad inputs to the deployed API (rkdsc_jax.deploy): each is refused on the host, before jit,
with one message naming the problem and the fix; valid inputs still work."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from rkdsc_jax import deploy

SHAPE = (28, 28, 1)
B = 2


def _rkdsc_spec():
    return deploy.SystemSpec(
        kind="rkdsc", encoder="cnn", encoder_kwargs={"features": (4, 8), "convs_per_stage": 1},
        system_kwargs=dict(num_classes=5, teacher_dim=8, num_tokens=49, cat_width=16, cat_depth=1, cat_heads=2,
                           symbols_per_token=1, input_mean=(0.3,), input_std=(0.4,)),
        input_shape=SHAPE)


def _tosc_spec():
    return deploy.SystemSpec(
        kind="tosc", encoder="cnn", encoder_kwargs={"features": (4, 8), "convs_per_stage": 1},
        system_kwargs=dict(num_classes=5, num_symbols=6, channel_adaptive=True, decoder_hidden=16,
                           input_mean=(0.3,), input_std=(0.4,)),
        input_shape=SHAPE)


def _variables(spec):
    """Random weights of the right shapes, from eval_shape: no init compile (seconds on 2 cores)."""
    model, images = spec.build(), jnp.zeros((1, *SHAPE))
    if spec.kind == "rkdsc":
        init = functools.partial(model.init, method="init_all")
    else:
        init = lambda key, x: model.init(key, x, 0.0, lambda y: y)  # noqa: E731
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), images)
    rng = np.random.default_rng(0)
    fill = lambda path, s: (rng.uniform(0.5, 2.0, s.shape) if "var" in jax.tree_util.keystr(path)  # noqa: E731
                            else rng.normal(0.0, 0.2, s.shape)).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    for name, spec in (("rkdsc", _rkdsc_spec()), ("tosc", _tosc_spec())):
        deploy.export(str(root / name), spec, _variables(spec))
    return root


@pytest.fixture(scope="module")
def tx(exports):
    return deploy.load_transmitter(str(exports / "rkdsc"))


@pytest.fixture(scope="module")
def rx(exports):
    return deploy.load_receiver(str(exports / "rkdsc"))


@pytest.fixture(scope="module")
def tosc(exports):
    return deploy.load_transmitter(str(exports / "tosc")), deploy.load_receiver(str(exports / "tosc"))


def _images(value=0.5, shape=(B, *SHAPE), dtype=np.float32):
    return np.full(shape, value, dtype)


def _nan_at(index, value=np.nan):
    x = _images()
    x[index] = value
    return x


def _mask(rows):
    return np.asarray(rows, np.float32)


PREFIX_12 = _mask([[1] * 12 + [0] * 37] * B)

TRANSMIT_CASES = [
    ("no_batch_axis", dict(images=_images(shape=SHAPE)), r"got one image \(28, 28, 1\): add a batch axis"),
    ("wrong_hw", dict(images=_images(shape=(B, 32, 32, 1))), r"images of shape \(B, 28, 28, 1\), got \(2, 32, 32, 1\)"),
    ("wrong_channels", dict(images=_images(shape=(B, 28, 28, 3))), r"got \(2, 28, 28, 3\); resize them"),
    ("rank_5", dict(images=_images(shape=(1, B, *SHAPE))), r"got \(1, 2, 28, 28, 1\); resize"),
    ("empty_batch", dict(images=_images(shape=(0, *SHAPE))), r"images is an empty batch"),
    ("int64_pixels", dict(images=_images(3, dtype=np.int64)), r"got dtype int64; convert them"),
    ("bool_images", dict(images=_images(1, dtype=bool)), r"got dtype bool; convert them"),
    ("complex_images", dict(images=_images(dtype=np.complex64)), r"images must be real, got dtype complex64"),
    ("string_images", dict(images=np.full((B, *SHAPE), "x")), r"images must be a numeric array, got dtype <U1"),
    ("nan_pixel", dict(images=_nan_at((1, 3, 4, 0))), r"images contains NaN at index \(1, 3, 4, 0\); pass finite"),
    ("inf_pixel", dict(images=_nan_at((0, 0, 0, 0), np.inf)), r"images contains inf at index \(0, 0, 0, 0\)"),
    ("float_0_255", dict(images=_images(200.0)), r"must be in \[0, 1\] but reach 200: divide 0..255 pixels by 255"),
    ("normalised", dict(images=_images(-0.5)), r"go down to -0.5: pass raw pixels, not normalised"),
    ("snr_nan", dict(snr_db=float("nan")), r"snr_db must be finite, got nan at index 0"),
    ("snr_inf_one", dict(snr_db=[0.0, float("inf")]), r"snr_db must be finite, got inf at index 1"),
    ("snr_wrong_length", dict(snr_db=[0.0, 1.0, 2.0]), r"one value per example \(2,\), got shape \(3,\)"),
    ("snr_2d", dict(snr_db=np.zeros((B, 1))), r"got shape \(2, 1\)"),
    ("snr_string", dict(snr_db="high"), r"snr_db must be a number in dB, got the string 'high'"),
    ("snr_none", dict(snr_db=None), r"snr_db is missing"),
    ("channel_unknown", dict(channel="fading"), r"Unknown channel 'fading'; expected one of"),
    ("channel_not_str", dict(channel=1), r"Unknown channel 1; expected one of"),
    ("num_symbols_0", dict(num_symbols=0), r"num_symbols must be in \[1, 49\], got 0"),
    ("num_symbols_over_max", dict(num_symbols=50), r"num_symbols must be in \[1, 49\], got 50"),
    ("num_symbols_float", dict(num_symbols=12.5), r"num_symbols must be a whole number \[1, 49\], got 12.5"),
    ("num_symbols_bool", dict(num_symbols=True), r"num_symbols must be a whole number \[1, 49\], got True"),
    ("num_symbols_str", dict(num_symbols="12"), r"num_symbols must be a whole number \[1, 49\], got '12'"),
]


@pytest.mark.parametrize("kwargs, message", [c[1:] for c in TRANSMIT_CASES], ids=[c[0] for c in TRANSMIT_CASES])
def test_transmit_refuses(tx, kwargs, message):
    args = dict(images=_images(), snr_db=5.0, channel="awgn", num_symbols=None) | kwargs
    with pytest.raises(ValueError, match=message):
        tx.transmit(**args)


def _received(width=98, batch=B, value=0.1):
    return np.full((batch, width), value, np.float32)


def _with(x, index, value):
    x = np.array(x)
    x[index] = value
    return x


RECEIVE_CASES = [
    ("wrong_width", dict(received=_received(10)), r"received symbols of shape \(B, 98\), got \(2, 10\)"),
    ("no_batch_axis", dict(received=np.zeros(98, np.float32)), r"got \(98,\) \(add a batch axis"),
    ("complex", dict(received=np.zeros((B, 98), np.complex64)), r"must be real, got dtype complex64"),
    ("nan", dict(received=_with(_received(), (1, 7), np.nan)), r"received symbols contains NaN at index \(1, 7\)"),
    ("inf", dict(received=_with(_received(), (0, 0), -np.inf)), r"received symbols contains inf at index \(0, 0\)"),
    ("empty_batch", dict(received=_received(batch=0)), r"is an empty batch"),
    ("strings", dict(received=[["a"] * 98] * B), r"must be a numeric array, got dtype <U1"),
    ("mask_wrong_width", dict(mask=np.ones((B, 48))), r"mask must have shape \(2, 49\).*got \(2, 48\)"),
    ("mask_batch_mismatch", dict(mask=np.ones((3, 49))), r"mask must have shape \(2, 49\) to match the 2 received"),
    ("mask_half", dict(mask=_with(np.ones((B, 49)), (0, 3), 0.5)), r"only 0 and 1.*got 0.5 at index \(0, 3\)"),
    ("mask_two", dict(mask=_with(np.ones((B, 49)), (1, 0), 2)), r"only 0 and 1.*got 2.0 at index \(1, 0\)"),
    ("mask_not_prefix", dict(mask=_with(PREFIX_12, (1, 20), 1)), r"mask row 1 is not a prefix mask .*symbol 20"),
    ("mask_empty_row", dict(mask=_with(PREFIX_12, (0, slice(None)), 0)), r"mask row 0 sends no symbol"),
    ("snr_missing", dict(snr_db=None), r"conditioned on the link: pass snr_db"),
    ("snr_nan", dict(snr_db=[1.0, float("nan")]), r"snr_db must be finite, got nan at index 1"),
    ("channel_unknown", dict(channel="AWGN"), r"Unknown channel 'AWGN'"),
]


@pytest.mark.parametrize("kwargs, message", [c[1:] for c in RECEIVE_CASES], ids=[c[0] for c in RECEIVE_CASES])
def test_receive_and_predict_refuse(rx, kwargs, message):
    args = dict(received=_received(), mask=PREFIX_12, snr_db=5.0, channel="awgn") | kwargs
    with pytest.raises(ValueError, match=message):
        rx.receive(**args)
    with pytest.raises(ValueError, match=message):
        rx.predict(**args)


def test_tosc_system_refuses_budgets_and_masks_it_cannot_send(tosc, rx):
    transmitter, receiver = tosc
    with pytest.raises(ValueError, match="always sends 6 symbols; num_symbols=3 needs a variable-length"):
        transmitter.transmit(_images(), 0.0, num_symbols=3)
    with pytest.raises(ValueError, match="always sends all 6 symbols; its mask must be all ones"):
        receiver.receive(_received(12), _mask([[1, 1, 1, 0, 0, 0]] * B))
    sent = transmitter.transmit(_images(), 0.0)  # Valid control: a full mask is fine.
    assert receiver.predict(sent.symbols, sent.mask).shape == (B,)


def _sent(tx):
    return tx.transmit(_images(), 5.0, "awgn", num_symbols=12)


OVER_CHANNEL_CASES = [
    ("key_int", dict(key=0), r"key must be one PRNG key"),
    ("key_batch", dict(key=jax.random.split(jax.random.key(0), 2)), r"key must be one PRNG key.*split"),
    ("csi_unknown", dict(csi="partial"), r"Unknown csi 'partial'"),
    ("equalizer_unknown", dict(equalizer="lmmse"), r"Unknown equalizer 'lmmse'"),
    ("channel_unknown", dict(channel="wifi"), r"Unknown channel 'wifi'"),
    ("sent_array", dict(sent=np.zeros((B, 98))), r"sent must be the Transmission that transmit returned"),
    ("symbols_nan", dict(sent=deploy.Transmission(_with(_received(), (0, 1), np.nan), PREFIX_12)),
     r"sent.symbols contains NaN at index \(0, 1\)"),
    ("symbols_odd_width", dict(sent=deploy.Transmission(_received(97), PREFIX_12)), r"shape \(B, 2K\), got \(2, 97\)"),
    ("mask_mismatch", dict(sent=deploy.Transmission(_received(), np.ones((B, 40)))), r"mask must have shape \(2, 49\)"),
    ("mask_values", dict(sent=deploy.Transmission(_received(), np.full((B, 49), 0.3))), r"only 0 and 1"),
    ("snr_inf", dict(snr_db=float("inf")), r"snr_db must be finite, got inf"),
]


@pytest.mark.parametrize("kwargs, message", [c[1:] for c in OVER_CHANNEL_CASES], ids=[c[0] for c in OVER_CHANNEL_CASES])
def test_over_channel_refuses(tx, kwargs, message):
    args = dict(key=jax.random.key(0), sent=None, snr_db=5.0, channel="awgn") | kwargs
    if args["sent"] is None:
        args["sent"] = _sent(tx)
    with pytest.raises((ValueError, TypeError), match=message):
        deploy.over_channel(args.pop("key"), args.pop("sent"), **args)


LABELS = np.array([0, 1, 2, 3])
ACCURACY_CASES = [
    ("label_out_of_range", dict(labels=np.array([0, 1, 7, 3])), r"labels must be in \[0, 5\).*got 7 at index 2"),
    ("label_negative", dict(labels=np.array([0, -1, 2, 3])), r"got -1 at index 1"),
    ("labels_too_few", dict(labels=np.array([0, 1, 2])), r"4 images but 3 labels"),
    ("labels_float", dict(labels=LABELS.astype(np.float32)), r"labels must be integer class indices, got dtype float32"),
    ("labels_one_hot", dict(labels=np.eye(5)[LABELS]), r"labels must be class indices of shape \(B,\).*one-hot"),
    ("snrs_empty", dict(snrs_db=[]), r"snrs_db must be a non-empty list"),
    ("snrs_nan", dict(snrs_db=[0.0, float("nan")]), r"snrs_db contains NaN at index 1"),
    ("snrs_duplicate", dict(snrs_db=[0.0, 10.0, 0.0]), r"snrs_db lists an SNR twice"),
    ("snrs_string", dict(snrs_db="0,10"), r"snrs_db must be numbers in dB, got the string"),
    ("batch_size_0", dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    ("seed_float", dict(seed=0.5), r"seed must be a whole number >= 0"),
    ("images_0_255", dict(images=_images(255.0, shape=(4, *SHAPE))), r"reach 255: divide 0..255 pixels by 255"),
    ("channel_unknown", dict(channel="fast"), r"Unknown channel 'fast'"),
]


@pytest.mark.parametrize("kwargs, message", [c[1:] for c in ACCURACY_CASES], ids=[c[0] for c in ACCURACY_CASES])
def test_accuracy_vs_snr_refuses_before_running(tx, rx, kwargs, message):
    args = dict(images=_images(shape=(4, *SHAPE)), labels=LABELS, snrs_db=[0.0, 10.0]) | kwargs
    with pytest.raises(ValueError, match=message):
        deploy.accuracy_vs_snr(tx, rx, **args)


def test_accuracy_vs_snr_refuses_halves_of_different_systems(tx, rx, tosc):
    with pytest.raises(ValueError, match="come from different systems; load both halves of one export"):
        deploy.accuracy_vs_snr(tx, tosc[1], _images(shape=(4, *SHAPE)), LABELS, [0.0])
    with pytest.raises(TypeError, match="takes a deploy.Transmitter and a deploy.Receiver"):
        deploy.accuracy_vs_snr(rx, tx, _images(shape=(4, *SHAPE)), LABELS, [0.0])


def test_valid_inputs_still_work(tx, rx):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, *SHAPE), dtype=np.uint8)  # uint8 is read as pixels / 255.
    sent = tx.transmit(pixels, [0.0, 5.0, 10.0, 20.0], "rayleigh", num_symbols=np.int64(12))
    as_float = tx.transmit(pixels / np.float32(255), [0.0, 5.0, 10.0, 20.0], "rayleigh", num_symbols=12)
    np.testing.assert_allclose(sent.symbols, as_float.symbols, atol=1e-6)
    assert np.asarray(sent.mask).sum(-1).tolist() == [12] * 4
    received = deploy.over_channel(jax.random.key(1), sent, 10.0, "rayleigh")
    assert rx.predict(received, sent.mask, 10.0, "rayleigh").shape == (4,)
    # Noise in slots the transmitter left empty does not change the prediction.
    noisy = np.array(received) + (1 - np.concatenate([sent.mask, sent.mask], -1)) * 3.0
    np.testing.assert_allclose(rx.receive(noisy, sent.mask, 10.0, "rayleigh"),
                               rx.receive(received, sent.mask, 10.0, "rayleigh"), atol=1e-6)
    result = deploy.accuracy_vs_snr(tx, rx, pixels, np.array([0, 1, 2, 4]), 10.0, "rayleigh", batch_size=4)
    assert list(result) == [10.0] and 0.0 <= result[10.0] <= 1.0


def test_checkify_mode_checks_values_inside_jit(exports):
    with pytest.raises(ValueError, match=r"checks must be one of \('host', 'checkify'\), got 'xla'"):
        deploy.load_receiver(str(exports / "rkdsc"), checks="xla")
    tx = deploy.load_transmitter(str(exports / "rkdsc"), checks="checkify")
    rx = deploy.load_receiver(str(exports / "rkdsc"), checks="checkify")
    sent = tx.transmit(_images(), 5.0, num_symbols=12)  # Valid control.
    assert rx.predict(sent.symbols, sent.mask, 5.0).shape == (B,)
    # Shapes are still checked on the host; values now inside the compiled function.
    with pytest.raises(ValueError, match=r"received symbols of shape \(B, 98\)"):
        rx.receive(_received(10), sent.mask, 5.0)
    with pytest.raises(checkify.JaxRuntimeError, match="received symbols contains NaN or inf"):
        rx.receive(_with(sent.symbols, (0, 3), np.nan), sent.mask, 5.0)
    with pytest.raises(checkify.JaxRuntimeError, match="mask must be a prefix mask"):
        rx.receive(sent.symbols, _with(sent.mask, (0, 30), 1), 5.0)
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape("images must be in [0, 1]; divide")):
        tx.transmit(_images(255.0), 5.0, num_symbols=12)
    with pytest.raises(checkify.JaxRuntimeError, match="snr_db contains NaN or inf"):
        tx.transmit(_images(), float("nan"), num_symbols=12)


def test_checkify_mode_catches_non_finite_outputs_of_damaged_weights(exports):
    rx = deploy.load_receiver(str(exports / "rkdsc"), checks="checkify")
    rx.variables = jax.tree.map(lambda x: x * np.nan, rx.variables)  # Weights damaged in memory.
    with pytest.raises(checkify.JaxRuntimeError, match="the logits are not finite: the weights may be damaged"):
        rx.receive(_received(), PREFIX_12, 5.0)
