"""Channel codecs: adaptive module, Gaussian IB head, CAT encoder/decoder with budgets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax import channels
from rkdsc_jax.models import codecs


def _init(module, *args, **kwargs):
    return module.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, *args, **kwargs)


@pytest.mark.parametrize("shape", [(3, 4, 5, 8), (3, 7, 8), (3, 8)])
def test_channel_adaptive_module_scales_channels_by_snr_dependent_weights(shape):
    module = codecs.ChannelAdaptiveModule()
    x = jax.random.normal(jax.random.key(2), shape)
    params = _init(module, x, 0.0)
    low, high = module.apply(params, x, -5.0), module.apply(params, x, 15.0)
    chex.assert_shape(low, shape)
    assert float(jnp.abs(low - high).max()) > 1e-4  # The SNR changes the weights.
    # Output is x scaled per (example, channel) by a weight in (0, 1).
    ratio = low / x
    axes = tuple(range(1, x.ndim - 1))
    if axes:
        np.testing.assert_allclose(ratio, jnp.broadcast_to(ratio.mean(axes, keepdims=True), shape), rtol=1e-4)
    assert float(ratio.min()) > 0 and float(ratio.max()) < 1
    # Hand computation of the weights (SPEC §3.3): GAP, concat s/20, Dense, ReLU, Dense, sigmoid.
    p = params["params"]
    pooled = x.mean(axis=axes) if axes else x
    h = jax.nn.relu(jnp.concatenate([pooled, jnp.full((3, 1), -5.0 / 20)], -1) @ p["hidden"]["kernel"]
                    + p["hidden"]["bias"])
    w = jax.nn.sigmoid(h @ p["weights"]["kernel"] + p["weights"]["bias"])
    np.testing.assert_allclose(low, x * w.reshape(3, *([1] * len(axes)), -1), rtol=1e-5, atol=1e-6)
    # Per-example SNRs.
    per_example = module.apply(params, x, jnp.array([-5.0, 15.0, -5.0]))
    np.testing.assert_allclose(per_example[0], low[0], rtol=1e-6)
    np.testing.assert_allclose(per_example[1], high[1], rtol=1e-6)


def test_gaussian_head_samples_have_its_mean_and_std():
    head = codecs.GaussianEncoderHead(features=4)
    x = jnp.ones((1, 6))
    params = _init(head, x)
    xs = jnp.ones((20000, 6))
    sample, mu, sigma = head.apply(params, xs, rngs={"sample": jax.random.key(3)})
    np.testing.assert_allclose(sample.mean(0), mu[0], atol=5 * float(sigma.max()) / np.sqrt(20000))
    np.testing.assert_allclose(sample.std(0), sigma[0], rtol=0.03)
    assert float(sigma.min()) >= 1e-3
    det, mu2, _ = head.apply(params, xs[:2], deterministic=True)
    np.testing.assert_array_equal(det, mu2)
    # Reparameterised: the sample is differentiable in the parameters.
    grads = jax.grad(lambda p: head.apply(p, xs[:8], rngs={"sample": jax.random.key(4)})[0].sum())(params)
    chex.assert_tree_all_finite(grads)


def _cat(num_tokens=6, dim=10, out_dim=12):
    enc = codecs.CATEncoder(width=16, depth=2, num_heads=2, symbols_per_token=3)
    dec = codecs.CATDecoder(num_tokens=num_tokens, out_dim=out_dim, width=16, depth=1, num_heads=2)
    tokens = jax.random.normal(jax.random.key(5), (4, num_tokens, dim))
    enc_params = _init(enc, tokens, 0.0)
    x, mask = enc.apply(enc_params, tokens, 0.0)
    dec_params = _init(dec, x, mask, 0.0)
    return enc, dec, tokens, enc_params, dec_params


def test_cat_shapes_budgets_and_masking():
    enc, dec, tokens, enc_params, dec_params = _cat()
    x, mask = enc.apply(enc_params, tokens, 5.0, channel_type=1, num_symbols=jnp.array([18, 9, 4, 1]))
    chex.assert_shape(x, (4, 36))  # K = 6 tokens × 3 symbols = 18 complex symbols = 36 reals.
    np.testing.assert_array_equal(mask.sum(-1), [18, 9, 4, 1])
    np.testing.assert_array_equal(mask[:, 0], 1.0)  # A prefix mask.
    z = channels.real_to_complex(x)
    assert float(jnp.abs(z * (1 - mask)).max()) == 0.0  # Masked symbols are not produced.
    received = channels.transmit(jax.random.key(6), x, 5.0, kind="rayleigh", mask=mask)
    zr = channels.real_to_complex(received)
    assert float(jnp.abs(zr * (1 - mask)).max()) == 0.0  # ... nor received.
    tokens_out, pooled = dec.apply(dec_params, received, mask, 5.0, channel_type=1)
    chex.assert_shape(tokens_out, (4, 6, 12))
    chex.assert_shape(pooled, (4, 12))
    with pytest.raises(ValueError, match="tokens"):
        enc.apply(enc_params, tokens[0], 0.0)


def test_power_normalisation_counts_only_the_active_symbols():
    enc, dec, tokens, enc_params, dec_params = _cat()
    x, mask = enc.apply(enc_params, tokens, 5.0, num_symbols=5)
    z = channels.normalize_power(channels.real_to_complex(x), mask)
    np.testing.assert_allclose(jnp.sum(jnp.abs(z) ** 2, -1) / mask.sum(-1), 1.0, rtol=1e-5)
    # Values at masked positions cannot leak into what is received.
    noise = jax.random.normal(jax.random.key(7), x.shape) * (1 - jnp.concatenate([mask, mask], -1))
    key = jax.random.key(8)
    a = channels.transmit(key, x, 10.0, mask=mask)
    b = channels.transmit(key, x + noise, 10.0, mask=mask)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cat_outputs_depend_on_snr_and_channel_type():
    enc, dec, tokens, enc_params, dec_params = _cat()
    x_low, mask = enc.apply(enc_params, tokens, -10.0)
    x_high, _ = enc.apply(enc_params, tokens, 25.0)
    x_rayleigh, _ = enc.apply(enc_params, tokens, -10.0, channel_type=1)
    assert float(jnp.abs(x_low - x_high).max()) > 1e-3
    assert float(jnp.abs(x_low - x_rayleigh).max()) > 1e-3
    _, pooled_low = dec.apply(dec_params, x_low, mask, -10.0)
    _, pooled_high = dec.apply(dec_params, x_low, mask, 25.0)
    assert float(jnp.abs(pooled_low - pooled_high).max()) > 1e-3


def test_cat_end_to_end_jits_and_differentiates_through_the_channel():
    enc, dec, tokens, enc_params, dec_params = _cat()

    @jax.jit
    def loss(params, key):
        snr = channels.sample_snr_db(key, (4,), -10.0, 25.0)
        x, mask = enc.apply(params["enc"], tokens, snr, num_symbols=jnp.array([18, 12, 6, 3]))
        y = channels.transmit(key, x, snr, kind="awgn", mask=mask)
        _, pooled = dec.apply(params["dec"], y, mask, snr)
        return jnp.mean(pooled**2)

    grads = jax.grad(loss)({"enc": enc_params, "dec": dec_params}, jax.random.key(9))
    chex.assert_tree_all_finite(grads)
    enc_grad_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["enc"]))
    assert enc_grad_norm > 0  # Gradients reach the encoder through the noisy channel.


def test_budgets_to_symbols():
    assert codecs.budgets_to_symbols((1.0, 0.5, 0.01), 18) == (18, 9, 1)
    with pytest.raises(ValueError, match="fractions"):
        codecs.budgets_to_symbols((1.5,), 18)
