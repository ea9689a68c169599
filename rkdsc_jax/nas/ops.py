"""The eight DARTS candidate operations (SPEC §4.1), as pure linen modules.

Each op mirrors DARTS's ``operations.py`` (Liu et al., 2019) in NHWC layout, with PyTorch's
symmetric padding so output sizes and parameter counts are DARTS's:

============  ===========================================================  ==================
op            layers                                                        params at width C
============  ===========================================================  ==================
none          zeros (strided)                                               0
max_pool_3x3  3×3 max pool, padding 1                                       0
avg_pool_3x3  3×3 average pool, padding 1, padding not counted              0
skip_connect  identity (stride 1) / FactorizedReduce (stride 2)             0 / C² + 2C·a
sep_conv_3x3  2 × (ReLU, 3×3 depthwise, 1×1 conv, BN)                       2(9C + C²) + 4C·a
sep_conv_5x5  2 × (ReLU, 5×5 depthwise, 1×1 conv, BN)                       2(25C + C²) + 4C·a
dil_conv_3x3  ReLU, 3×3 depthwise dilation 2, 1×1 conv, BN                  9C + C² + 2C·a
dil_conv_5x5  ReLU, 5×5 depthwise dilation 2, 1×1 conv, BN                  25C + C² + 2C·a
============  ===========================================================  ==================

(a = 1 when BatchNorm is affine, as in the derived network; a = 0 in the search supernet,
where DARTS uses ``affine=False``.)  In the supernet the pools are followed by a
non-affine BN (``MixedOp``); in a derived network they are not (DARTS's ``model.py``).

CPU speed (``impl="auto"``): XLA's CPU backend is slow at grouped convolutions and at
convolution gradients, so on CPU every depthwise conv runs as k² shifted slices
(``DepthwiseConv`` taps), every 1×1 conv as a matrix product, every dense k×k conv as
im2col + matrix product, and the 3×3 pools as max / sum of 9 shifted slices (whose
gradient is an elementwise select instead of select-and-scatter).  On GPU/TPU ``auto``
keeps the native ``lax`` convolutions and ``reduce_window`` pools.  Both paths share one
parameter layout (``nn.Conv``'s HWIO kernels) and give the same numbers.

BatchNorm: flax momentum 0.9 = PyTorch momentum 0.1, ε = 1e-5.  (PyTorch keeps the
unbiased batch variance in its running average, flax the biased one; the difference is a
factor n/(n−1) on the running variance only.)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax.models.layers import DepthwiseConv

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
IMPLS = ("auto", "taps", "lax")
_CONV_SPECS = {  # name -> (kernel, dilation, padding, separable)
    "sep_conv_3x3": (3, 1, 1, True),
    "sep_conv_5x5": (5, 1, 2, True),
    "dil_conv_3x3": (3, 2, 2, False),
    "dil_conv_5x5": (5, 2, 4, False),
}


def resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"Unknown op implementation {impl!r}; use one of {IMPLS}.")
    if impl == "auto":
        return "taps" if jax.default_backend() == "cpu" else "lax"
    return impl


def check_primitive(name: str) -> None:
    if name not in PRIMITIVES:
        raise ValueError(f"Unknown DARTS op {name!r}; the op names are {list(PRIMITIVES)}.")


def batch_norm(train: bool, affine: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_bias=affine, use_scale=affine, name=name)


# --- Convolutions ------------------------------------------------------------------------


class PointwiseConv(nn.Module):
    """1×1 convolution without bias, optionally strided, as a matrix product.

    Parameter ``kernel`` (1, 1, C_in, C_out), ``nn.Conv``'s layout and initialiser.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features),
                            jnp.float32)
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides]
        return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0].astype(x.dtype))


def _patches(x, kernel: int, strides: int, padding: int, dilation: int = 1):
    """(B, H', W', k·k·C) im2col patches, ordered (kh, kw, C) like an HWIO kernel."""
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h = (padded.shape[1] - (kernel - 1) * dilation - 1) // strides + 1
    out_w = (padded.shape[2] - (kernel - 1) * dilation - 1) // strides + 1
    taps = []
    for i in range(kernel):
        for j in range(kernel):
            taps.append(jax.lax.slice(
                padded, (0, i * dilation, j * dilation, 0),
                (padded.shape[0], i * dilation + (out_h - 1) * strides + 1,
                 j * dilation + (out_w - 1) * strides + 1, padded.shape[3]),
                (1, strides, strides, 1)))
    return jnp.concatenate(taps, axis=-1)


class Conv(nn.Module):
    """Dense k×k convolution without bias, PyTorch-style symmetric ``padding``.

    ``impl`` "taps" (CPU default) runs im2col + one matrix product (XLA CPU's convolution
    weight gradient is several times slower); "lax" the native convolution.  Parameter
    ``kernel`` (k, k, C_in, C_out) as ``nn.Conv``.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features),
                            jnp.float32).astype(x.dtype)
        if resolve_impl(self.impl) == "lax":
            p = self.padding
            return jax.lax.conv_general_dilated(x, kernel, (self.strides,) * 2, ((p, p), (p, p)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        patches = _patches(x, k, self.strides, self.padding)
        return jnp.einsum("bhwk,kd->bhwd", patches, kernel.reshape(-1, self.features))


# --- Pools -------------------------------------------------------------------------------


POOL_OFFSETS = tuple((i - 1, j - 1) for i in range(3) for j in range(3))


def take_windows(x, offsets, strides: int, fill=0.0) -> list:
    """The windows x[s·i + dy, s·j + dx] of x (B, H, W, C) at each tap offset (dy, dx), ``fill``
    outside x: a list of (B, H', W', C), H' = ceil(H / s).  ``scatter_windows`` is its transpose."""
    radius = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), constant_values=fill)
    out_h, out_w = (x.shape[1] - 1) // strides + 1, (x.shape[2] - 1) // strides + 1
    return [jax.lax.slice(padded, (0, radius + dy, radius + dx, 0),
                          (padded.shape[0], radius + dy + (out_h - 1) * strides + 1,
                           radius + dx + (out_w - 1) * strides + 1, padded.shape[3]),
                          (1, strides, strides, 1))
            for dy, dx in offsets]


@functools.lru_cache(maxsize=64)
def _avg_pool_counts(height: int, width: int, strides: int) -> np.ndarray:
    """How many real (unpadded) pixels each 3×3 window covers: count_include_pad=False."""
    ones = np.pad(np.ones((height, width), np.float32), 1)
    out_h, out_w = (height + 2 - 3) // strides + 1, (width + 2 - 3) // strides + 1
    counts = np.zeros((out_h, out_w), np.float32)
    for i in range(3):
        for j in range(3):
            counts += ones[i: i + (out_h - 1) * strides + 1: strides, j: j + (out_w - 1) * strides + 1: strides]
    return counts[None, :, :, None]


def max_pool_3x3(x, strides: int, impl: str = "auto"):
    if resolve_impl(impl) == "lax":
        return nn.max_pool(x, (3, 3), (strides, strides), ((1, 1), (1, 1)))
    return _max_pool_taps(x, strides)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_taps(x, strides: int):
    return functools.reduce(jnp.maximum, take_windows(x, POOL_OFFSETS, strides, -jnp.inf))


def _max_pool_taps_fwd(x, strides):
    return _max_pool_taps(x, strides), x


def _max_pool_taps_bwd(strides, x, g):
    """The whole gradient to the first maximum of each window, as PyTorch and XLA's
    reduce_window do.  jnp.maximum's own rule splits it between tied maxima, which is
    wrong where the tied pixels are not the same function of the weights, and ties are
    common (ReLU-zeroed regions, flat backgrounds)."""
    windows = jnp.stack(take_windows(x, POOL_OFFSETS, strides, -jnp.inf))  # (9, B, H', W', C)
    first = jax.nn.one_hot(jnp.argmax(windows, axis=0), 9, axis=0, dtype=g.dtype)
    return (scatter_windows(first * g[None], POOL_OFFSETS, strides, x.shape[1:3]).astype(x.dtype),)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def scatter_windows(d_windows, offsets, strides: int, size):
    """The transpose of taking the windows x[s·i + dy, s·j + dx] (zero outside x) at each tap
    offset (dy, dx): d_windows (T, B, H', W', C) -> (B, H, W, C).  One strided pad of
    all taps and T shifted slices, which XLA fuses into one loop (its own transpose pads
    each tap's slice to full size)."""
    radius = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    cfg = [(0, 0, 0), (0, 0, 0)]
    for length, out in zip(size, d_windows.shape[2:4]):
        cfg.append((radius, radius + length - (out - 1) * strides - 1, strides - 1))
    dilated = jax.lax.pad(d_windows, jnp.zeros((), d_windows.dtype), cfg + [(0, 0, 0)])
    total = None
    for t, (dy, dx) in enumerate(offsets):
        term = jax.lax.slice(dilated[t], (0, radius - dy, radius - dx, 0),
                             (dilated.shape[1], radius - dy + size[0], radius - dx + size[1], dilated.shape[4]))
        total = term if total is None else total + term
    return total


def avg_pool_3x3(x, strides: int, impl: str = "auto"):
    if resolve_impl(impl) == "lax":
        return nn.avg_pool(x, (3, 3), (strides, strides), ((1, 1), (1, 1)), count_include_pad=False)
    total = functools.reduce(jnp.add, take_windows(x, POOL_OFFSETS, strides))
    return total / _avg_pool_counts(x.shape[1], x.shape[2], strides).astype(x.dtype)


# --- Composite ops (DARTS operations.py) -------------------------------------------------


class ReLUConvBN(nn.Module):
    """ReLU → k×k conv (no bias) → BN: the cells' input preprocessing (k = 1)."""

    features: int
    kernel_size: int = 1
    strides: int = 1
    padding: int = 0
    affine: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.relu(x)
        if self.kernel_size == 1 and self.padding == 0:
            x = PointwiseConv(self.features, self.strides, name="conv")(x)
        else:
            x = Conv(self.features, self.kernel_size, self.strides, self.padding, self.impl, name="conv")(x)
        return batch_norm(train, self.affine, name="bn")(x)


class FactorizedReduce(nn.Module):
    """ReLU → two 1×1 stride-2 convs (C_out/2 each) on pixel grids offset by one → concat → BN."""

    features: int
    affine: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.features % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}.")
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(
                f"FactorizedReduce (skip_connect at stride 2) needs even spatial sizes, got "
                f"{x.shape[1]}×{x.shape[2]}; choose an input size that stays even until the last "
                "reduction (e.g. 28 or 32 with two reductions).")
        x = nn.relu(x)
        a = PointwiseConv(self.features // 2, 2, name="conv_1")(x)
        b = PointwiseConv(self.features // 2, 2, name="conv_2")(x[:, 1:, 1:])
        return batch_norm(train, self.affine, name="bn")(jnp.concatenate([a, b], axis=-1))


class SepConv(nn.Module):
    """Separable conv applied twice: (ReLU, depthwise k×k, 1×1, BN) × 2; stride on the first."""

    features: int
    kernel_size: int
    strides: int
    padding: int
    affine: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        impl = resolve_impl(self.impl)
        pad = ((self.padding, self.padding),) * 2
        c_in = x.shape[-1]
        for i, (strides, features) in enumerate(((self.strides, c_in), (1, self.features))):
            x = nn.relu(x)
            x = DepthwiseConv(self.kernel_size, strides, pad, impl=impl, name=f"dw_{i}")(x)
            x = PointwiseConv(features, name=f"pw_{i}")(x)
            x = batch_norm(train, self.affine, name=f"bn_{i}")(x)
        return x


class DilConv(nn.Module):
    """ReLU → depthwise k×k conv with dilation → 1×1 conv → BN."""

    features: int
    kernel_size: int
    strides: int
    padding: int
    dilation: int
    affine: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = ((self.padding, self.padding),) * 2
        x = nn.relu(x)
        x = DepthwiseConv(self.kernel_size, self.strides, pad, self.dilation, impl=resolve_impl(self.impl),
                          name="dw")(x)
        x = PointwiseConv(self.features, name="pw")(x)
        return batch_norm(train, self.affine, name="bn")(x)


class Operation(nn.Module):
    """One DARTS op by name at ``channels`` wide (input = output width) and ``strides``.

    ``pool_bn`` adds the supernet's non-affine BN after the pools.
    """

    op: str
    channels: int
    strides: int = 1
    affine: bool = True
    pool_bn: bool = False
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        name = self.op
        check_primitive(name)
        if x.shape[-1] != self.channels:
            raise ValueError(f"{name} was built for {self.channels} channels but got input {x.shape}.")
        if name == "none":
            return jnp.zeros_like(x[:, :: self.strides, :: self.strides])
        if name in ("max_pool_3x3", "avg_pool_3x3"):
            pool = max_pool_3x3 if name == "max_pool_3x3" else avg_pool_3x3
            x = pool(x, self.strides, self.impl)
            return batch_norm(train, False, name="bn")(x) if self.pool_bn else x
        if name == "skip_connect":
            if self.strides == 1:
                return x
            return FactorizedReduce(self.channels, self.affine, name="reduce")(x, train=train)
        kernel, dilation, padding, separable = _CONV_SPECS[name]
        if separable:
            return SepConv(self.channels, kernel, self.strides, padding, self.affine, self.impl,
                           name="sep")(x, train=train)
        return DilConv(self.channels, kernel, self.strides, padding, dilation, self.affine, self.impl,
                       name="dil")(x, train=train)


def count_params(tree) -> int:
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


@functools.lru_cache(maxsize=256)
def op_param_count(name: str, channels: int, strides: int = 1, affine: bool = True) -> int:
    """Parameters of op ``name`` at ``channels`` wide, counted from the module itself.

    ``affine`` counts BN's scale and bias (2 per channel per BN), as in the derived network.
    Running statistics are not parameters.
    """
    check_primitive(name)
    op = Operation(name, channels, strides, affine)
    size = 8 * strides
    shapes = jax.eval_shape(lambda: op.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, channels)),
                                            train=False))
    return count_params(shapes.get("params", {}))


def hand_param_count(name: str, channels: int, strides: int = 1, affine: bool = True) -> int:
    """The closed-form counts of the module docstring's table (for tests and documentation)."""
    c, a = channels, int(affine)
    table = {
        "none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0,
        "skip_connect": 0 if strides == 1 else c * c + 2 * c * a,
        "sep_conv_3x3": 2 * (9 * c + c * c) + 4 * c * a,
        "sep_conv_5x5": 2 * (25 * c + c * c) + 4 * c * a,
        "dil_conv_3x3": 9 * c + c * c + 2 * c * a,
        "dil_conv_5x5": 25 * c + c * c + 2 * c * a,
    }
    check_primitive(name)
    return table[name]
