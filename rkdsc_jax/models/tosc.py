"""Task-oriented semantic communication (TOSC) systems: transmitter, channel slot, receiver.

Paper B's system (SPEC §1, §3.1, §3.3):

    image ─► normalise ─► encoder ─► X0 ─► channel adaptive module (SNR) ─► global pool
          ─► stochastic head N(μ, σ²) ─► x ∈ R^{2k} ─► [channel] ─► x' ─► Dense(512) ─► ReLU ─► Dense(C)

Choices (config fields of :class:`TOSC`):
- The channel adaptive module (CAM) weights the encoder's feature map, as in SPEC §3.3,
  before the map is pooled.
- The transmitted vector comes from the *pooled* features through the Gaussian head of
  SPEC §3.4 (μ, and σ for the information bottleneck); without sampling the head
  sends μ, so every method shares one architecture and ``loss`` alone tells L-TOSC-KD
  (IB), L-TOSC (labels) and the KD ablations apart.
- ``num_symbols`` k complex channel uses per image; bandwidth ratio k / (H·W·C).
- The module takes images in [0, 1]; the per-channel normalisation of the student is part
  of the transmitter (``input_mean``/``input_std``), so deployment needs no extra
  preprocessing.

The channel itself is not a module: ``__call__`` takes ``channel_fn(x) -> x'`` (e.g. a
partial of :func:`rkdsc_jax.channels.transmit`), so train and evaluation steps own the
channel's randomness and SNR explicitly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rkdsc_jax.models.cnn import CNNEncoder
from rkdsc_jax.models.codecs import ChannelAdaptiveModule, GaussianEncoderHead
from rkdsc_jax.models.resnet import ResNetEncoder
from rkdsc_jax.models.tinyvit import DenseDecoder, TinyViTEncoder


def _pool(features: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(features, axis=tuple(range(1, features.ndim - 1))) if features.ndim > 2 else features


class TOSC(nn.Module):
    """Transmitter (encoder + CAM + stochastic head) and receiver (Dense decoder).

    ``encode(images, snr_db, train, sample)`` → (x, μ, σ); ``decode(received)`` → logits;
    ``__call__(images, snr_db, channel_fn, train, sample)`` → (logits, (x, μ, σ)).
    Sampling uses the ``'sample'`` RNG stream; dropout/drop-path the ``'dropout'`` stream.
    """

    encoder: nn.Module
    num_classes: int
    num_symbols: int
    channel_adaptive: bool = True
    cam_hidden: int | None = None
    decoder_hidden: int = 512
    input_mean: Sequence[float] = (0.0,)
    input_std: Sequence[float] = (1.0,)

    def setup(self):
        if self.num_symbols < 1:
            raise ValueError(f"num_symbols must be >= 1, got {self.num_symbols}.")
        self.cam = ChannelAdaptiveModule(self.cam_hidden) if self.channel_adaptive else None
        self.head = GaussianEncoderHead(2 * self.num_symbols)
        self.decoder = DenseDecoder(self.num_classes, self.decoder_hidden)

    def encode(self, images, snr_db, *, train: bool = False, sample: bool = False):
        x = (images - jnp.asarray(self.input_mean, images.dtype)) / jnp.asarray(self.input_std, images.dtype)
        features = self.encoder(x, train=train)
        if self.cam is not None:
            features = self.cam(features, snr_db)
        return self.head(_pool(features), deterministic=not sample)

    def decode(self, received):
        return self.decoder(received)

    def __call__(self, images, snr_db, channel_fn: Callable[[jnp.ndarray], jnp.ndarray], *,
                 train: bool = False, sample: bool = False):
        x, mu, sigma = self.encode(images, snr_db, train=train, sample=sample)
        return self.decode(channel_fn(x)), (x, mu, sigma)


def _efficientnet_encoder(**kwargs: Any) -> nn.Module:
    from rkdsc_jax.models import efficientnet

    return efficientnet.feature_encoder(**kwargs)


def _genotype_encoder(genotype, channels: int = 16, layers: int = 5, **kwargs) -> nn.Module:
    """A KDL-DARTS cell network without its head; ``genotype``: a Genotype, its dict, or a JSON path."""
    from rkdsc_jax.nas import genotypes, network  # The NAS package builds on these models.

    if isinstance(genotype, str):
        genotype = genotypes.load(genotype)
    elif not isinstance(genotype, genotypes.Genotype):
        genotype = genotypes.Genotype.from_dict(genotype)
    return network.GenotypeNetwork(genotype, num_classes=1, channels=channels, layers=layers, include_head=False,
                                   **kwargs)


# Encoders whose output is a feature map (B, H', W', C) (or tokens), by config name.
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "tinyvit": TinyViTEncoder,
    "resnet": ResNetEncoder,
    "efficientnet": _efficientnet_encoder,
    "cnn": CNNEncoder,
    "genotype": _genotype_encoder,
}


def make_encoder(name: str, **kwargs: Any) -> nn.Module:
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; available: {sorted(ENCODERS)}.")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return ENCODERS[name](**kwargs)
