"""Layers shared by several networks.

``DepthwiseConv``: XLA's CPU backend runs grouped (depthwise) convolutions one channel
group at a time; measured here at batch 64 it is 20–100× slower forward and 10–70×
slower in the gradient than the same convolution written as a sum of k² shifted,
per-channel-scaled slices of the padded input ("taps").  ``impl="auto"`` uses the taps on
CPU and the grouped ``lax`` convolution elsewhere (cuDNN and TPU handle it natively).
Both give the same numbers and share one parameter layout, ``nn.Conv``'s
(kh, kw, 1, C), so checkpoints move between backends.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = str | Sequence[tuple[int, int]]
DEPTHWISE_IMPLS = ("auto", "taps", "lax")


def _explicit_padding(padding: Padding, size: tuple[int, int], kernel: tuple[int, int],
                      strides: tuple[int, int], dilation: tuple[int, int]) -> list[tuple[int, int]]:
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    if padding == "VALID":
        return [(0, 0), (0, 0)]
    if padding != "SAME":
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}.")
    pads = []
    for n, k, s, d in zip(size, kernel, strides, dilation):
        effective = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + effective - n, 0)
        pads.append((total // 2, total - total // 2))  # TF 'SAME': the smaller half before.
    return pads


def depthwise_conv(x: jax.Array, kernel: jax.Array, *, strides: int | tuple[int, int] = 1,
                   padding: Padding = "SAME", dilation: int | tuple[int, int] = 1,
                   impl: str = "auto") -> jax.Array:
    """Depthwise 2-D convolution of NHWC ``x`` with a (kh, kw, 1, C) kernel."""
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"Unknown depthwise impl {impl!r}; use one of {DEPTHWISE_IMPLS}.")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(f"depthwise_conv needs x (B, H, W, C) and kernel (kh, kw, 1, C); got {x.shape} "
                         f"and {kernel.shape}.")
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    kh, kw = kernel.shape[:2]
    pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides, dilation)
    if impl == "auto":
        impl = "taps" if jax.default_backend() == "cpu" else "lax"
    if impl == "lax":
        return jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), strides, pads, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h = (padded.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (padded.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            window = jax.lax.slice(
                padded, (0, top, left, 0),
                (padded.shape[0], top + (out_h - 1) * strides[0] + 1, left + (out_w - 1) * strides[1] + 1,
                 padded.shape[3]),
                (1, strides[0], strides[1], 1))
            term = window * kernel[i, j, 0].astype(x.dtype)
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """``nn.Conv(C, kernel, feature_group_count=C)`` with a CPU-fast implementation.

    Parameters: ``kernel`` (kh, kw, 1, C) with ``nn.Conv``'s default initialiser, and
    ``bias`` (C,) when ``use_bias``.
    """

    kernel_size: tuple[int, int] | int
    strides: tuple[int, int] | int = 1
    padding: Padding = "SAME"
    kernel_dilation: tuple[int, int] | int = 1
    use_bias: bool = False
    impl: str = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else self.kernel_size
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), jnp.float32)
        y = depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                           dilation=self.kernel_dilation, impl=self.impl)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32).astype(y.dtype)
        return y
