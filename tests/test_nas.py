"""KDL-DARTS (rkdsc_jax.nas): ops, supernet, genotypes, complexity, bi-level steps.

Supernets here are tiny (1 cell, 2 intermediate nodes, 4 channels, 8×8 inputs, a reduced op
set where noted) because XLA's CPU compile time grows with the graph; the full eight-op,
four-node cell is covered by shape-only tests and one step.
"""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rkdsc_jax import genotype_data, train
from rkdsc_jax.nas import genotypes, network, ops, search, search_space

DARTS_V2 = genotype_data.path("DARTS_V2")
SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


# --- ops and parameter counts -------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("channels", [4, 16, 36])
def test_op_param_counts_match_hand_counts(channels, strides, affine):
    c, a = channels, int(affine)
    hand = {
        "none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0,
        "skip_connect": 0 if strides == 1 else 2 * c * (c // 2) + 2 * c * a,  # FactorizedReduce.
        "sep_conv_3x3": 2 * (9 * c + c * c) + 2 * 2 * c * a,
        "sep_conv_5x5": 2 * (25 * c + c * c) + 2 * 2 * c * a,
        "dil_conv_3x3": 9 * c + c * c + 2 * c * a,
        "dil_conv_5x5": 25 * c + c * c + 2 * c * a,
    }
    for name in ops.PRIMITIVES:
        assert ops.op_param_count(name, c, strides, affine) == hand[name], name


@pytest.mark.parametrize("strides", [1, 2])
def test_taps_max_pool_gradient_goes_to_the_first_tied_maximum_like_reduce_window(strides):
    """Half the pixels are tied zeros (ReLU-zeroed regions): jnp.maximum's rule would split
    their gradient; XLA's reduce_window (and PyTorch) route it to the first maximum."""
    x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, 7, 8, 3)))
    cotangent = jax.random.normal(jax.random.PRNGKey(1), (2, 7 // strides + 7 % strides, 4 if strides == 2 else 8, 3))
    grads = {impl: jax.vjp(lambda v, impl=impl: ops.max_pool_3x3(v, strides, impl), x)[1](cotangent)[0]
             for impl in ("taps", "lax")}
    np.testing.assert_allclose(ops.max_pool_3x3(x, strides, "taps"), ops.max_pool_3x3(x, strides, "lax"))
    np.testing.assert_allclose(grads["taps"], grads["lax"], atol=1e-6)


@pytest.mark.parametrize("strides", [1, 2])
def test_scatter_windows_is_the_transpose_of_taking_windows(strides):
    offsets = [(-4, 2), (0, 0), (1, -1), (3, 3), (-2, -4)]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 3))

    def windows(v):  # v[s·i + dy, s·j + dx], zero outside v.
        padded = jnp.pad(v, ((0, 0), (4, 4), (4, 4), (0, 0)))
        return jnp.stack([padded[:, 4 + dy::strides, 4 + dx::strides][:, :(9 - 1) // strides + 1,
                                                                         :(8 - 1) // strides + 1]
                          for dy, dx in offsets])

    out, transpose = jax.vjp(windows, x)
    d_windows = jax.random.normal(jax.random.PRNGKey(1), out.shape)
    np.testing.assert_allclose(ops.scatter_windows(d_windows, offsets, strides, (9, 8)), transpose(d_windows)[0],
                               atol=1e-5)


@pytest.mark.parametrize("strides", [1, 2])
def test_batched_first_depthwise_equals_each_ops_native_convolution_with_gradients(strides):
    """All four conv ops' first depthwise convs on 3 edges as one patch contraction (CPU)
    against XLA's grouped convolution per op and edge: values and both gradients."""
    geometry = search_space._conv_geometry(ops.PRIMITIVES)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
    keys = jax.random.split(jax.random.PRNGKey(1), len(geometry))
    kernels = [jax.random.normal(k, (3, g.kernel, g.kernel, 1, 5)) for k, g in zip(keys, geometry)]

    def run(impl):
        return lambda x, kernels: search_space._first_depthwise(x, kernels, geometry, strides, impl)

    out, taps_vjp = jax.vjp(run("taps"), x, kernels)
    reference, lax_vjp = jax.vjp(run("lax"), x, kernels)
    np.testing.assert_allclose(out, reference, atol=1e-4, rtol=1e-4)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), out.shape)
    for ours, theirs in zip(jax.tree.leaves(taps_vjp(cotangent)), jax.tree.leaves(lax_vjp(cotangent))):
        np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=1e-4)


def test_supernet_params_are_the_sum_of_its_edges_ops():
    """The grouped supernet holds exactly one DARTS op per (edge, op), counted per module."""
    model = search_space.SearchNetwork(10, channels=4, layers=3)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))
    params = shapes["params"]
    assert {k: v.shape for k, v in shapes["arch"].items()} == {"normal": (14, 8), "reduce": (14, 8)}
    edge_params = 0
    fixed = ops.count_params(params["stem_conv"]) + ops.count_params(params["stem_bn"]) \
        + ops.count_params(params["classifier"])
    for spec in model.plan():
        cell = params[f"cell_{spec.index}"]
        fixed += ops.count_params(cell["preprocess0"]) + ops.count_params(cell["preprocess1"])
        for _, j in search_space.edge_inputs(4):
            strides = 2 if spec.reduction and j < 2 else 1
            edge_params += sum(ops.op_param_count(o, spec.channels, strides, affine=False) for o in ops.PRIMITIVES)
    assert ops.count_params(params) == fixed + edge_params
    assert search.num_arch_params(shapes["arch"]) == 224  # SPEC: 2 × 14 × 8.


def _reference_cell(cell_params, cell_stats, s0, s1, weights, spec, steps, primitives):
    """DARTS's per-edge cell (one ops.Operation per edge and op) on the supernet's weights."""
    def run(module, name, x, sub_params, sub_stats):
        variables = {"params": sub_params} | ({"batch_stats": sub_stats} if sub_stats else {})
        return module.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    pre0 = ops.FactorizedReduce(spec.channels, False) if spec.reduction_prev else ops.ReLUConvBN(spec.channels,
                                                                                                   affine=False)
    states = [run(pre0, "p0", s0, cell_params["preprocess0"], cell_stats["preprocess0"]),
              run(ops.ReLUConvBN(spec.channels, affine=False), "p1", s1, cell_params["preprocess1"],
                  cell_stats["preprocess1"])]
    for i in range(steps):
        total = 0.0
        for j in range(i + 2):
            strides = 2 if spec.reduction and j < 2 else 1
            src_targets = list(range(max(0, j - 1), steps))
            slot = src_targets.index(i)
            group = cell_params[f"from_{j}"]
            e = search_space.edge_index(i, j)
            for k, name in enumerate(primitives):
                if name == "none":
                    continue
                op = ops.Operation(name, spec.channels, strides, affine=False, pool_bn=True)
                sub = {key[len(name) + 1:]: v[slot] for key, v in group.items() if key.startswith(name + "_")}
                if name == "skip_connect" and strides == 2:
                    p = {"reduce": {"conv_1": {"kernel": sub["conv_1"]}, "conv_2": {"kernel": sub["conv_2"]}}}
                elif name.startswith("sep"):
                    p = {"sep": {f"{kind}_{n}": {"kernel": sub[f"{kind}_{n}"]} for kind in ("dw", "pw") for n in (0, 1)}}
                elif name.startswith("dil"):
                    p = {"dil": {"dw": {"kernel": sub["dw_0"]}, "pw": {"kernel": sub["pw_0"]}}}
                else:
                    p = {}
                y = op.apply({"params": p}, states[j], train=True, mutable=["batch_stats"])[0]
                total = total + weights[e, k] * y
        states.append(total)
    return jnp.concatenate(states[-4:], axis=-1)


# slow: minutes of XLA CPU compilation (issue 5 notes); run with -m slow.
@pytest.mark.parametrize("reduction", [pytest.param(False, marks=pytest.mark.slow),
                                       pytest.param(True, marks=pytest.mark.slow)])
def test_grouped_cell_equals_per_edge_darts_cell(reduction):
    """Sources 0, 1 at stride 2 and sources 2–4 at stride 1 (reduction cell) cover every op."""
    spec = search_space.CellSpec(0, reduction, False, 4, 6, 6)
    cell = search_space.SearchCell(4, reduction, False)
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    s0, s1 = jax.random.normal(k[0], (4, 8, 8, 6)), jax.random.normal(k[1], (4, 8, 8, 6))
    weights = jax.nn.softmax(jax.random.normal(k[2], (14, 8)), -1)
    variables = cell.init(k[3], s0, s1, weights, train=True)
    ours = jax.jit(lambda v: cell.apply(v, s0, s1, weights, train=True, mutable=["batch_stats"])[0])(variables)
    reference = jax.jit(lambda v: _reference_cell(v["params"], v["batch_stats"], s0, s1, weights, spec, 4,
                                                  ops.PRIMITIVES))(variables)
    np.testing.assert_allclose(ours, reference, atol=2e-4, rtol=1e-4)


def _load_into_torch(net, params, arch, steps: int):
    """Copies a JAX supernet's weights and α into ``benchmarks.torch_darts.Network``; returns
    (JAX kernel path, edge index or None, torch module) for every convolution copied."""
    import torch

    copied = []

    def put(module, kernel, path, edge=None):  # HWIO (dense) or (k, k, 1, C) (depthwise) -> OIHW.
        module.weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())
        copied.append((path, edge, module))

    put(net.stem[0], params["stem_conv"]["kernel"], ("stem_conv", "kernel"))
    net.stem[1].weight.data = torch.tensor(np.asarray(params["stem_bn"]["scale"]))
    net.stem[1].bias.data = torch.tensor(np.asarray(params["stem_bn"]["bias"]))
    for i, cell in enumerate(net.cells):
        p = params[f"cell_{i}"]
        pre = (f"cell_{i}", "preprocess0")
        if "conv" in p["preprocess0"]:
            put(cell.preprocess0[1], p["preprocess0"]["conv"]["kernel"], pre + ("conv", "kernel"))
        else:
            put(cell.preprocess0.conv_1, p["preprocess0"]["conv_1"]["kernel"], pre + ("conv_1", "kernel"))
            put(cell.preprocess0.conv_2, p["preprocess0"]["conv_2"]["kernel"], pre + ("conv_2", "kernel"))
        put(cell.preprocess1[1], p["preprocess1"]["conv"]["kernel"], (f"cell_{i}", "preprocess1", "conv", "kernel"))
        for src in range(steps + 1):
            targets = range(max(0, src - 1), steps)
            for e, node in enumerate(targets):
                ops_ = cell._ops[search_space.edge_index(node, src)]._ops
                group = p[f"from_{src}"]
                for name, leaf in group.items():  # e.g. sep_conv_3x3_dw_1, skip_connect_conv_2.
                    base = "skip_connect" if name.startswith("skip_connect") else "_".join(name.split("_")[:3])
                    part, op, kernel = name[len(base) + 1:], ops_[ops.PRIMITIVES.index(base)], leaf[e]
                    where = (f"cell_{i}", f"from_{src}", name), e
                    if base == "skip_connect":
                        put(getattr(op, part), kernel, *where)  # FactorizedReduce.conv_1 / conv_2.
                    elif base.startswith("sep"):  # SepConv = 2 × (ReLU, depthwise, pointwise, BN).
                        layer, index = part.split("_")
                        put(op[int(index)][1 if layer == "dw" else 2], kernel, *where)
                    else:  # DilConv = ReLU, depthwise, pointwise, BN.
                        put(op[1 if part == "dw_0" else 2], kernel, *where)
    net.classifier.weight.data = torch.from_numpy(np.asarray(params["classifier"]["kernel"]).T.copy())
    net.classifier.bias.data = torch.tensor(np.asarray(params["classifier"]["bias"]))
    net.alphas_normal.data = torch.tensor(np.asarray(arch["normal"]))
    net.alphas_reduce.data = torch.tensor(np.asarray(arch["reduce"]))
    return copied


def _random_variables(model, x, seed: int = 1):
    """``model.init``'s variables drawn in NumPy (lecun-normal kernels, BN scale ~1, bias ~0):
    the supernet's own init, eager or jitted, takes longer on CPU than the comparison itself."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed), x, train=False))

    def draw(path, leaf):
        collection, name, shape = path[0].key, path[-1].key, leaf.shape
        if collection == "batch_stats":  # Unused: train=True normalises with the batch's statistics.
            return jnp.full(shape, 1.0 if name == "var" else 0.0, leaf.dtype)
        if name in ("scale", "bias"):
            return jnp.asarray((name == "scale") + 0.1 * rng.standard_normal(shape), leaf.dtype)
        fan_in = np.prod(shape[-4:-1]) if len(shape) >= 4 else shape[0]  # Edge-stacked kernels: (E, kh, kw, in, out).
        return jnp.asarray(rng.standard_normal(shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_supernet_matches_the_pytorch_darts_reference():
    """Logits, ∂CE/∂α and ∂CE/∂w of every convolution of the JAX supernet equal DARTS's eager
    PyTorch code (benchmarks/torch_darts.py) with the same weights: a reduction cell after a
    normal one exercises every op at strides 1 and 2 and both preprocessings; the stem's
    ReLU-zeroed pixels give the max-pools tied maxima (routed to the first, as PyTorch)."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_darts

    steps, layers = 2, 3
    model = search_space.SearchNetwork(10, channels=4, layers=layers, steps=steps, multiplier=steps)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2))
    labels = jnp.asarray([1, 4, 7])
    variables = _random_variables(model, x)
    arch = jax.tree.map(lambda a: 0.5 * jax.random.normal(jax.random.PRNGKey(2), a.shape), variables["arch"])

    def loss(params, arch):
        logits, _ = model.apply(variables | {"params": params, "arch": arch}, x, train=True,
                                mutable=["batch_stats"])
        return optax_ce(logits, labels), logits

    (ce, logits), (w_grads, grads) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables["params"], arch)
    net = torch_darts.Network(4, 10, layers, in_channels=2, steps=steps, multiplier=steps).train()
    copied = _load_into_torch(net, variables["params"], arch, steps)
    torch_logits = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    torch_ce = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(np.asarray(labels)).long())
    torch_ce.backward()
    np.testing.assert_allclose(logits, torch_logits.detach().numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(grads["normal"], net.alphas_normal.grad.numpy(), atol=1e-5, rtol=1e-3)
    np.testing.assert_allclose(grads["reduce"], net.alphas_reduce.grad.numpy(), atol=1e-5, rtol=1e-3)
    assert float(jnp.max(jnp.abs(grads["reduce"]))) > 1e-4  # The comparison is not of zeros.
    assert len(copied) > 100
    for path, edge, module in copied:  # ∂CE/∂w of every convolution, each edge's slice on its own.
        grad = functools.reduce(lambda tree, key: tree[key], path, w_grads)
        grad = np.asarray(grad if edge is None else grad[edge]).transpose(3, 2, 0, 1)
        np.testing.assert_allclose(grad, module.weight.grad.numpy(), atol=1e-5, rtol=1e-3, err_msg=str(path))


def optax_ce(logits, labels):
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


# --- genotypes ----------------------------------------------------------------------------


def test_derivation_from_hand_set_alpha():
    alpha = {t: np.zeros((14, 8)) for t in ("normal", "reduce")}
    idx = {name: k for k, name in enumerate(ops.PRIMITIVES)}
    # Node 0 (edges 0, 1): "none" dominates edge 0 but is excluded; edge 1 prefers sep_conv_5x5.
    alpha["normal"][0, idx["none"]] = 9.0
    alpha["normal"][0, idx["dil_conv_3x3"]] = 1.0
    alpha["normal"][1, idx["sep_conv_5x5"]] = 2.0
    # Node 1 (edges 2, 3, 4): edges 2 and 4 strongest.
    alpha["normal"][2, idx["skip_connect"]] = 3.0
    alpha["normal"][3, idx["max_pool_3x3"]] = 0.5
    alpha["normal"][4, idx["avg_pool_3x3"]] = 2.5
    # Node 2 (edges 5..8): inputs 3 and 1.
    alpha["normal"][8, idx["sep_conv_3x3"]] = 4.0
    alpha["normal"][6, idx["skip_connect"]] = 3.5
    # Node 3 (edges 9..13): inputs 4 and 0.
    alpha["normal"][13, idx["dil_conv_5x5"]] = 5.0
    alpha["normal"][9, idx["skip_connect"]] = 4.5
    alpha["reduce"][:, idx["max_pool_3x3"]] = 1.0
    g = genotypes.derive(alpha)
    assert g.normal == (("sep_conv_5x5", 1), ("dil_conv_3x3", 0), ("skip_connect", 0), ("avg_pool_3x3", 2),
                        ("sep_conv_3x3", 3), ("skip_connect", 1), ("dil_conv_5x5", 4), ("skip_connect", 0))
    assert g.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
                        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1))
    assert g.normal_concat == (2, 3, 4, 5)
    assert genotypes.op_histogram(g)["normal"]["skip_connect"] == 3
    # The cap: the kept skip with the smallest softmax weight (edge 2: e³/(e³+7) = 0.74 against
    # 0.83 and 0.93 on edges 6 and 9) loses its skip option and node 1 is derived again.
    capped = genotypes.derive(alpha, max_skip=2)
    assert genotypes.op_histogram(capped)["normal"]["skip_connect"] == 2
    assert capped.normal[2:4] == (("avg_pool_3x3", 2), ("max_pool_3x3", 1))
    assert capped.normal[:2] == g.normal[:2] and capped.normal[4:] == g.normal[4:]
    assert genotypes.derive(alpha, max_skip=2, cap_cells=()) == g


def test_genotype_json_round_trip_and_darts_v2(tmp_path):
    g = genotypes.load(DARTS_V2)
    assert g.normal[0] == ("sep_conv_3x3", 0) and g.reduce[2] == ("skip_connect", 2)
    assert g.meta["name"] == "DARTS_V2"
    path = tmp_path / "g.json"
    genotypes.save(g, str(path))
    again = genotypes.load(str(path))
    assert again == g
    assert json.loads(path.read_text())["normal"][7] == ["dil_conv_3x3", 2]


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["normal"].__setitem__(0, ["conv_7x7", 0]), "unknown op 'conv_7x7'"),
    (lambda d: d["normal"].pop(), "has 7 edges"),
    (lambda d: d["reduce"].__setitem__(1, ["max_pool_3x3", 3]), "can only read states 0..1"),
    (lambda d: d.pop("reduce_concat"), "lacks \\['reduce_concat'\\]"),
])
def test_bad_genotype_json_is_rejected(tmp_path, mutate, message):
    d = json.load(open(DARTS_V2))
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        genotypes.load(str(path))


def test_alpha_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(14, 7\).*needs \(14, 8\)"):
        genotypes.derive({"normal": np.zeros((14, 7)), "reduce": np.zeros((14, 8))})
    model = search_space.SearchNetwork(10, channels=4, layers=1)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))
    variables = dict(variables) | {"arch": {"normal": jnp.zeros((13, 8)), "reduce": jnp.zeros((14, 8))}}
    with pytest.raises(ValueError, match="α\\['normal'\\] has shape \\(13, 8\\)"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 8, 8, 3)), train=False), variables)


def test_darts_v2_at_20_cells_36_channels_has_the_papers_parameter_count():
    g = genotypes.load(DARTS_V2)
    count = network.genotype_param_count(g, num_classes=10, channels=36, layers=20)
    assert count == 3_349_342  # DARTS's train.py log: "param size = 3.349342MB".
    assert round(count / 1e6, 1) == g.meta["reported"]["params_millions"] == 3.3
    with_aux = network.genotype_param_count(g, num_classes=10, channels=36, layers=20, include_auxiliary=True)
    assert with_aux - count == 128 * 36 * 4 * 2 ** 2 + 2 * 128 + 2 * 2 * 128 * 768 + 2 * 768 + 768 * 10 + 10


def _scanned_and_per_cell_networks():
    """10 cells: the run of 2 identical cells in the last stage goes through nn.scan; a small
    cell with a conv, a pool and an identity keeps the compile short."""
    g = genotypes.Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0)],
                           normal_concat=(2, 3), reduce=[("max_pool_3x3", 0), ("skip_connect", 1),
                                                         ("skip_connect", 2), ("avg_pool_3x3", 1)],
                           reduce_concat=(2, 3))
    scanned = network.GenotypeNetwork(g, 10, channels=4, layers=10)
    per_cell = scanned.clone(scan_cells=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
    variables = per_cell.init(jax.random.PRNGKey(1), x, train=False)
    stacked = {k: network.stack_cells(v, 10, 4) for k, v in variables.items()}
    assert "cells_8_9" in stacked["params"] and "cell_8" not in stacked["params"]
    return scanned, per_cell, x, variables, stacked


def test_scanned_genotype_network_equals_one_module_per_cell():
    """The same weights (restacked) give the same logits and batch statistics, train and eval."""
    scanned, per_cell, x, variables, stacked = _scanned_and_per_cell_networks()

    def run(model, variables):
        (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"], model.apply(variables, x, train=False)[0]

    ours = jax.jit(lambda v: run(scanned, v))(stacked)
    logits, stats, eval_logits = jax.jit(lambda v: run(per_cell, v))(variables)
    chex.assert_trees_all_close(ours, (logits, network.stack_cells(stats, 10, 4), eval_logits), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_scanned_genotype_network_has_the_per_cell_gradients():
    """Also with every cell recomputed in the backward pass (``remat_cells``)."""
    scanned, per_cell, x, variables, stacked = _scanned_and_per_cell_networks()

    def grads(model, variables):
        def loss(params):
            (logits, _), _ = model.apply(variables | {"params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(logits * jnp.arange(10.0))
        return jax.grad(loss)(variables["params"])

    ours = jax.jit(lambda v: grads(scanned, v))(stacked)
    recomputed = jax.jit(lambda v: grads(scanned.clone(remat_cells=True), v))(stacked)
    theirs = network.stack_cells(jax.jit(lambda v: grads(per_cell, v))(variables), 10, 4)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(theirs))
    chex.assert_trees_all_close(ours, theirs, atol=1e-5 * scale, rtol=0)  # float32 sums in other orders.
    chex.assert_trees_all_close(recomputed, theirs, atol=1e-5 * scale, rtol=0)


def test_genotype_network_trains_with_drop_path_and_aux():
    g = genotypes.load(DARTS_V2)
    model = network.GenotypeNetwork(g, 10, channels=4, layers=3, auxiliary=True, drop_path_prob=0.2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    (logits, aux), _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                                   mutable=["batch_stats"])
    assert logits.shape == aux.shape == (2, 10)
    logits_eval, aux_eval = model.apply(variables, x, train=False)
    assert aux_eval is None and logits_eval.shape == (2, 10)


# --- complexity penalty -------------------------------------------------------------------


def test_complexity_penalty_is_the_normalised_expected_param_count_and_favours_cheap_ops():
    model = search_space.SearchNetwork(10, channels=4, layers=3)
    cx = search.Complexity.for_model(model)
    # Hand count: 1 normal cell (C=4) and 2 reduction cells (C=8, 16), 14 edges each.
    normal = np.array([ops.hand_param_count(o, 4, 1) for o in ops.PRIMITIVES])
    np.testing.assert_array_equal(cx.tables["normal"][5], normal)
    red = sum(np.array([ops.hand_param_count(o, c, 2) for o in ops.PRIMITIVES]) for c in (8, 16))
    np.testing.assert_array_equal(cx.tables["reduce"][0], red)
    uniform = {t: jnp.zeros((14, 8)) for t in ("normal", "reduce")}
    expected = (cx.tables["normal"].mean(1).sum() + cx.tables["reduce"].mean(1).sum()) / cx.denominator
    np.testing.assert_allclose(float(cx(uniform)), expected, rtol=1e-6)
    big = {t: jnp.zeros((14, 8)).at[:, ops.PRIMITIVES.index("sep_conv_5x5")].set(30.0) for t in uniform}
    np.testing.assert_allclose(float(cx(big)), 1.0, rtol=1e-5)  # sep_conv_5x5 is the largest op.
    # One gradient-descent step on μ·C(α) moves probability from expensive to cheap ops.
    grads = jax.grad(cx)(uniform)
    cost = cx.tables["normal"][0]
    g = np.asarray(grads["normal"][0])
    assert np.all(np.sign(g[cost > cost.mean()]) > 0) and np.all(np.sign(g[cost < cost.mean()]) < 0)
    stepped = jax.tree.map(lambda a, g: a - 100.0 * g, uniform, grads)
    before = jax.nn.softmax(uniform["normal"])[0]
    after = jax.nn.softmax(stepped["normal"])[0]
    assert float(after @ cost) < float(before @ cost)
    assert float(cx(stepped)) < float(cx(uniform))


# --- bi-level steps -----------------------------------------------------------------------


def _tiny(primitives=SMALL_OPS, steps=2):
    return search_space.SearchNetwork(10, channels=4, layers=1, steps=steps, multiplier=steps,
                                      primitives=primitives)


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32),
            "val_image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
            "val_label": rng.integers(0, 10, n).astype(np.int32)}


def _state(model, schedule, seed=0):
    w_tx, a_tx = search.make_weight_optimizer(schedule), search.make_arch_optimizer()
    return search.create_search_state(model, w_tx, a_tx, jnp.zeros((1, 8, 8, 3)), seed)


@pytest.fixture(scope="module", params=["auto", "lax"])
def second_order_setup(request):
    """On CPU, "auto" runs the taps kernels (custom VJPs: the HVP is reverse over reverse)
    and "lax" XLA's native ops, as on accelerators (the HVP is forward over reverse)."""
    model = _tiny().clone(impl=request.param)
    schedule = search.epoch_cosine_schedule(0.1, 0.001, 10, 100)
    state = _state(model, schedule)
    cx = search.Complexity.for_model(model)
    hp = search.SearchHParams(order="second", lam=0.5, temperature=2.0, mu=0.3)
    batch = _batch() | {"teacher_logits": np.random.default_rng(5).normal(size=(8, 10)).astype(np.float32),
                        "val_teacher_logits": np.random.default_rng(6).normal(size=(8, 10)).astype(np.float32)}
    # One real step first, so the momentum buffer (used by the virtual step) is non-zero.
    step = jax.jit(functools.partial(search.search_step, hp=hp, complexity=cx, lr_schedule=schedule))
    state, _ = step(state, batch)
    return model, state, cx, hp, batch


def _flat(tree):
    return np.concatenate([np.ravel(tree[k]) for k in ("normal", "reduce")])


# slow: XLA CPU compiles this supernet step in minutes (issue 5 notes); run with -m slow.
@pytest.mark.slow
def test_second_order_gradient_exact_vs_hvp_vs_finite_difference(second_order_setup):
    model, state, cx, hp, batch = second_order_setup
    lr = 0.1

    def grad(method):
        return _flat(jax.jit(lambda s, b: search.arch_gradient(s, b, hp, cx, None, lr, method)[0])(state, batch))

    exact, hvp, fd = grad("unrolled"), grad("hvp"), grad("finite_difference")
    first = _flat(jax.jit(lambda s, b: search.arch_gradient(
        s, b, search.SearchHParams(order="first", lam=0.5, temperature=2.0, mu=0.3), cx)[0])(state, batch))
    scale = np.linalg.norm(exact)
    # The decomposition with an exact Hessian-vector product is the same number.
    np.testing.assert_allclose(hvp, exact, atol=1e-4 * scale)
    # DARTS's central difference approximates it (float32, ε = 0.01/‖v‖; ReLU and max-pool
    # kinks inside ±εv make it inexact).
    fd_error = np.linalg.norm(fd - exact)
    print(f"|exact|={scale:.4g} |fd-exact|={fd_error:.4g} |first-exact|={np.linalg.norm(first - exact):.4g} "
          f"cos(fd, exact)={fd @ exact / (np.linalg.norm(fd) * scale):.5f}")
    assert fd_error < 0.25 * scale
    assert fd @ exact / (np.linalg.norm(fd) * scale) > 0.97
    # ... and the second-order term is far above the agreement tolerance (the test could fail).
    assert np.linalg.norm(first - exact) > 0.05 * scale

    # A direct jax.grad of the unrolled loss, written out by hand from the definitions.
    L = search.SearchLosses(state, batch, hp, cx, None)
    buf = state.w_opt_state["momentum"].trace

    def unrolled(arch):
        g = jax.grad(lambda w: L.train(w, arch)[0])(state.params)
        w2 = jax.tree.map(lambda w, g, b: w - lr * (g + 3e-4 * w + 0.9 * b), state.params, g, buf)
        logits = state.apply_fn({"params": w2, "arch": arch, "batch_stats": state.batch_stats},
                                batch["val_image"], train=True, mutable=["batch_stats"])[0]
        t = jax.nn.log_softmax(batch["val_teacher_logits"] / 2.0)
        s = jax.nn.log_softmax(logits / 2.0)
        kd = 4.0 * jnp.mean(jnp.sum(jnp.exp(t) * (t - s), -1))
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["val_label"][:, None], 1))
        return 0.5 * ce + 0.5 * kd + 0.3 * cx(arch)

    direct = _flat(jax.jit(jax.grad(unrolled))(state.arch))
    np.testing.assert_allclose(exact, direct, atol=1e-4 * scale)


# slow: XLA CPU compiles this supernet step in minutes (issue 5 notes); run with -m slow.
@pytest.mark.slow
def test_search_step_on_8_devices_equals_1_device():
    model = search_space.SearchNetwork(10, channels=4, layers=1, steps=2, multiplier=2)  # All eight ops.
    schedule = search.epoch_cosine_schedule(0.025, 0.001, 10, 100)
    cx = search.Complexity.for_model(model)
    hp = search.SearchHParams(order="first", mu=0.1)
    results = []
    for devices in (1, 8):
        mesh = train.make_mesh(devices)
        state = jax.device_put(_state(model, schedule), train.replicated(mesh))
        step = train.jit_train_step(functools.partial(search.search_step, hp=hp, complexity=cx,
                                                      lr_schedule=schedule), mesh)
        for i in range(2):
            state, metrics = step(state, train.shard_batch(_batch(i, 16), mesh))
        assert state.arch["normal"].sharding.is_fully_replicated
        results.append(jax.device_get((state.params, state.arch, state.batch_stats, metrics)))
    chex.assert_trees_all_close(results[0], results[1], atol=2e-5, rtol=2e-5)
    # α moved, weights moved.
    assert not np.allclose(results[0][1]["reduce"], _state(model, schedule).arch["reduce"])


@pytest.mark.slow
def test_search_and_retrain_modes_write_a_genotype_and_retrain_it(tmp_path):
    """experiments.darts.search end to end: plain DARTS on synthetic data, then retraining its cell."""
    from experiments.darts import search as nas_experiment
    from experiments.configs import darts_fmnist

    config = darts_fmnist.get_config("plain")
    config.data.name, config.data.normalization, config.data.augment = "synthetic", "unit", "none"
    config.data.num_train_examples = 128
    s = config.search
    s.layers, s.channels, s.batch_size, s.epochs, s.log_every, s.checkpoint_every = 3, 4, 32, 1, 1, 1
    config.mesh.num_devices = 2
    summary = nas_experiment.search(config, str(tmp_path / "search"))
    assert summary["steps"] == 2 and summary["train_half"] == 64
    genotype = genotypes.load(str(tmp_path / "search" / "genotype.json"))
    assert genotype.to_dict()["normal"] == summary["genotype"]["normal"]
    assert os.path.exists(tmp_path / "search" / "alphas" / "epoch_001.json")

    r = config.retrain
    r.genotype, r.layers, r.channels, r.epochs, r.batch_size = str(tmp_path / "search"), 3, 4, 1.0, 32
    r.num_train_examples, r.num_eval_examples = 64, 64
    retrained = nas_experiment.retrain(config, str(tmp_path / "retrain"))
    assert retrained["num_params"] == network.genotype_param_count(genotype, 10, 4, 3, (28, 28, 1))
    assert 0.0 <= retrained["eval"]["accuracy"] <= 1.0


def test_classifier_teacher_of_the_search_reproduces_its_training_runs_accuracy(tmp_path):
    """``teacher.kind='classifier'``: the search's teacher (params + batch statistics restored
    without the optimiser) classifies the test images exactly as the training run's own
    evaluation did; a teacher trained on other inputs is refused with the fix."""
    from experiments.common import classifier
    from experiments.darts import search as nas_experiment
    from experiments.configs import darts_fmnist, fmnist_classifier
    from rkdsc_jax import data

    teacher_config = fmnist_classifier.get_config()
    teacher_config.data.image_size = 16
    teacher_config.data.num_train_examples, teacher_config.data.num_eval_examples = 512, 300
    teacher_config.train.num_epochs, teacher_config.train.batch_size = 1.0, 64
    teacher_config.mesh.num_devices = 1
    trained = classifier.train_classifier(teacher_config, str(tmp_path / "teacher"))

    config = darts_fmnist.get_config("kdl")
    config.teacher.workdir = str(tmp_path / "teacher")
    teacher_fn = jax.jit(nas_experiment.teacher_fn(config, 10, (16, 16, 1)))
    source = data.take(data.get_source("fashion_mnist", "test"), 300)
    correct = 0.0
    for batch in data.eval_batches(source, batch_size=128,
                                   preprocess_config=data.PreprocessConfig(16, None, "fashion_mnist")):
        predictions = np.argmax(teacher_fn(jnp.asarray(batch["image"])), -1)
        correct += float(np.sum((predictions == batch["label"]) * batch["mask"]))
    assert correct / 300 == pytest.approx(trained["eval"]["accuracy"], abs=1e-6)

    with pytest.raises(ValueError, match="data.image_size"):
        nas_experiment.teacher_fn(config, 10, (28, 28, 1))


def test_darts_comparison_tables_means_and_histograms(tmp_path):
    from experiments.darts import comparison as darts_comparison
    from rkdsc_jax import files

    accuracies = {"kdl": (0.80, 0.90), "plain": (0.70, 0.72)}
    for variant, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            files.atomic_write_json(str(tmp_path / f"{variant}_s{seed}" / "summary.json"), {
                "val": {"accuracy": 0.5}, "complexity": 0.25 * (seed + 1),
                "op_histogram": {"normal": {"sep_conv_3x3": 2, "skip_connect": 1, "none": 0},
                                 "reduce": {"max_pool_3x3": 2}},
                "genotype": {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]],
                             "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]]},
                "total_wall_time_s": 120.0})
            files.atomic_write_json(str(tmp_path / f"{variant}_s{seed}_retrain" / "summary.json"), {
                "eval": {"accuracy": accuracy}, "num_params": 1000 * (seed + 1), "total_wall_time_s": 60.0})
    result = darts_comparison.collect(str(tmp_path), [0, 1])
    kdl = result["kdl"]["summary"]
    assert kdl["test_accuracy"]["mean"] == pytest.approx(0.85)
    assert kdl["test_accuracy"]["std"] == pytest.approx(0.05)
    assert kdl["params"]["mean"] == 1500 and kdl["complexity"]["mean"] == pytest.approx(0.375)
    assert kdl["op_histogram"] == {"normal": {"skip_connect": 2, "sep_conv_3x3": 4}, "reduce": {"max_pool_3x3": 4}}
    assert kdl["pool_skip_none_edges_per_seed"] == 3
    assert kdl["search_minutes"]["mean"] == pytest.approx(2.0)
    table = darts_comparison.markdown(result)
    assert "85.00 ± 5.00 %" in table and "71.00 ± 1.00 %" in table
    with pytest.raises(FileNotFoundError, match="darts_fmnist.sh"):
        darts_comparison.collect(str(tmp_path), [0, 1, 2])
