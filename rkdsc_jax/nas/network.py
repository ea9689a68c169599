"""A network built from any genotype, for retraining (DARTS's ``model.NetworkCIFAR``).

Stem 3×3 conv to 3·C channels + BN, ``layers`` cells (reductions at layers/3 and
2·layers/3, channels doubled there), optional auxiliary head after cell 2·layers/3,
global average pooling, linear classifier.  All BN is affine.  Drop-path (DARTS's
``drop_path``) drops whole op outputs per example with probability ``drop_path_prob`` and
rescales the kept ones by 1/(1 − p); identity edges are never dropped.  It needs the
``"dropout"`` RNG when ``train`` and ``drop_path_prob > 0``.

``__call__`` returns ``(logits, aux_logits)``; ``aux_logits`` is None unless
``auxiliary`` and ``train``.  With ``include_head=False`` it returns the last cell's
feature map (B, h, w, C) instead: the genotype network as a student encoder (paper A).  DARTS reports parameters without the auxiliary head: see
``param_count(..., include_auxiliary=False)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rkdsc_jax.nas import ops as ops_lib
from rkdsc_jax.nas.genotypes import Genotype
from rkdsc_jax.nas.search_space import CellSpec, cell_plan

AUX_NAME = "auxiliary_head"


def drop_path(x, prob: float, rng: jax.Array):
    keep = 1.0 - prob
    mask = jax.random.bernoulli(rng, keep, (x.shape[0], 1, 1, 1)).astype(x.dtype)
    return x * mask / keep


class GenotypeCell(nn.Module):
    genotype: Genotype
    channels: int
    reduction: bool
    reduction_prev: bool
    drop_path_prob: float = 0.0
    impl: str = "auto"

    @nn.compact
    def __call__(self, s0, s1, train: bool):
        gene, concat = self.genotype.cell("reduce" if self.reduction else "normal")
        if self.reduction_prev:
            s0 = ops_lib.FactorizedReduce(self.channels, name="preprocess0")(s0, train=train)
        else:
            s0 = ops_lib.ReLUConvBN(self.channels, name="preprocess0")(s0, train=train)
        s1 = ops_lib.ReLUConvBN(self.channels, name="preprocess1")(s1, train=train)
        states = [s0, s1]
        for node in range(len(gene) // 2):
            total = None
            for k in (2 * node, 2 * node + 1):
                op_name, j = gene[k]
                strides = 2 if self.reduction and j < 2 else 1
                h = ops_lib.Operation(op_name, self.channels, strides, affine=True, impl=self.impl,
                                      name=f"op_{k}")(states[j], train=train)
                identity = op_name == "skip_connect" and strides == 1
                if train and self.drop_path_prob > 0 and not identity:
                    h = drop_path(h, self.drop_path_prob, self.make_rng("dropout"))
                total = h if total is None else total + h
            states.append(total)
        return jnp.concatenate([states[i] for i in concat], axis=-1)


class _CarriedCell(nn.Module):
    """A normal cell as an ``nn.scan`` body: carry (s0, s1) -> (s1, cell(s0, s1))."""

    genotype: Genotype
    channels: int
    drop_path_prob: float
    impl: str
    train: bool

    @nn.compact
    def __call__(self, carry, _):
        s0, s1 = carry
        out = GenotypeCell(self.genotype, self.channels, False, False, self.drop_path_prob, self.impl,
                           name="cell")(s0, s1, train=self.train)
        return (s1, out), None


def cell_groups(plan: list[CellSpec], break_after: int | None = None, scan: bool = True) -> list[list[CellSpec]]:
    """Consecutive cells that one traced body can run: normal cells whose two inputs have the
    cell's own output width (so the carry keeps its shape), split after ``break_after``."""
    groups: list[list[CellSpec]] = []
    for spec in plan:
        same = (scan and not spec.reduction and not spec.reduction_prev
                and spec.channels_prev_prev == spec.channels_prev)
        previous = groups[-1][-1] if groups else None
        if (same and previous is not None and groups[-1][0].channels_prev == spec.channels_prev
                and not previous.reduction and not previous.reduction_prev
                and previous.channels_prev_prev == previous.channels_prev and previous.index != break_after):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def stack_cells(tree, layers: int, channels: int, multiplier: int = 4, stem_multiplier: int = 3,
                auxiliary: bool = False):
    """A ``scan_cells=False`` variables tree (params or batch statistics: "cell_<i>" per cell)
    in the ``scan_cells=True`` layout, e.g. to restore a checkpoint written before scanning."""
    tree = dict(tree)
    plan = cell_plan(layers, channels, multiplier, stem_multiplier)
    for group in cell_groups(plan, 2 * layers // 3 if auxiliary else None):
        if len(group) > 1:
            cells = [tree.pop(f"cell_{spec.index}") for spec in group]
            tree[f"cells_{group[0].index}_{group[-1].index}"] = {
                "cell": jax.tree.map(lambda *xs: jnp.stack(xs), *cells)}
    return tree


class AuxiliaryHead(nn.Module):
    """DARTS's ``AuxiliaryHeadCIFAR`` (input 8×8): ReLU, 5×5 avg pool stride 3, 1×1 conv 128,
    BN, ReLU, 2×2 conv 768, BN, ReLU, linear."""

    num_classes: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        if x.shape[1] < 8 or x.shape[2] < 8:
            raise ValueError(
                f"The auxiliary head needs ≥ 8×8 features at depth 2·layers/3 (a 32×32 input), got "
                f"{x.shape[1]}×{x.shape[2]}; set auxiliary=False for smaller inputs.")
        x = nn.relu(x)
        x = nn.avg_pool(x, (5, 5), (3, 3), "VALID")
        x = ops_lib.PointwiseConv(128, name="conv_1")(x)
        x = nn.relu(ops_lib.batch_norm(train, True, name="bn_1")(x))
        x = ops_lib.Conv(768, 2, impl=self.impl, name="conv_2")(x)
        x = nn.relu(ops_lib.batch_norm(train, True, name="bn_2")(x))
        return nn.Dense(self.num_classes, name="classifier")(x.reshape(x.shape[0], -1))


class GenotypeNetwork(nn.Module):
    genotype: Genotype
    num_classes: int
    channels: int = 36
    layers: int = 20
    auxiliary: bool = False
    drop_path_prob: float = 0.0
    stem_multiplier: int = 3
    impl: str = "auto"
    include_head: bool = True
    # Runs of identical cells (same widths, no reduction next to them) as one nn.scan body:
    # compile time follows the number of distinct cells, not the depth.  Parameters of a run
    # are stacked under "cells_<first>_<last>"; False keeps one "cell_<i>" per cell.
    scan_cells: bool = True
    # Recompute each cell's activations in the backward pass (jax.checkpoint) instead of
    # keeping them: ~1/3 more compute for a fraction of the memory, where memory is the limit.
    remat_cells: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        multiplier = len(self.genotype.normal_concat)
        if len(self.genotype.reduce_concat) != multiplier:
            raise ValueError("normal_concat and reduce_concat must have the same length (the cell width).")
        s = ops_lib.Conv(self.stem_multiplier * self.channels, 3, 1, 1, self.impl, name="stem_conv")(x)
        s = ops_lib.batch_norm(train, True, name="stem_bn")(s)
        s0 = s1 = s
        aux_logits = None
        aux_index = 2 * self.layers // 3 if self.auxiliary else None
        for group in cell_groups(cell_plan(self.layers, self.channels, multiplier, self.stem_multiplier),
                                 aux_index if self.scan_cells else None, self.scan_cells):
            spec = group[0]
            if len(group) == 1:
                cell_type = nn.remat(GenotypeCell, static_argnums=(3,)) if self.remat_cells else GenotypeCell
                cell = cell_type(self.genotype, spec.channels, spec.reduction, spec.reduction_prev,
                                 self.drop_path_prob, self.impl, name=f"cell_{spec.index}")
                s0, s1 = s1, cell(s0, s1, train)
            else:
                body = nn.remat(_CarriedCell) if self.remat_cells else _CarriedCell
                scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0},
                                  split_rngs={"params": True, "dropout": True}, length=len(group))
                (s0, s1), _ = scanned(self.genotype, spec.channels, self.drop_path_prob, self.impl, train,
                                      name=f"cells_{spec.index}_{group[-1].index}")((s0, s1), None)
            if group[-1].index == aux_index:
                head = AuxiliaryHead(self.num_classes, self.impl, name=AUX_NAME)
                if train or self.is_initializing():
                    aux_logits = head(s1, train=train)
        if not self.include_head:
            return s1
        logits = nn.Dense(self.num_classes, name="classifier")(jnp.mean(s1, axis=(1, 2)))
        return logits, (aux_logits if train else None)


def param_count(params, include_auxiliary: bool = False) -> int:
    """Parameters (BN scale/bias included, running statistics not), as DARTS counts them."""
    params = dict(params)
    if not include_auxiliary:
        params.pop(AUX_NAME, None)
    return ops_lib.count_params(params)


def genotype_param_count(genotype: Genotype, num_classes: int = 10, channels: int = 36, layers: int = 20,
                         input_shape: tuple[int, int, int] = (32, 32, 3), include_auxiliary: bool = False) -> int:
    """The parameter count of the network built from ``genotype`` (shapes only, no compute)."""
    model = GenotypeNetwork(genotype, num_classes, channels, layers, auxiliary=include_auxiliary)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False))
    return param_count(shapes["params"], include_auxiliary)
