"""ResNet backbones for the Res-TOSC baseline of paper B (SPEC §3.1).

Paper B reports Res-TOSC at 25,636,712 parameters: that is Keras' ResNet50 with its
ImageNet head, counted the Keras way (convolutions *with* biases, and BatchNorm moving
statistics included).  ``conv_bias=True`` builds that variant; the default, bias-free
convolutions, is the torchvision ResNet-50 (25,557,032 trainable parameters).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class Bottleneck(nn.Module):
    features: int
    stride: int = 1
    conv_bias: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(_batch_norm, train)
        out = 4 * self.features
        h = nn.relu(norm("bn1")(nn.Conv(self.features, (1, 1), use_bias=self.conv_bias, name="conv1")(x)))
        h = nn.Conv(self.features, (3, 3), self.stride, padding=((1, 1), (1, 1)), use_bias=self.conv_bias,
                    name="conv2")(h)
        h = nn.relu(norm("bn2")(h))
        h = norm("bn3")(nn.Conv(out, (1, 1), use_bias=self.conv_bias, name="conv3")(h))
        if x.shape[-1] != out or self.stride != 1:
            x = norm("bn_proj")(nn.Conv(out, (1, 1), self.stride, use_bias=self.conv_bias, name="proj")(x))
        return nn.relu(x + h)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    conv_bias: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(_batch_norm, train)
        h = nn.Conv(self.features, (3, 3), self.stride, padding=((1, 1), (1, 1)), use_bias=self.conv_bias,
                    name="conv1")(x)
        h = nn.relu(norm("bn1")(h))
        h = norm("bn2")(nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.conv_bias,
                                name="conv2")(h))
        if x.shape[-1] != self.features or self.stride != 1:
            x = norm("bn_proj")(nn.Conv(self.features, (1, 1), self.stride, use_bias=self.conv_bias, name="proj")(x))
        return nn.relu(x + h)


class ResNetEncoder(nn.Module):
    """ResNet feature extractor → (B, H/32, W/32, C) (or /8 with the small-input stem).

    ``small_input`` replaces the 7×7/2 stem and max pool by one 3×3/1 convolution, the
    usual CIFAR adaptation, so 28–32 px images keep enough resolution.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    bottleneck: bool = True
    conv_bias: bool = False
    small_input: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.small_input:
            x = nn.Conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=self.conv_bias, name="stem")(x)
        else:
            x = nn.Conv(self.widths[0], (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=self.conv_bias, name="stem")(x)
        x = nn.relu(_batch_norm(train, "stem_bn")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if self.bottleneck else BasicBlock
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for i in range(size):
                stride = 2 if i == 0 and stage > 0 else 1
                x = block(width, stride, self.conv_bias, name=f"stage{stage}_block{i}")(x, train=train)
        return x


class ResNetClassifier(nn.Module):
    """ResNet encoder + global average pool + Dense(C) (the ImageNet head)."""

    num_classes: int
    encoder: ResNetEncoder | None = None  # None: ResNet-50.

    @nn.compact
    def __call__(self, x, *, train: bool):
        encoder = self.encoder if self.encoder is not None else ResNetEncoder(name="encoder")
        features = encoder(x, train=train)
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(features, axis=(1, 2)))


# Small variant for 28–32 px inputs (ResNet-18 layout at half width, CIFAR stem).
RESNET_SMALL_INPUT = dict(stage_sizes=(2, 2, 2, 2), widths=(32, 64, 128, 256), bottleneck=False, small_input=True)
