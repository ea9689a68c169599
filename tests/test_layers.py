"""The CPU-fast depthwise convolution against flax's grouped nn.Conv (the reference)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax.models.layers import DepthwiseConv, depthwise_conv

CASES = [
    # (size, kernel, strides, dilation, padding)
    (9, 3, 1, 1, "SAME"),
    (16, 5, 2, 1, "SAME"),
    (15, 5, 2, 1, "SAME"),
    (12, 3, 1, 2, "SAME"),
    (12, 5, 2, 2, ((4, 4), (4, 4))),
    (10, 3, 2, 1, "VALID"),
    (11, 3, (1, 2), 1, ((1, 2), (0, 1))),
]


@pytest.mark.parametrize("impl", ["taps", "lax"])
@pytest.mark.parametrize("size,kernel,strides,dilation,padding", CASES)
def test_matches_grouped_conv_forward_and_gradient(impl, size, kernel, strides, dilation, padding):
    channels = 6
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, channels))
    reference = nn.Conv(channels, (kernel, kernel), strides=strides, padding=padding,
                        kernel_dilation=dilation, feature_group_count=channels, use_bias=True)
    ours = DepthwiseConv(kernel, strides=strides, padding=padding, kernel_dilation=dilation,
                         use_bias=True, impl=impl)
    variables = reference.init(jax.random.PRNGKey(1), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # A non-zero bias.
    chex.assert_trees_all_equal_shapes(variables, ours.init(jax.random.PRNGKey(1), x))
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), atol=1e-5)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    grads = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    expected = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    chex.assert_trees_all_close(grads, expected, atol=1e-4)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="kernel"):
        depthwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 4)))
    with pytest.raises(ValueError, match="impl"):
        depthwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 3)), impl="fast")
