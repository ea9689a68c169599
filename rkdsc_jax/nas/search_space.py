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
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def _out_size(size: int, k: int, strides: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (k - 1) * dilation - 1) // strides + 1


def _window(padded, top: int, left: int, out_hw, strides: int):
    """padded[..., top::strides, left::strides, :] cropped to ``out_hw``."""
    h_axis = padded.ndim - 3
    lead = padded.shape[:h_axis]
    return jax.lax.slice(
        padded, (0,) * h_axis + (top, left, 0),
        lead + (top + (out_hw[0] - 1) * strides + 1, left + (out_hw[1] - 1) * strides + 1, padded.shape[-1]),
        (1,) * h_axis + (strides, strides, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_same(x, kernel, padding: int):
    """Stride-1 'same' depthwise correlation of x (E, B, H, W, C) with per-edge kernels
    (E, k, k, 1, C), as k² shifted, per-channel-scaled slices (fused by XLA on CPU)."""
    k = kernel.shape[1]
    padded = jnp.pad(x, ((0, 0),) * 2 + ((padding, padding),) * 2 + ((0, 0),))
    taps = kernel[:, :, :, 0].astype(x.dtype)[:, :, :, None, None, None, :]  # (E, k, k, 1, 1, 1, C)
    out = None
    for i in range(k):
        for j in range(k):
            term = _window(padded, i, j, x.shape[2:4], 1) * taps[:, i, j]
            out = term if out is None else out + term
    return out


def _depthwise_same_fwd(x, kernel, padding):
    return _depthwise_same(x, kernel, padding), (x, kernel)


def _depthwise_same_bwd(padding, residuals, g):
    """dx: the same correlation of g with the flipped kernel; dk: one reduction over the
    stacked windows (k² separate reductions compile into k² kernels)."""
    x, kernel = residuals
    k = kernel.shape[1]
    dx = _depthwise_same(g, kernel[:, ::-1, ::-1], padding)
    padded = jnp.pad(x, ((0, 0),) * 2 + ((padding, padding),) * 2 + ((0, 0),))
    windows = jnp.stack([_window(padded, i, j, x.shape[2:4], 1) for i in range(k) for j in range(k)], axis=1)
    dk = jnp.sum(windows * g[:, None], axis=(2, 3, 4))  # (E, k², C)
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_same.defvjp(_depthwise_same_fwd, _depthwise_same_bwd)


class _ConvOpGeometry(NamedTuple):
    name: str
    kernel: int
    dilation: int
    padding: int
    separable: bool


def _conv_geometry(primitives) -> list[_ConvOpGeometry]:
    return [_ConvOpGeometry(n, *ops_lib._CONV_SPECS[n]) for n in primitives if n in ops_lib._CONV_SPECS]


@functools.lru_cache(maxsize=32)
def _union_taps(geometry: tuple[_ConvOpGeometry, ...]):
    """The union of the ops' tap offsets around the centre, and per op the row of its kernel
    (k·k flattened) at each union offset, k·k (a zero row) where the op has no tap."""
    offsets = sorted({(i * g.dilation - g.padding, j * g.dilation - g.padding)
                      for g in geometry for i in range(g.kernel) for j in range(g.kernel)})
    rows = []
    for g in geometry:
        where = {(i * g.dilation - g.padding, j * g.dilation - g.padding): i * g.kernel + j
                 for i in range(g.kernel) for j in range(g.kernel)}
        rows.append(np.asarray([where.get(o, g.kernel * g.kernel) for o in offsets], np.int32))
    return offsets, rows


def _first_depthwise(r, kernels, geometry, strides: int, impl: str):
    """Every conv op's first depthwise conv on every edge of one source, as ONE op.

    r (B, H, W, C) is shared by all edges and ops; kernels[o] (E, k_o, k_o, 1, C).  On CPU
    ("taps") the union of the ops' tap offsets (41 for the four DARTS convs, against 68
    separate taps) is gathered once as patches (B, H', W', T, C) and contracted with all
    O·E kernels in one batched matrix product; elsewhere each op runs XLA's native grouped
    convolution.  Returns (O·E, B, H', W', C), op-major.
    """
    num_edges = kernels[0].shape[0]
    if impl == "lax":
        outs = []
        for g, kernel in zip(geometry, kernels):
            conv = functools.partial(depthwise_conv, strides=strides, padding=((g.padding, g.padding),) * 2,
                                     dilation=g.dilation, impl="lax")
            outs.append(jax.vmap(conv, in_axes=(None, 0))(r, kernel))
        return jnp.concatenate(outs, axis=0)
    offsets, rows = _union_taps(tuple(geometry))
    matrix = []
    for g, kernel, row in zip(geometry, kernels, rows):
        flat = kernel.reshape(num_edges, g.kernel * g.kernel, -1).astype(r.dtype)
        flat = jnp.concatenate([flat, jnp.zeros_like(flat[:, :1])], axis=1)
        matrix.append(flat[:, row])  # (E, T, C)
    return _patch_contract(r, jnp.concatenate(matrix, axis=0), tuple(offsets), strides)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_contract(r, matrix, offsets, strides: int):
    """out[n] = Σ_t window_t(r) · matrix[n, t]: (N, B, H', W', C) from r (B, H, W, C) and
    per-channel tap weights matrix (N, T, C), as one batched matrix product over patches."""
    return jnp.einsum("tbhwc,ntc->nbhwc", jnp.stack(ops_lib.take_windows(r, offsets, strides)), matrix)


def _patch_contract_fwd(r, matrix, offsets, strides):
    return _patch_contract(r, matrix, offsets, strides), (r, matrix)


def _patch_contract_bwd(offsets, strides, residuals, g):
    """dr by ``ops.scatter_windows`` (~1.5× faster on CPU than XLA's own transpose of the
    slices); the patches are recomputed rather than kept (T× the input's memory)."""
    r, matrix = residuals
    d_patches = jnp.einsum("nbhwc,ntc->tbhwc", g, matrix)
    dr = ops_lib.scatter_windows(d_patches, offsets, strides, r.shape[1:3])
    d_matrix = jnp.einsum("tbhwc,nbhwc->ntc", jnp.stack(ops_lib.take_windows(r, offsets, strides)), g)
    return dr.astype(r.dtype), d_matrix.astype(matrix.dtype)


_patch_contract.defvjp(_patch_contract_fwd, _patch_contract_bwd)


class SourceEdges(nn.Module):
    """The mixed ops of all ``num_edges`` edges leaving one state, computed together.

    Returns (E, B, H', W', C): edge e's ō(x) = Σ_o w[e, o] · o_e(x).  Edges that read the
    same state are one batched computation, and so are the ops: the first depthwise conv
    of all four conv ops on all E edges is one op (``_first_depthwise``), every pointwise
    conv stage one batched matrix product and every BN stage one normalisation over an
    (op, edge) axis; the parameter-free ops (pools + non-affine BN, identity), whose
    outputs are the same on every edge, run once.  This keeps the traced graph a few
    dozen ops per source, whatever the number of edges, which is what XLA's compile time
    follows.  Parameters per edge are exactly those of ``ops.Operation(name, C, stride,
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

    def _stacked_bn(self, y, names, train: bool):
        """Non-affine BN of y (O·E, B, H, W, C), statistics per (op, edge, channel); the running
        statistics of op o live under ``names[o]`` as flax's BatchNorm keeps them (E, C)."""
        e, c = self.num_edges, y.shape[-1]
        stats = [self.variable("batch_stats", n, lambda: {"mean": jnp.zeros((e, c), jnp.float32),
                                                          "var": jnp.ones((e, c), jnp.float32)}) for n in names]
        if train:
            mean = jnp.mean(y, axis=(1, 2, 3))
            var = jnp.maximum(jnp.mean(jnp.square(y), axis=(1, 2, 3)) - jnp.square(mean), 0.0)
            if not self.is_initializing():
                for o, s in enumerate(stats):
                    part = slice(o * e, (o + 1) * e)
                    s.value = {"mean": 0.9 * s.value["mean"] + 0.1 * jax.lax.stop_gradient(mean[part]),
                               "var": 0.9 * s.value["var"] + 0.1 * jax.lax.stop_gradient(var[part])}
        else:
            mean = jnp.concatenate([s.value["mean"] for s in stats], axis=0)
            var = jnp.concatenate([s.value["var"] for s in stats], axis=0)
        scale = jax.lax.rsqrt(var + 1e-5)
        return (y - mean[:, None, None, None, :]) * scale[:, None, None, None, :]

    def _pointwise(self, y, names):
        """Stacked 1×1 convs: y (O·E, B, H, W, C) with each op's (E, 1, 1, C, C) kernel."""
        c = self.channels
        kernel = jnp.concatenate([self._kernel(n, (1, 1, c, c))[:, 0, 0] for n in names], axis=0)
        return jnp.einsum("nbhwc,ncd->nbhwd", y, kernel.astype(y.dtype))

    @nn.compact
    def __call__(self, x, weights, *, train: bool):
        impl = ops_lib.resolve_impl(self.impl)
        c, e, stride = self.channels, self.num_edges, self.strides
        if x.shape[-1] != c:
            raise ValueError(f"SourceEdges built for {c} channels got input {x.shape}.")
        r = nn.relu(x)
        shared = []  # (op index, (B, H', W', C)) outputs common to all edges.
        per_edge = []  # (op index, (E, B, H', W', C)).
        for k, name in enumerate(self.primitives):
            if name in ("max_pool_3x3", "avg_pool_3x3"):
                pool = ops_lib.max_pool_3x3 if name == "max_pool_3x3" else ops_lib.avg_pool_3x3
                shared.append((k, ops_lib.batch_norm(train, False, name=f"{name}_bn")(pool(x, stride, impl))))
            elif name == "skip_connect" and stride == 1:
                shared.append((k, x))
            elif name == "skip_connect":
                if x.shape[1] % 2 or x.shape[2] % 2:
                    raise ValueError(f"skip_connect at stride 2 needs even spatial sizes, got {x.shape[1:3]}.")
                a = _edge_pointwise(r[:, ::2, ::2], self._kernel(f"{name}_conv_1", (1, 1, c, c // 2)))
                b = _edge_pointwise(r[:, 1::2, 1::2], self._kernel(f"{name}_conv_2", (1, 1, c, c // 2)))
                per_edge.append((k, _edge_bn(train, f"{name}_bn")(jnp.concatenate([a, b], axis=-1))))
        geometry = _conv_geometry(self.primitives)
        if geometry:
            names = [g.name for g in geometry]
            kernels = [self._kernel(f"{n}_dw_0", (g.kernel, g.kernel, 1, c)) for n, g in zip(names, geometry)]
            y = _first_depthwise(r, kernels, geometry, stride, impl)
            y = self._stacked_bn(self._pointwise(y, [f"{n}_pw_0" for n in names]), [f"{n}_bn_0" for n in names],
                                 train)
            ys = {n: y[o * e:(o + 1) * e] for o, n in enumerate(names)}
            separable = [g for g in geometry if g.separable]
            if separable:
                seps = [g.name for g in separable]
                z = jnp.concatenate([
                    _edge_depthwise(nn.relu(ys[g.name]), self._kernel(f"{g.name}_dw_1", (g.kernel, g.kernel, 1, c)),
                                    1, g.padding, 1, impl) for g in separable], axis=0)
                z = self._stacked_bn(self._pointwise(z, [f"{n}_pw_1" for n in seps]), [f"{n}_bn_1" for n in seps],
                                     train)
                ys |= {n: z[o * e:(o + 1) * e] for o, n in enumerate(seps)}
            per_edge += [(self.primitives.index(n), ys[n]) for n in names]
        out = None
        for k, y in per_edge:
            term = weights[:, k].astype(y.dtype).reshape(e, 1, 1, 1, 1) * y
            out = term if out is None else out + term
        for k, y in shared:
            term = weights[:, k].astype(y.dtype).reshape(e, 1, 1, 1, 1) * y[None]
            out = term if out is None else out + term
        if out is None:  # Only "none": zeros.
            out = jnp.zeros((e,) + x[:, ::stride, ::stride].shape, x.dtype)
        return out


def _edge_depthwise(x, kernel, strides: int, padding: int, dilation: int, impl: str):
    """Per-edge stride-1 'same' depthwise conv of x (E, B, H, W, C) with kernels (E, k, k, 1, C)."""
    if impl == "lax":
        conv = functools.partial(depthwise_conv, strides=strides, padding=((padding, padding),) * 2,
                                 dilation=dilation, impl="lax")
        return jax.vmap(conv)(x, kernel)
    if strides != 1 or dilation != 1:
        raise ValueError("The taps depthwise conv of the second stage is stride 1, dilation 1.")
    return _depthwise_same(x, kernel, padding)


def _edge_pointwise(x, kernel):
    """Per-edge 1×1 conv: x shared (B, H, W, C), kernel (E, 1, 1, C, D)."""
    return jnp.einsum("bhwc,ecd->ebhwd", x, kernel[:, 0, 0].astype(x.dtype))


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
