"""Paper A's RKD-SC system: distilled student encoder + CAT codec + receiver classifier.

    image ─► normalise ─► student encoder ─► feature map (B, h, w, C) ─► tokens (B, N, C)
      stage 1:  ─► pool ─► projection ─► ẑ ≈ teacher features (B, D_t) ─► classifier ─► logits
      stage 2:  ─► CAT encoder (SNR, channel type, symbol budget) ─► x (B, 2K), mask
                ─► [channel] ─► CAT decoder ─► ẑ ≈ teacher features ─► classifier ─► logits

The classifier lives at the receiver and reads features in the *teacher's* space, so one
head serves both stages (stage 2 starts from stage 1's) and may start from the teacher's
own head.  The channel is not a module: ``__call__`` takes ``channel_fn(x, mask) -> x'``
so steps own the randomness (see :mod:`rkdsc_jax.distill.rkd_steps`).  Parameters:
``encoder``, ``projection`` (stage 1 only), ``cat_encoder``, ``cat_decoder``,
``classifier``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rkdsc_jax.models.codecs import CATDecoder, CATEncoder


def to_tokens(features: jnp.ndarray) -> jnp.ndarray:
    """(B, h, w, C) → (B, h·w, C); tokens pass through."""
    if features.ndim == 4:
        return features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3:
        raise ValueError(f"Encoder features must be (B, h, w, C) or (B, N, C), got shape {features.shape}.")
    return features


class RKDSystem(nn.Module):
    encoder: nn.Module
    num_classes: int
    teacher_dim: int
    num_tokens: int  # h·w of the encoder's output at the training resolution.
    cat_width: int = 128
    cat_depth: int = 2
    cat_heads: int = 4
    symbols_per_token: int = 4
    input_mean: Sequence[float] = (0.0,)
    input_std: Sequence[float] = (1.0,)

    def setup(self):
        self.projection = nn.Dense(self.teacher_dim)
        self.cat_encoder = CATEncoder(self.cat_width, self.cat_depth, self.cat_heads, self.symbols_per_token)
        self.cat_decoder = CATDecoder(self.num_tokens, self.teacher_dim, self.cat_width, self.cat_depth,
                                      self.cat_heads)
        self.classifier = nn.Dense(self.num_classes)

    @property
    def max_symbols(self) -> int:
        return self.num_tokens * self.symbols_per_token

    def tokens(self, images, *, train: bool = False):
        x = (images - jnp.asarray(self.input_mean, images.dtype)) / jnp.asarray(self.input_std, images.dtype)
        tokens = to_tokens(self.encoder(x, train=train))
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"The encoder gives {tokens.shape[1]} tokens at this input size but the system was "
                             f"built for num_tokens={self.num_tokens}; rebuild it for this resolution.")
        return tokens

    def stage1(self, images, *, train: bool = False):
        """(logits, projected features) without a channel."""
        projected = self.projection(jnp.mean(self.tokens(images, train=train), axis=1))
        return self.classifier(projected), projected

    def transmit(self, images, snr_db, channel_type=0, num_symbols=None, *, train: bool = False):
        """(x (B, 2K) channel symbols, mask (B, K))."""
        return self.cat_encoder(self.tokens(images, train=train), snr_db, channel_type, num_symbols, train=train)

    def receive(self, received, mask, snr_db, channel_type=0, *, train: bool = False):
        """(logits, decoded features in the teacher's space)."""
        _, pooled = self.cat_decoder(received, mask, snr_db, channel_type, train=train)
        return self.classifier(pooled), pooled

    def __call__(self, images, snr_db, channel_fn: Callable, channel_type=0, num_symbols=None, *,
                 train: bool = False):
        x, mask = self.transmit(images, snr_db, channel_type, num_symbols, train=train)
        logits, decoded = self.receive(channel_fn(x, mask), mask, snr_db, channel_type, train=train)
        return logits, decoded, (x, mask)

    def init_all(self, images):
        """Touches every submodule (for ``init``): stage 1 and stage 2 paths."""
        self.stage1(images)
        return self(images, 0.0, lambda x, mask: x)
