"""The paper-B student encoder: a TinyViT-style hierarchical vision transformer.

Paper B (SPEC §3.1) describes its ~11.0M-parameter student as a patch embedding of two
3×3 stride-2 convolutions followed by a four-stage ViT encoder, "TinyViT-like".  This is
TinyViT (Wu et al., 2022; microsoft/Cream): stage 1 of MBConv blocks, stages 2–4 of
windowed attention blocks with learned relative-position biases and a depthwise 3×3
"local conv" between attention and MLP, patch merging between stages.  Images are NHWC.
Its depthwise convolutions (MBConv, patch merging, local conv) use
:class:`~rkdsc_jax.models.layers.DepthwiseConv`.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax.models.layers import DepthwiseConv


class ConvNorm(nn.Module):
    """Conv (no bias) + BatchNorm.

    A depthwise conv (``groups == features ==`` input channels) runs as
    :class:`~rkdsc_jax.models.layers.DepthwiseConv` (same ``conv/kernel`` (k, k, 1, C) as
    ``nn.Conv(..., feature_group_count=C)``, much faster on XLA CPU).
    """

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bn_scale_init: float = 1.0
    depthwise_impl: str = "auto"  # DepthwiseConv's impl: 'auto' | 'taps' | 'lax'

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = self.kernel // 2
        if self.groups > 1 and self.groups == self.features == x.shape[-1]:
            x = DepthwiseConv(self.kernel, strides=self.stride, padding=((pad, pad), (pad, pad)), use_bias=False,
                              impl=self.depthwise_impl, name="conv")(x)
        else:
            x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                        padding=((pad, pad), (pad, pad)), feature_group_count=self.groups,
                        use_bias=False, name="conv")(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            scale_init=nn.initializers.constant(self.bn_scale_init), name="bn")(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, depthwise 3×3, 1×1 project (zero-init BN), GELU."""

    expand_ratio: float = 4.0
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        dim = x.shape[-1]
        hidden = int(dim * self.expand_ratio)
        h = nn.gelu(ConvNorm(hidden, name="expand")(x, train=train), approximate=False)
        h = ConvNorm(hidden, 3, groups=hidden, depthwise_impl=self.depthwise_impl, name="depthwise")(h, train=train)
        h = nn.gelu(h, approximate=False)
        h = ConvNorm(dim, bn_scale_init=0.0, name="project")(h, train=train)
        return nn.gelu(x + h, approximate=False)


class PatchMerging(nn.Module):
    """Halves the resolution: 1×1 conv, depthwise 3×3 stride 2, 1×1 conv."""

    features: int
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.gelu(ConvNorm(self.features, name="conv1")(x, train=train), approximate=False)
        x = nn.gelu(ConvNorm(self.features, 3, 2, groups=self.features, depthwise_impl=self.depthwise_impl,
                             name="conv2")(x, train=train),
                    approximate=False)
        return ConvNorm(self.features, name="conv3")(x, train=train)


def _relative_offset_index(window: int) -> tuple[np.ndarray, int]:
    """(N, N) index into a table of |Δrow|, |Δcol| offsets for a window of N = w² tokens."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    index = np.zeros((len(points), len(points)), np.int32)
    for i, (r1, c1) in enumerate(points):
        for j, (r2, c2) in enumerate(points):
            index[i, j] = offsets.setdefault((abs(r1 - r2), abs(c1 - c2)), len(offsets))
    return index, len(offsets)


class WindowAttention(nn.Module):
    """Multi-head attention within one window, with a learned bias per head and offset."""

    num_heads: int
    window: int

    @nn.compact
    def __call__(self, x):
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        index, num_offsets = _relative_offset_index(self.window)
        biases = self.param("attention_biases", nn.initializers.zeros, (self.num_heads, num_offsets))
        x = nn.LayerNorm(name="norm")(x)
        qkv = nn.Dense(3 * dim, name="qkv")(x).reshape(batch, tokens, self.num_heads, 3 * head_dim)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k) + biases[:, index]
        out = jnp.einsum("bhqk,bkhd->bqhd", nn.softmax(logits, axis=-1), v)
        return nn.Dense(dim, name="proj")(out.reshape(batch, tokens, dim))


class TinyViTBlock(nn.Module):
    """Windowed attention → depthwise 3×3 local conv → MLP, on a (B, H, W, C) map."""

    num_heads: int
    window: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    depthwise_impl: str = "auto"

    def _drop_path(self, x, train: bool):
        if not train or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * mask / keep

    @nn.compact
    def __call__(self, x, *, train: bool):
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = (-h) % ws, (-w) % ws
        windows = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
        windows = windows.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        attended = WindowAttention(self.num_heads, ws, name="attn")(windows)
        attended = attended.reshape(b, nh, nw, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        attended = attended.reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        x = x + self._drop_path(attended, train)
        x = ConvNorm(c, 3, groups=c, depthwise_impl=self.depthwise_impl, name="local_conv")(x, train=train)
        y = nn.LayerNorm(name="mlp_norm")(x)
        y = nn.Dense(int(c * self.mlp_ratio), name="fc1")(y)
        y = nn.Dense(c, name="fc2")(nn.gelu(y, approximate=False))
        return x + self._drop_path(y, train)


class TinyViTEncoder(nn.Module):
    """Patch embedding (two 3×3 stride-2 ConvNorms) + a conv stage + attention stages.

    Returns the last stage's feature map (B, H/32, W/32, dims[-1]) for 4 stages at the
    default strides.  ``dims``/``depths``/``num_heads``/``windows`` give one entry per
    stage; stage 0 is MBConv, the rest attention, each later stage starting with patch
    merging.  Defaults are TinyViT-11M.
    """

    dims: Sequence[int] = (64, 128, 256, 448)
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (2, 4, 8, 14)
    windows: Sequence[int] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    drop_path_rate: float = 0.0
    depthwise_impl: str = "auto"  # see rkdsc_jax.models.layers; the variables do not depend on it

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = ConvNorm(self.dims[0] // 2, 3, 2, name="patch_conv1")(x, train=train)
        x = ConvNorm(self.dims[0], 3, 2, name="patch_conv2")(nn.gelu(x, approximate=False), train=train)
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        block = 0
        for stage, (dim, depth) in enumerate(zip(self.dims, self.depths)):
            if stage == 0:
                for i in range(depth):
                    x = MBConv(self.mbconv_expand_ratio, self.depthwise_impl, name=f"stage0_block{i}")(x, train=train)
            else:
                x = PatchMerging(dim, self.depthwise_impl, name=f"stage{stage}_merge")(x, train=train)
                for i in range(depth):
                    x = TinyViTBlock(self.num_heads[stage], self.windows[stage], self.mlp_ratio, rates[block + i],
                                     self.depthwise_impl, name=f"stage{stage}_block{i}")(x, train=train)
            block += depth
        return x


class TinyViTHead(nn.Module):
    """TinyViT's classifier: global average pool → LayerNorm → Dense(C)."""

    num_classes: int

    @nn.compact
    def __call__(self, features):
        if features.ndim > 2:
            features = jnp.mean(features, axis=tuple(range(1, features.ndim - 1)))
        return nn.Dense(self.num_classes, name="fc")(nn.LayerNorm(name="norm")(features))


class DenseDecoder(nn.Module):
    """Paper B's receiver head: global average pool → Dense(hidden) → ReLU → Dense(C)."""

    num_classes: int
    hidden: int = 512

    @nn.compact
    def __call__(self, features):
        if features.ndim > 2:
            features = jnp.mean(features, axis=tuple(range(1, features.ndim - 1)))
        return nn.Dense(self.num_classes, name="out")(nn.relu(nn.Dense(self.hidden, name="hidden")(features)))


class TinyViTClassifier(nn.Module):
    """The paper-B student as a plain classifier: ``TinyViTEncoder`` + a head.

    ``decoder_hidden`` None uses TinyViT's own head (pool → LayerNorm → Dense(C)); an int
    uses paper B's receiver, pool → Dense(hidden) → ReLU → Dense(C).  With the default
    encoder and 1000 classes, TinyViT's head gives exactly the 10,996,972 parameters
    paper B reports for its student (Table I), while the Dense(512) receiver gives
    11,289,964 (+2.7 %): the reported count is TinyViT-11M's own.
    """

    num_classes: int
    encoder: TinyViTEncoder | None = None  # None: TinyViT-11M.
    decoder_hidden: int | None = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        encoder = self.encoder if self.encoder is not None else TinyViTEncoder(name="encoder")
        features = encoder(x, train=train)
        if self.decoder_hidden is None:
            return TinyViTHead(self.num_classes, name="head")(features)
        return DenseDecoder(self.num_classes, self.decoder_hidden, name="head")(features)


# Small variant for 28–32 px inputs: /4 patch embedding then two merges (7 → 4 → 2 at 28 px).
TINYVIT_SMALL_INPUT = dict(dims=(32, 64, 128), depths=(1, 2, 2), num_heads=(1, 2, 4), windows=(7, 4, 2))
