"""ResNet baselines: paper B's Res-TOSC parameter count, torchvision's, and a small variant."""

import chex
import jax
import jax.numpy as jnp

from rkdsc_jax.models import resnet
from rkdsc_jax.train import param_count


def _variables(module, shape):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_resnet50_counts_match_torchvision_and_paper_b():
    torchvision_style = _variables(resnet.ResNetClassifier(1000), (1, 224, 224, 3))
    assert param_count(torchvision_style["params"]) == 25_557_032  # torchvision.models.resnet50
    keras_style = _variables(resnet.ResNetClassifier(1000, resnet.ResNetEncoder(conv_bias=True)), (1, 224, 224, 3))
    # Paper B, Table I (Res-TOSC): Keras counts conv biases and BatchNorm moving statistics.
    assert param_count(keras_style["params"]) + param_count(keras_style["batch_stats"]) == 25_636_712


def test_small_resnet_runs_on_28px_and_differentiates():
    model = resnet.ResNetClassifier(10, resnet.ResNetEncoder(**resnet.RESNET_SMALL_INPUT))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    variables = jax.jit(lambda x: model.init(jax.random.key(2), x, train=False))(x)
    chex.assert_shape(model.apply(variables, x, train=False), (2, 10))
    features = jax.eval_shape(lambda: model.encoder.apply({"params": variables["params"]["encoder"],
                                                           "batch_stats": variables["batch_stats"]["encoder"]},
                                                          x, train=False))
    assert features.shape == (2, 4, 4, 256)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2)

    chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(variables["params"]))
