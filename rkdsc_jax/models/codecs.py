"""Channel codecs: the channel adaptive module (paper B), the stochastic IB encoder head
(paper B), and the channel-aware transformer (CAT) encoder/decoder (paper A).

Conventions shared with ``rkdsc_jax.channels``: a transmitted sample is a real vector of
length 2K read as K complex symbols (first half real parts, second half imaginary parts);
a symbol mask (B, K) marks the symbols actually sent (1) — masked symbols are zeroed, not
counted in the power normalisation, and received as zeros.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rkdsc_jax import channels

SNR_SCALE_DB = 20.0  # SNR-aware modules see s / 20 (SPEC §1).


def _per_example(value, batch: int, dtype=jnp.float32) -> jnp.ndarray:
    """A scalar or (B,) input as a (B,) array."""
    value = jnp.asarray(value, dtype)
    if value.ndim == 0:
        return jnp.broadcast_to(value, (batch,))
    if value.shape != (batch,):
        raise ValueError(f"Expected a scalar or shape ({batch},), got shape {value.shape}.")
    return value


class ChannelAdaptiveModule(nn.Module):
    """ADJSCC-style channel attention (SPEC §3.3).

    X0 (B, ..., C) → mean over all but batch and channel axes → concat s/20 → Dense(hidden)
    → ReLU → Dense(C) → sigmoid → w (B, C) → X = w ⊙ X0.  Works on feature maps (B, H, W, C)
    and token sequences (B, N, C).  ``hidden`` defaults to C.
    """

    hidden: int | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, snr_db) -> jnp.ndarray:
        if x.ndim < 2:
            raise ValueError(f"ChannelAdaptiveModule needs (B, ..., C) features, got shape {x.shape}.")
        batch, channels_ = x.shape[0], x.shape[-1]
        pooled = jnp.mean(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x
        snr = _per_example(snr_db, batch, pooled.dtype)[:, None] / SNR_SCALE_DB
        h = nn.relu(nn.Dense(self.hidden or channels_, name="hidden")(jnp.concatenate([pooled, snr], -1)))
        weights = nn.sigmoid(nn.Dense(channels_, name="weights")(h))
        return x * weights.reshape(batch, *([1] * (x.ndim - 2)), channels_)


class GaussianEncoderHead(nn.Module):
    """Stochastic encoder p(x | i) = N(μ, diag σ²) for the information bottleneck (SPEC §3.4).

    Returns ``(sample, mu, sigma)``; the sample is μ + σ·ε (reparameterised) drawn from the
    ``'sample'`` RNG stream, or μ itself when ``deterministic``.  σ = softplus(·) + min_std
    keeps the Gaussian log-densities of the rate bound finite.
    """

    features: int
    min_std: float = 1e-3

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, deterministic: bool = False):
        mu = nn.Dense(self.features, name="mu")(x)
        sigma = nn.softplus(nn.Dense(self.features, name="sigma")(x)) + self.min_std
        if deterministic:
            return mu, mu, sigma
        eps = jax.random.normal(self.make_rng("sample"), mu.shape, mu.dtype)
        return mu + sigma * eps, mu, sigma


class ChannelConditioning(nn.Module):
    """Embeds (SNR, channel type, bandwidth fraction) and returns a FiLM (scale, shift).

    The SNR enters as s/20, the channel type as a learned embedding (index into
    ``channels.CHANNEL_KINDS``), the fraction of symbols in use as a scalar.
    """

    width: int
    num_channel_types: int = len(channels.CHANNEL_KINDS)

    @nn.compact
    def __call__(self, snr_db, channel_type, bandwidth_fraction, batch: int):
        snr = _per_example(snr_db, batch)[:, None] / SNR_SCALE_DB
        fraction = _per_example(bandwidth_fraction, batch)[:, None]
        kind = nn.Embed(self.num_channel_types, self.width, name="channel_type")(
            _per_example(channel_type, batch, jnp.int32))
        h = nn.Dense(self.width, name="scalars")(jnp.concatenate([snr, fraction], -1)) + kind
        h = nn.Dense(2 * self.width, name="film")(nn.gelu(h))
        scale, shift = jnp.split(h, 2, axis=-1)
        return scale[:, None, :], shift[:, None, :]


class ConditionedTransformerBlock(nn.Module):
    """Pre-LN transformer block whose normalised inputs are FiLM-modulated by the channel
    state (adaLN-style): the block attends differently at different SNRs."""

    width: int
    num_heads: int
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, film, *, train: bool):
        scale, shift = film
        h = nn.LayerNorm(name="ln_attn")(x) * (1 + scale) + shift
        h = nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout,
                                            deterministic=not train, name="attn")(h, h)
        x = x + h
        h = nn.LayerNorm(name="ln_mlp")(x) * (1 + scale) + shift
        h = nn.Dense(int(self.width * self.mlp_ratio), name="mlp_in")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h))
        return x + nn.Dense(self.width, name="mlp_out")(h)


def symbol_mask(num_active, max_symbols: int, batch: int) -> jnp.ndarray:
    """(B, K) mask with the first ``num_active`` symbols of each example on."""
    active = _per_example(num_active, batch, jnp.int32)
    return (jnp.arange(max_symbols)[None, :] < active[:, None]).astype(jnp.float32)


def _to_channel_layout(per_token: jnp.ndarray) -> jnp.ndarray:
    """(B, N, 2s) token outputs → (B, 2K) with K = N·s: real parts of all symbols, then
    imaginary parts, symbols ordered token-major so a prefix mask drops trailing tokens."""
    batch, n, two_s = per_token.shape
    s = two_s // 2
    real, imag = per_token[..., :s].reshape(batch, n * s), per_token[..., s:].reshape(batch, n * s)
    return jnp.concatenate([real, imag], axis=-1)


def _from_channel_layout(flat: jnp.ndarray, num_tokens: int) -> jnp.ndarray:
    batch, two_k = flat.shape
    k = two_k // 2
    real = flat[:, :k].reshape(batch, num_tokens, -1)
    imag = flat[:, k:].reshape(batch, num_tokens, -1)
    return jnp.concatenate([real, imag], axis=-1)


class CATEncoder(nn.Module):
    """Channel-aware transformer encoder and compressor (SPEC §4.3).

    Tokens (B, N, D) → Dense(width) → ``depth`` channel-conditioned blocks → Dense(2s)
    per token, i.e. s complex symbols per token and K = N·s in all.  One model serves
    every budget: ``num_symbols`` (int or (B,), ≤ K) keeps the first symbols and masks
    the rest.  Returns ``(x, mask)``: x (B, 2K) in the channel layout with masked symbols
    zeroed, and the (B, K) mask to hand to ``channels.transmit``.
    """

    width: int = 128
    depth: int = 2
    num_heads: int = 4
    symbols_per_token: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens, snr_db, channel_type=0, num_symbols=None, *, train: bool = False):
        if tokens.ndim != 3:
            raise ValueError(f"CATEncoder needs tokens (B, N, D), got shape {tokens.shape}; "
                             "reshape feature maps (B, H, W, C) to (B, H·W, C).")
        batch, num_tokens = tokens.shape[:2]
        max_symbols = num_tokens * self.symbols_per_token
        num_symbols = max_symbols if num_symbols is None else num_symbols
        mask = symbol_mask(num_symbols, max_symbols, batch)
        fraction = mask.mean(axis=-1)
        film = ChannelConditioning(self.width, name="conditioning")(snr_db, channel_type, fraction, batch)
        x = nn.Dense(self.width, name="embed")(tokens)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, num_tokens, self.width))
        for i in range(self.depth):
            x = ConditionedTransformerBlock(self.width, self.num_heads, self.mlp_ratio, self.dropout,
                                            name=f"block_{i}")(x, film, train=train)
        x = nn.LayerNorm(name="ln_out")(x)
        x = _to_channel_layout(nn.Dense(2 * self.symbols_per_token, name="to_symbols")(x))
        return x * jnp.concatenate([mask, mask], axis=-1), mask


class CATDecoder(nn.Module):
    """Channel-aware transformer decoder: received symbols → the teacher's feature space.

    Input (B, 2K) in the channel layout (masked symbols are zeros) with the same mask,
    SNR and channel type as the encoder.  Returns ``(tokens, pooled)``: (B, N, out_dim)
    token features and their mean projected to ``out_dim`` (e.g. the teacher embedding).
    """

    num_tokens: int
    out_dim: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, received, mask, snr_db, channel_type=0, *, train: bool = False):
        batch, two_k = received.shape
        if two_k % (2 * self.num_tokens) or mask.shape != (batch, two_k // 2):
            raise ValueError(
                f"CATDecoder got received {received.shape} and mask {mask.shape}; expected "
                f"(B, 2K) and (B, K) with K a multiple of num_tokens={self.num_tokens}.")
        film = ChannelConditioning(self.width, name="conditioning")(
            snr_db, channel_type, mask.mean(axis=-1), batch)
        x = _from_channel_layout(received, self.num_tokens)
        token_mask = _from_channel_layout(jnp.concatenate([mask, mask], -1), self.num_tokens)
        # The mask tells the decoder which zeros were sent and which were never sent.
        x = nn.Dense(self.width, name="embed")(jnp.concatenate([x, token_mask], -1))
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.num_tokens, self.width))
        for i in range(self.depth):
            x = ConditionedTransformerBlock(self.width, self.num_heads, self.mlp_ratio, self.dropout,
                                            name=f"block_{i}")(x, film, train=train)
        x = nn.LayerNorm(name="ln_out")(x)
        tokens = nn.Dense(self.out_dim, name="to_tokens")(x)
        pooled = nn.Dense(self.out_dim, name="to_pooled")(jnp.mean(x, axis=1))
        return tokens, pooled


def budgets_to_symbols(bandwidth_fractions: Sequence[float], max_symbols: int) -> tuple[int, ...]:
    """Symbol counts for the given fractions of the encoder's K (each at least 1)."""
    for f in bandwidth_fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"Bandwidth fractions must be in (0, 1], got {f}.")
    return tuple(max(1, round(f * max_symbols)) for f in bandwidth_fractions)
