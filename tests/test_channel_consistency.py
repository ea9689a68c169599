"""Training and evaluation send through one channel description (issue 18, item 6).

Training used to send AWGN rows without an equaliser while evaluation applied the config's
MMSE, which scales an AWGN sample by 1/(1 + sigma^2): x0.5 at 0 dB. These tests fail if
the training mixers and the evaluation steps ever disagree again.

Cheap: tiny arrays, one-layer models, one train and one eval step per system.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rkdsc_jax import channels, train
from rkdsc_jax.distill import rkd_steps, tosc_steps

B, N = 64, 64  # N reals = 32 complex symbols per sample.


def _features(batch=B, n=N, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, n)), jnp.float32)


def _gain(received, sent):
    """Per-sample least-squares gain of the received signal on the power-normalised sent one."""
    received, sent = np.asarray(received, np.float64), np.asarray(sent, np.float64)
    unit = sent * np.sqrt(sent.shape[-1] / 2) / np.linalg.norm(sent, axis=-1, keepdims=True)
    return np.sum(received * unit, -1) / np.sum(unit * unit, -1)


def _tosc_mix(key, x, snr, use_rayleigh, equalizer):
    return tosc_steps.mixed_channel(key, x, snr, use_rayleigh, csi="perfect", equalizer=equalizer)


def _rkd_mix(key, x, snr, use_rayleigh, equalizer):
    mask = jnp.ones((x.shape[0], x.shape[1] // 2))
    return rkd_steps.mixed_masked_channel(key, x, mask, snr, use_rayleigh, csi="perfect", equalizer=equalizer)


MIXERS = {"tosc": _tosc_mix, "rkd": _rkd_mix}


SNRS_DB = (-10.0, 0.0, 10.0)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_training_rows_equal_the_evaluation_channel_and_theory(mixer):
    """Every training row equals what evaluation sends at its kind, SNR and key; AWGN rows
    under MMSE have the gain 1/(1 + sigma^2): 0.0909, 0.5, 0.909 at -10, 0, 10 dB."""
    key, per_snr = jax.random.key(3), 256
    x = _features(per_snr * len(SNRS_DB))
    snr = jnp.repeat(jnp.asarray(SNRS_DB), per_snr)
    use_rayleigh = jnp.arange(len(x)) % 4 == 3  # One row in four is Rayleigh.
    mixed = np.asarray(MIXERS[mixer](key, x, snr, use_rayleigh, "mmse"))
    awgn_key, rayleigh_key = jax.random.split(key)  # ChannelSpec.mixed's documented keys.
    for kind, k, rows in (("awgn", awgn_key, ~use_rayleigh), ("rayleigh", rayleigh_key, use_rayleigh)):
        evaluated = tosc_steps._eval_channel(k, x, snr, kind, "perfect", "mmse")  # eval_step's channel.
        np.testing.assert_allclose(mixed[rows], np.asarray(evaluated)[rows], rtol=1e-5, atol=1e-6, err_msg=kind)
    gain = _gain(mixed, x)
    for i, snr_db in enumerate(SNRS_DB):
        rows = np.arange(i * per_snr, (i + 1) * per_snr)
        rows = rows[~np.asarray(use_rayleigh)[rows]]
        sigma2 = 10 ** (-snr_db / 10)
        theory = 1 / (1 + sigma2)
        se = theory * np.sqrt(sigma2 / 2 / (N / 2)) / np.sqrt(len(rows))
        assert abs(gain[rows].mean() - theory) < 5 * se, (snr_db, gain[rows].mean(), theory, se)


# --- a train step and an eval step of a tiny model see the same received signal -----------

_SEEN = []


def _record(gain):
    _SEEN.append(np.asarray(gain))


def _record_gain(x, received):
    unit = x * jnp.sqrt(x.shape[-1] / 2) / jnp.linalg.norm(x, axis=-1, keepdims=True)
    jax.debug.callback(_record, jnp.sum(received * unit, -1) / jnp.sum(unit * unit, -1))


class TinyTOSC(nn.Module):
    """TOSC's call signature: (images, snr_db, channel_fn, train, sample) -> (logits, (x, mu, sigma))."""

    @nn.compact
    def __call__(self, images, snr_db, channel_fn, train=False, sample=False):
        x = nn.Dense(N)(images.reshape(images.shape[0], -1))
        received = channel_fn(x)
        _record_gain(x, received)
        return nn.Dense(4)(received), (x, x, jnp.ones_like(x))


class TinyRKD(nn.Module):
    """The stage-2 network's signature: (images, snr_db, channel_fn, type, budget, train)."""

    @nn.compact
    def __call__(self, images, snr_db, channel_fn, channel_type, num_symbols, train=False):
        x = nn.Dense(N)(images.reshape(images.shape[0], -1))
        budget = N // 2 if num_symbols is None else num_symbols
        mask = (jnp.arange(N // 2)[None, :] < jnp.reshape(budget, (-1, 1))).astype(jnp.float32)
        received = channel_fn(x, jnp.broadcast_to(mask, (x.shape[0], N // 2)))
        _record_gain(x, received)
        logits = nn.Dense(4)(received)
        return logits, received, None


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(0, 1, (B, 4, 4, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 4, B), jnp.int32), "index": jnp.arange(B),
            "mask": jnp.ones((B,), jnp.float32)}


def _state(model, **init_kwargs):
    return train.create_train_state(model, optax.sgd(0.0), jnp.zeros((1, 4, 4, 1)), 0, **init_kwargs)


def _mean_gain():
    gain = np.concatenate(_SEEN)
    _SEEN.clear()
    return gain.mean()


def test_tosc_train_and_eval_steps_see_the_same_received_signal():
    state = _state(TinyTOSC(), snr_db=0.0, channel_fn=lambda x: x)
    objective = tosc_steps.Objective(loss="ce", targets="labels", num_classes=4, snr_range=(0.0, 0.0),
                                     channels=("awgn",), csi="perfect", equalizer="mmse")
    _SEEN.clear()
    jax.jit(lambda s, b: tosc_steps.train_step(s, b, objective=objective))(state, _batch())
    jax.effects_barrier()
    trained = _mean_gain()
    jax.jit(lambda s, b: tosc_steps.eval_step(s, b, 0.0, jax.random.key(9), kind="awgn", csi="perfect",
                                              equalizer="mmse"))(state, _batch(1))
    jax.effects_barrier()
    evaluated = _mean_gain()
    assert abs(trained - 0.5) < 0.05 and abs(evaluated - 0.5) < 0.05, (trained, evaluated)


def test_rkd_stage2_and_its_eval_step_see_the_same_received_signal():
    state = _state(TinyRKD(), snr_db=0.0, channel_fn=lambda x, m: x, channel_type=jnp.zeros((1,), jnp.int32),
                   num_symbols=None)
    objective = rkd_steps.RKDObjective(snr_range=(0.0, 0.0), channels=("awgn",), budgets=(N // 2,),
                                       csi="perfect", equalizer="mmse")
    _SEEN.clear()
    jax.jit(lambda s, b: rkd_steps.stage2_step(s, b, None, objective=objective, teacher_fn=None,
                                               max_symbols=N // 2))(state, _batch())
    jax.effects_barrier()
    trained = _mean_gain()
    jax.jit(lambda s, b: rkd_steps.stage2_eval_step(s, b, 0.0, jax.random.key(9), kind="awgn", csi="perfect",
                                                    equalizer="mmse"))(state, _batch(1))
    jax.effects_barrier()
    evaluated = _mean_gain()
    assert abs(trained - 0.5) < 0.05 and abs(evaluated - 0.5) < 0.05, (trained, evaluated)


def test_objectives_refuse_an_unknown_receiver_at_construction():
    with pytest.raises(ValueError, match="unknown equalizer 'lmmse'"):
        tosc_steps.Objective(equalizer="lmmse")
    with pytest.raises(ValueError, match="unknown csi mode 'partial'"):
        rkd_steps.RKDObjective(csi="partial")
    assert tosc_steps.Objective().channel == rkd_steps.RKDObjective().channel == channels.ChannelSpec()
