"""rkdsc_jax.deploy: export a system's two halves, load them in a fresh process without the
training code, and get the predictions of the full model back."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rkdsc_jax import channels, deploy, train

INPUT_SHAPE = (28, 28, 1)


def _rkdsc_spec():
    return deploy.SystemSpec(
        kind="rkdsc", encoder="cnn", encoder_kwargs={"features": (4, 8), "convs_per_stage": 1},
        system_kwargs=dict(num_classes=5, teacher_dim=8, num_tokens=49, cat_width=16, cat_depth=1, cat_heads=2,
                           symbols_per_token=1, input_mean=(0.3,), input_std=(0.4,)),
        input_shape=INPUT_SHAPE, class_names=tuple("abcde"))


def _tosc_spec():
    return deploy.SystemSpec(
        kind="tosc", encoder="cnn", encoder_kwargs={"features": (4, 8), "convs_per_stage": 1},
        system_kwargs=dict(num_classes=5, num_symbols=6, channel_adaptive=True, decoder_hidden=16,
                           input_mean=(0.3,), input_std=(0.4,)),
        input_shape=INPUT_SHAPE)


def _random_variables(spec, seed=0):
    """Initialised weights with batch statistics far from their (0, 1) start, so an export that
    lost them would predict differently."""
    model = spec.build()
    images = jnp.zeros((1, *INPUT_SHAPE))
    if spec.kind == "rkdsc":
        variables = model.init(jax.random.PRNGKey(seed), images, method="init_all")
    else:
        variables = model.init(jax.random.PRNGKey(seed), images, 0.0, lambda x: x)
    leaves, treedef = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    stats = [jax.random.uniform(k, x.shape, minval=0.5, maxval=2.0) for k, x in zip(keys, leaves)]
    return {"params": variables["params"], "batch_stats": jax.tree.unflatten(treedef, stats)}


def _reference_logits(spec, variables, images, snr, channel_type, num_symbols=None):
    """The full (training) module's forward pass with an ideal channel."""
    model = spec.build()
    if spec.kind == "rkdsc":
        return model.apply(variables, images, snr, lambda x, mask: x, channel_type, num_symbols)[0]
    return model.apply(variables, images, snr, lambda x: x)[0]


_FRESH_PROCESS = r"""
import sys
import numpy as np
from rkdsc_jax import deploy

directory, inputs, output, num_symbols = sys.argv[1:5]
z = np.load(inputs)
transmitter, receiver = deploy.load_transmitter(directory), deploy.load_receiver(directory)
sent = transmitter.transmit(z["images"], z["snr"], "rayleigh", num_symbols=int(num_symbols) or None)
logits = receiver.receive(sent.symbols, sent.mask, z["snr"], "rayleigh")
np.savez(output, logits=np.asarray(logits), mask=np.asarray(sent.mask))
training_code = sorted(m for m in sys.modules if m.startswith(("experiments", "rkdsc_jax.train", "rkdsc_jax.distill")))
assert not training_code, training_code
"""


@pytest.mark.parametrize("spec_fn, num_symbols", [(_rkdsc_spec, 12), (_tosc_spec, 0)])
def test_export_round_trip_in_a_fresh_process_gives_the_full_models_predictions(tmp_path, spec_fn, num_symbols):
    spec = spec_fn()
    variables = _random_variables(spec)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (6, *INPUT_SHAPE)), np.float32)
    snr = np.linspace(-5.0, 20.0, 6).astype(np.float32)
    directory = str(tmp_path / "export")
    written = deploy.export(directory, spec, variables, metadata={"run": "test"})
    assert sorted(os.listdir(directory)) == ["receiver", "spec.json", "transmitter"]

    np.savez(tmp_path / "inputs.npz", images=images, snr=snr)
    subprocess.run([sys.executable, "-c", _FRESH_PROCESS, directory, str(tmp_path / "inputs.npz"),
                    str(tmp_path / "out.npz"), str(num_symbols)], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    out = np.load(tmp_path / "out.npz")

    rayleigh = jnp.full((6,), channels.CHANNEL_KINDS.index("rayleigh"), jnp.int32)
    expected = _reference_logits(spec, variables, jnp.asarray(images), jnp.asarray(snr), rayleigh,
                                 num_symbols or None)
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["mask"].sum(-1), num_symbols or spec.max_symbols)
    # The halves hold every deployed parameter between them, the stage-1 projection in neither.
    halves = deploy.split_variables(spec.kind, variables)
    assert written["params"] == {"transmitter": train.param_count(halves[0]["params"]),
                                 "receiver": train.param_count(halves[1]["params"])}
    projection = train.param_count(variables["params"].get("projection", {}))
    assert sum(written["params"].values()) == train.param_count(variables["params"]) - projection
    assert json.load(open(os.path.join(directory, "spec.json")))["metadata"] == {"run": "test"}


def test_over_channel_sends_only_the_masked_symbols_and_is_exact_at_high_snr(tmp_path):
    spec = _rkdsc_spec()
    deploy.export(str(tmp_path / "e"), spec, _random_variables(spec))
    transmitter = deploy.load_transmitter(str(tmp_path / "e"))
    images = np.random.default_rng(0).integers(0, 256, (3, *INPUT_SHAPE), dtype=np.uint8)
    sent = transmitter.transmit(images, 10.0, "awgn", num_symbols=20)
    received = deploy.over_channel(jax.random.key(0), sent, 120.0, "awgn")
    # Noise-free limit of the link: the sent symbols at unit power, unsent ones zero.
    z = channels.real_to_complex(sent.symbols) * sent.mask
    power = jnp.sum(jnp.abs(z) ** 2, -1, keepdims=True) / jnp.sum(sent.mask, -1, keepdims=True)
    np.testing.assert_allclose(received, channels.complex_to_real(z / jnp.sqrt(power)), atol=1e-4)
    # uint8 images are read as pixels / 255.
    as_float = transmitter.transmit(images.astype(np.float32) / 255.0, 10.0, "awgn", num_symbols=20)
    np.testing.assert_allclose(sent.symbols, as_float.symbols, atol=1e-6)


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    spec = _rkdsc_spec()
    directory = str(tmp_path / "e")
    deploy.export(directory, spec, _random_variables(spec))
    transmitter, receiver = deploy.load_transmitter(directory), deploy.load_receiver(directory)
    images = np.zeros((2, *INPUT_SHAPE), np.float32)
    with pytest.raises(ValueError, match=r"images of shape \(B, 28, 28, 1\)"):
        transmitter.transmit(np.zeros((2, 32, 32, 3)), 0.0)
    with pytest.raises(ValueError, match="snr_db must be finite"):
        transmitter.transmit(images, float("nan"))
    with pytest.raises(ValueError, match="one value per example"):
        transmitter.transmit(images, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="Unknown channel 'fading'"):
        transmitter.transmit(images, 0.0, "fading")
    with pytest.raises(ValueError, match=r"num_symbols must be in \[1, 49\]"):
        transmitter.transmit(images, 0.0, num_symbols=50)
    with pytest.raises(ValueError, match=r"received symbols of shape \(B, 98\)"):
        receiver.receive(np.zeros((2, 10)), None, 0.0)
    with pytest.raises(ValueError, match="pass snr_db"):
        receiver.receive(np.zeros((2, 98)))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export(directory, spec, _random_variables(spec))
    deploy.export(directory, spec, _random_variables(spec, seed=3), overwrite=True)  # An export may be replaced...
    os.makedirs(tmp_path / "results")
    with pytest.raises(FileExistsError, match="not an export"):  # ...anything else may not.
        deploy.export(str(tmp_path / "results"), spec, _random_variables(spec), overwrite=True)
    with pytest.raises(FileNotFoundError, match="not an rkdsc_jax export"):
        deploy.load_receiver(str(tmp_path / "results"))
    with pytest.raises(ValueError, match="always sends 6 symbols"):
        tosc = _tosc_spec()
        deploy.export(str(tmp_path / "t"), tosc, _random_variables(tosc))
        deploy.load_transmitter(str(tmp_path / "t")).transmit(images, 0.0, num_symbols=3)
    variables = _random_variables(spec)
    variables["params"]["extra_head"] = {"kernel": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match=r"\['extra_head'\], which belong to neither"):
        deploy.split_variables("rkdsc", variables)


def test_variables_of_a_run_saved_on_eight_devices_restore_on_one(tmp_path):
    spec = _tosc_spec()
    variables = _random_variables(spec)
    mesh = train.make_mesh(8)
    state = train.TrainState.create(apply_fn=None, params=variables["params"], tx=optax.adam(1e-3),
                                    batch_stats=variables["batch_stats"], rng=jax.random.PRNGKey(0))
    state = jax.device_put(state, train.replicated(mesh))
    checkpointer = train.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    checkpointer.save(7, state)
    checkpointer.close()
    restored = train.Checkpointer(str(tmp_path / "checkpoints")).restore_variables()
    assert set(restored) == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    assert {d for leaf in jax.tree.leaves(restored) for d in leaf.devices()} == {jax.local_devices()[0]}
