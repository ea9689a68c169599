"""A small CNN classifier: the supervised baseline and the training core's test model."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2×2 stride-2 max pooling as a reshape + max (odd edges are cropped).

    Same values as ``nn.max_pool(x, (2, 2), (2, 2))``, but its gradient is a plain
    elementwise select instead of XLA's select-and-scatter, which is ~5× slower on CPU.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNNEncoder(nn.Module):
    """SmallCNN's convolutional trunk: the feature map (B, h, w, C) of a plain CNN transmitter."""

    features: Sequence[int] = (32, 64)
    convs_per_stage: int = 2

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for width in self.features:
            for _ in range(self.convs_per_stage):
                x = nn.Conv(width, (3, 3), use_bias=False)(x)
                x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            x = max_pool_2x2(x)
        return x


class SmallCNN(nn.Module):
    """Conv–BN–ReLU blocks with 2×2 max pooling after each stage, then an MLP head.

    ``features`` gives the width of each stage; each stage has ``convs_per_stage`` 3×3
    convolutions.  Sized for 28–32 px inputs.
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    convs_per_stage: int = 2
    hidden: int = 128
    dropout: float = 0.25
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.astype(self.dtype)
        for width in self.features:
            for _ in range(self.convs_per_stage):
                x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=jnp.float32)(x)
