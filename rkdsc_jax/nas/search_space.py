"""The DARTS search space: mixed ops, search cells and the supernet (SPEC §4.1).

Mirrors DARTS's ``model_search.py``: a stem (3×3 conv to ``stem_multiplier·C`` channels +
BN), ``layers`` cells with reduction cells at depth ``layers//3`` and ``2·layers//3``
(channels doubled there, stride 2 on the edges leaving the cell inputs), global average
pooling and a linear classifier.  Every cell has two inputs, ``steps`` = 4 intermediate
nodes, 2 + 3 + 4 + 5 = 14 edges, and outputs the concatenation of its last
``multiplier`` = 4 nodes.  All BN inside cells is non-affine (DARTS search); the stem's BN
is affine, as in DARTS.

Architecture parameters α live in their own variable collection, ``"arch"``:
``{"normal": (14, 8), "reduce": (14, 8)}``, shared by all cells of a type and
initialised 1e-3·N(0, 1).  Apply with ``{"params": w, "arch": α, "batch_stats": s}``.
Edge order: node 0's edges from (s0, s1), node 1's from (s0, s1, n0), … (DARTS order).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rkdsc_jax.models.layers import depthwise_conv
from rkdsc_jax.nas import ops as ops_lib
from rkdsc_jax.nas.ops import PRIMITIVES

ARCH = "arch"
CELL_TYPES = ("normal", "reduce")


def num_edges(steps: int = 4) -> int:
    return sum(2 + i for i in range(steps))


def edge_index(node: int, source: int) -> int:
    """Row of α for the edge from state ``source`` into intermediate node ``node``."""
    return sum(2 + i for i in range(node)) + source


def edge_inputs(steps: int = 4) -> list[tuple[int, int]]:
    """(node, input state) for every edge in DARTS order; states 0, 1 are the cell inputs."""
    return [(i, j) for i in range(steps) for j in range(2 + i)]


@dataclasses.dataclass(frozen=True)
class CellSpec:
    index: int
    reduction: bool
    reduction_prev: bool
    channels: int  # C of this cell's edges.
    channels_prev_prev: int
    channels_prev: int


def cell_plan(layers: int, channels: int, multiplier: int = 4, stem_multiplier: int = 3) -> list[CellSpec]:
    """Per-cell widths and reductions, exactly as DARTS's network constructors compute them."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}.")
    c_pp = c_p = stem_multiplier * channels
    c_curr = channels
    reduction_prev = False
    plan = []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        plan.append(CellSpec(i, reduction, reduction_prev, c_curr, c_pp, c_p))
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c_curr
    return plan


def init_alpha(key: jax.Array, steps: int = 4, num_ops: int = len(PRIMITIVES), scale: float = 1e-3):
    return scale * jax.random.normal(key, (num_edges(steps), num_ops), jnp.float32)


def check_alpha(alpha, steps: int = 4, num_ops: int = len(PRIMITIVES), name: str = "alpha") -> None:
    expected = (num_edges(steps), num_ops)
    if tuple(alpha.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(alpha.shape)} but a cell with {steps} intermediate nodes and "
            f"{num_ops} candidate ops needs {expected} (one row per edge, one column per op in "
            f"{list(PRIMITIVES)[:num_ops]}); re-initialise α with init_alpha or fix its shape.")


def _edge_bn(train: bool, name: str) -> nn.BatchNorm:
    """Non-affine BN with separate statistics per edge and channel of (E, B, H, W, C)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_bias=False,
                        use_scale=False, axis=(0, -1), name=name)


def _taps_sum(padded, taps, out_hw, strides: int, dilation: int, k: int):
    """Σ_(i,j) slice(padded, (i·d, j·d), stride) · taps[:, i, j]: a k×k per-channel correlation.

    padded (..., Hp, Wp, C) with any leading axes; taps (E, k, k, C) broadcast against an
    (E, ...) leading axis (added when ``padded`` is 4-D).
    """
    h_axis = padded.ndim - 3
    lead = padded.shape[:h_axis]
    out_h, out_w = out_hw
    out = None
    for i in range(k):
        for j in range(k):
            top, left = i * dilation, j * dilation
            window = jax.lax.slice(
                padded, (0,) * h_axis + (top, left, 0),
                lead + (top + (out_h - 1) * strides + 1, left + (out_w - 1) * strides + 1, padded.shape[-1]),
                (1,) * h_axis + (strides, strides, 1))
            term = (window[None] if padded.ndim == 4 else window) * taps[:, i, j][:, None, None, None, :]
            out = term if out is None else out + term
    return out


def _out_size(size: int, k: int, strides: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (k - 1) * dilation - 1) // strides + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_taps(x, kernel, strides: int, padding: int, dilation: int):
    k = kernel.shape[1]
    pad = ((0, 0),) * (x.ndim - 3) + ((padding, padding), (padding, padding), (0, 0))
    out_hw = tuple(_out_size(n, k, strides, padding, dilation) for n in x.shape[-3:-1])
    return _taps_sum(jnp.pad(x, pad), kernel[:, :, :, 0].astype(x.dtype), out_hw, strides, dilation, k)


def _depthwise_taps_fwd(x, kernel, strides, padding, dilation):
    return _depthwise_taps(x, kernel, strides, padding, dilation), (x, kernel)


def _depthwise_taps_bwd(strides, padding, dilation, residuals, g):
    """Explicit taps gradients: XLA's automatic transpose of the forward (k² pads summed)
    compiles ~5× slower on CPU.  dx is again a k×k correlation, of the stride-dilated,
    padded g with the flipped kernel; dk is k² multiply-reductions."""
    x, kernel = residuals
    k = kernel.shape[1]
    span = (k - 1) * dilation
    # Place g on the stride grid of the padded input, then correlate with the flipped kernel.
    hp, wp = x.shape[-3] + 2 * padding, x.shape[-2] + 2 * padding
    g_h, g_w = g.shape[-3], g.shape[-2]
    zero = jnp.zeros((), g.dtype)
    cfg = [(0, 0, 0)] * (g.ndim - 3)
    cfg += [(span, hp - ((g_h - 1) * strides + 1), strides - 1),
            (span, wp - ((g_w - 1) * strides + 1), strides - 1), (0, 0, 0)]
    g_dilated = jax.lax.pad(g, zero, cfg)  # (E, B, hp + span, wp + span, C)
    flipped = kernel[:, ::-1, ::-1, 0].astype(g.dtype)
    dx_padded = _taps_sum(g_dilated, flipped, (hp, wp), 1, dilation, k)
    if x.ndim == 4:
        dx_padded = jnp.sum(dx_padded, axis=0)
    dx = dx_padded[..., padding:padding + x.shape[-3], padding:padding + x.shape[-2], :]
    pad = ((0, 0),) * (x.ndim - 3) + ((padding, padding), (padding, padding), (0, 0))
    padded = jnp.pad(x, pad)
    h_axis = padded.ndim - 3
    lead = padded.shape[:h_axis]
    rows = []
    for i in range(k):
        for j in range(k):
            top, left = i * dilation, j * dilation
            window = jax.lax.slice(
                padded, (0,) * h_axis + (top, left, 0),
                lead + (top + (g_h - 1) * strides + 1, left + (g_w - 1) * strides + 1, padded.shape[-1]),
                (1,) * h_axis + (strides, strides, 1))
            rows.append(jnp.sum((window[None] if x.ndim == 4 else window) * g, axis=(1, 2, 3)))
    dk = jnp.stack(rows, axis=1).reshape(kernel.shape[0], k, k, 1, kernel.shape[-1]).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


def _edge_depthwise(x, kernel, strides: int, padding: int, dilation: int, impl: str):
    """Per-edge depthwise conv.  x: (B, H, W, C) shared by all edges or (E, B, H, W, C);
    kernel (E, k, k, 1, C).  Returns (E, B, H', W', C)."""
    if impl == "lax":
        conv = functools.partial(depthwise_conv, strides=strides, padding=((padding, padding),) * 2,
                                 dilation=dilation, impl="lax")
        return jax.vmap(conv, in_axes=(None if x.ndim == 4 else 0, 0))(x, kernel)
    return _depthwise_taps(x, kernel, strides, padding, dilation)


def _edge_pointwise(x, kernel):
    """Per-edge 1×1 conv: x (E, B, H, W, C) or shared (B, H, W, C), kernel (E, 1, 1, C, D)."""
    if x.ndim == 4:
        return jnp.einsum("bhwc,ecd->ebhwd", x, kernel[:, 0, 0].astype(x.dtype))
    return jnp.einsum("ebhwc,ecd->ebhwd", x, kernel[:, 0, 0].astype(x.dtype))


class SourceEdges(nn.Module):
    """The mixed ops of all ``num_edges`` edges leaving one state, computed together.

    Returns (E, B, H', W', C): edge e's ō(x) = Σ_o w[e, o] · o_e(x).  Grouping the edges by
    their source state is exact and makes the graph ~3× smaller than one module per edge:
    the parametric ops of the E edges run as one batched op (weights with a leading E
    axis, BN statistics per edge), and the parameter-free ops (pools + non-affine BN,
    identity), whose outputs are the same on every edge leaving a state, run once.
    Parameters per edge are exactly those of ``ops.Operation(name, C, stride,
    affine=False)``: edge e's slice ``p[e]`` of every weight has that op's shape.
    """

    channels: int
    num_edges: int
    strides: int
    primitives: tuple[str, ...] = PRIMITIVES
    impl: str = "auto"

    def _kernel(self, name, shape):
        return self.param(name, nn.initializers.lecun_normal(batch_axis=(0,)), (self.num_edges, *shape),
                          jnp.float32)

    @nn.compact
    def __call__(self, x, weights, *, train: bool):
        impl = ops_lib.resolve_impl(self.impl)
        c, e, stride = self.channels, self.num_edges, self.strides
        if x.shape[-1] != c:
            raise ValueError(f"SourceEdges built for {c} channels got input {x.shape}.")
        r = nn.relu(x)
        out = None

        def add(out, y, k):
            w = weights[:, k].astype(y.dtype).reshape(e, 1, 1, 1, 1)
            y = w * (y[None] if y.ndim == 4 else y)
            return y if out is None else out + y

        for k, name in enumerate(self.primitives):
            if name == "none":
                continue
            if name in ("max_pool_3x3", "avg_pool_3x3"):
                pool = ops_lib.max_pool_3x3 if name == "max_pool_3x3" else ops_lib.avg_pool_3x3
                y = ops_lib.batch_norm(train, False, name=f"{name}_bn")(pool(x, stride, impl))
            elif name == "skip_connect" and stride == 1:
                y = x
            elif name == "skip_connect":
                if x.shape[1] % 2 or x.shape[2] % 2:
                    raise ValueError(f"skip_connect at stride 2 needs even spatial sizes, got {x.shape[1:3]}.")
                a = _edge_pointwise(r[:, ::2, ::2], self._kernel(f"{name}_conv_1", (1, 1, c, c // 2)))
                b = _edge_pointwise(r[:, 1::2, 1::2], self._kernel(f"{name}_conv_2", (1, 1, c, c // 2)))
                y = _edge_bn(train, f"{name}_bn")(jnp.concatenate([a, b], axis=-1))
            else:
                kernel, dilation, padding, separable = ops_lib._CONV_SPECS[name]
                y = _edge_depthwise(r, self._kernel(f"{name}_dw_0", (kernel, kernel, 1, c)), stride, padding,
                                    dilation, impl)
                y = _edge_bn(train, f"{name}_bn_0")(_edge_pointwise(y, self._kernel(f"{name}_pw_0", (1, 1, c, c))))
                if separable:
                    y = _edge_depthwise(nn.relu(y), self._kernel(f"{name}_dw_1", (kernel, kernel, 1, c)), 1,
                                        padding, 1, impl)
                    y = _edge_bn(train, f"{name}_bn_1")(
                        _edge_pointwise(y, self._kernel(f"{name}_pw_1", (1, 1, c, c))))
            out = add(out, y, k)
        if out is None:  # Only "none": zeros.
            out = jnp.zeros((e,) + x[:, ::stride, ::stride].shape, x.dtype)
        return out


class SearchCell(nn.Module):
    """A search cell: preprocess both inputs, then every node sums the mixed ops of its
    incoming edges; edges are computed grouped by source state (``SourceEdges``)."""

    channels: int
    reduction: bool
    reduction_prev: bool
    steps: int = 4
    multiplier: int = 4
    primitives: tuple[str, ...] = PRIMITIVES
    impl: str = "auto"

    @nn.compact
    def __call__(self, s0, s1, weights, *, train: bool):
        if self.reduction_prev:
            s0 = ops_lib.FactorizedReduce(self.channels, affine=False, name="preprocess0")(s0, train=train)
        else:
            s0 = ops_lib.ReLUConvBN(self.channels, affine=False, name="preprocess0")(s0, train=train)
        s1 = ops_lib.ReLUConvBN(self.channels, affine=False, name="preprocess1")(s1, train=train)
        states = [s0, s1]
        nodes = [None] * self.steps
        for src in range(self.steps + 1):
            targets = list(range(max(0, src - 1), self.steps))  # Nodes i read state src when src < i + 2.
            edge_ids = jnp.asarray([edge_index(i, src) for i in targets])
            strides = 2 if self.reduction and src < 2 else 1
            out = SourceEdges(self.channels, len(targets), strides, self.primitives, self.impl,
                              name=f"from_{src}")(states[src], weights[edge_ids], train=train)
            for k, i in enumerate(targets):
                nodes[i] = out[k] if nodes[i] is None else nodes[i] + out[k]
            if src >= 1:
                states.append(nodes[src - 1])  # Node src−1 has all its inputs now.
        return jnp.concatenate(states[-self.multiplier:], axis=-1)


class SearchNetwork(nn.Module):
    """The DARTS supernet (``model_search.Network``); α in the ``"arch"`` collection."""

    num_classes: int
    channels: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    alpha_init_scale: float = 1e-3
    impl: str = "auto"

    def plan(self) -> list[CellSpec]:
        return cell_plan(self.layers, self.channels, self.multiplier, self.stem_multiplier)

    @nn.compact
    def __call__(self, x, *, train: bool):
        for name in self.primitives:
            ops_lib.check_primitive(name)
        alphas = {}
        for cell_type in CELL_TYPES:
            alphas[cell_type] = self.variable(
                ARCH, cell_type,
                lambda: init_alpha(self.make_rng("params"), self.steps, len(self.primitives),
                                   self.alpha_init_scale)).value
            check_alpha(alphas[cell_type], self.steps, len(self.primitives), f"α[{cell_type!r}]")
        weights = {k: jax.nn.softmax(v, axis=-1) for k, v in alphas.items()}
        s = ops_lib.Conv(self.stem_multiplier * self.channels, 3, 1, 1, self.impl, name="stem_conv")(x)
        s = ops_lib.batch_norm(train, True, name="stem_bn")(s)
        s0 = s1 = s
        for spec in self.plan():
            cell = SearchCell(spec.channels, spec.reduction, spec.reduction_prev, self.steps, self.multiplier,
                              self.primitives, self.impl, name=f"cell_{spec.index}")
            s0, s1 = s1, cell(s0, s1, weights["reduce" if spec.reduction else "normal"], train=train)
        out = jnp.mean(s1, axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(out)
