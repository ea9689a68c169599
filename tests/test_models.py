"""Model shapes, parameter counts (hand-computed) and layer equivalences."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax import models, train


def test_small_cnn_parameter_count_matches_hand_count():
    model = models.get_classifier("small_cnn", 10, features=(32, 64), convs_per_stage=1, hidden=128)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
    conv = 3 * 3 * 1 * 32 + 3 * 3 * 32 * 64  # No conv biases: BatchNorm follows.
    batch_norm_scale_bias = 2 * (32 + 64)
    dense = (7 * 7 * 64) * 128 + 128 + 128 * 10 + 10
    assert train.param_count(variables["params"]) == conv + batch_norm_scale_bias + dense == 421_738
    assert train.param_count(variables["batch_stats"]) == 2 * (32 + 64)


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 32, 32, 3)])
def test_small_cnn_shapes_jit_and_grad(shape):
    model = models.SmallCNN(num_classes=7, features=(8, 16))
    x = jax.random.normal(jax.random.key(0), shape)
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    chex.assert_shape(logits, (shape[0], 7))

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return jnp.sum(out**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    chex.assert_tree_all_finite(grads)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_reshape_max_pool_equals_flax_max_pool(hw):
    x = jax.random.normal(jax.random.key(0), (2, *hw, 3))
    np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    # Same gradient too (no ties in continuous random data).
    g1 = jax.grad(lambda x: jnp.sum(jnp.sin(models.max_pool_2x2(x))))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2)))))(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="available"):
        models.get_classifier("resnet9000", 10)
