"""KDL-DARTS bi-level search (SPEC §4.1): the state, the optimisers, the loss and the step.

One jitted step does what one iteration of DARTS's ``train_search.py`` does: first the
architecture step on a validation batch (α ← Adam(∇_α L_val)), then the weight step on a
training batch with the updated α (w ← SGD(∇_w L_train)).  The two halves of the
training set come from ``data.split_train_validation``.

Loss (KDL, SPEC §4.1), with ``lam`` = λ, ``temperature`` = τ, ``mu`` = μ::

    L_train(w, α) = (1 − λ)·CE(y, s) + λ·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))
    L_val(w, α)   = the same on the validation batch + μ·C(α)

μ·C(α) enters only the α objective (it does not depend on w).  λ = μ = 0 is plain DARTS.
C(α) is ``Complexity``: the expected parameter count of the cells' edges over
softmax(α), summed over *every cell of the supernet* at its own width and stride
(α is shared by cells of a type), divided by the same sum with the largest op on every
edge, so 0 ≤ C ≤ 1 (``Complexity.for_model(..., normalization="per_cell_type")`` weighs
the normal and the reduction cell equally instead; see ``Complexity``).  Parameter counts
come from the op modules themselves (``ops.op_param_count``) with BN scale and bias counted (``count_bn_affine=True``): the
count the op will have in the derived, retrained network (the supernet's BN are
non-affine; set ``count_bn_affine=False`` to count the supernet's own weights).

Second order (DARTS ``Architect._compute_unrolled_model``): the virtual step is the SGD
step the weight optimiser would take next, without clipping,

    w'(α) = w − ξ·(m·buf + ∇_w L_train(w, α) + wd·w),

with ξ the current weight learning rate, m the momentum, buf its momentum buffer and wd
its weight decay (``unroll_momentum=False`` drops the m·buf term).  The α gradient is
d/dα L_val(w'(α), α):

- ``"unrolled"`` (default): ``jax.grad`` straight through the virtual step (exact);
- ``"hvp"``: DARTS's decomposition ∇_α L_val(w', α) − ξ·∇²_{α,w} L_train(w, α)·v,
  v = ∇_{w'} L_val(w', α), with the mixed second derivative exact
  (``mixed_hessian_vector_product``: forward over reverse, reverse over reverse on CPU);
- ``"finite_difference"``: the same decomposition with DARTS's central difference,
  (∇_α L_train(w + εv) − ∇_α L_train(w − εv)) / 2ε, ε = 0.01/‖v‖.

BatchNorm runs on batch statistics in every forward (DARTS keeps the supernet in train
mode while searching); only the weight step updates the running averages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rkdsc_jax.distill import losses
from rkdsc_jax.nas import ops as ops_lib
from rkdsc_jax.nas.search_space import ARCH, CELL_TYPES, SearchNetwork, edge_inputs

ORDERS = ("first", "second")
SECOND_ORDER_METHODS = ("unrolled", "hvp", "finite_difference")


# --- Optimisers ---------------------------------------------------------------------------


def epoch_cosine_schedule(lr: float, lr_min: float, epochs: int, steps_per_epoch: int) -> Callable:
    """DARTS's ``CosineAnnealingLR(T_max=epochs, eta_min)`` stepped once per epoch."""
    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, epochs)
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
    return schedule


class WeightOptimizer(NamedTuple):
    """An optax transformation (``init``/``update``) that also records the SGD settings the
    second-order virtual step reuses."""

    init: Callable
    update: Callable
    momentum: float
    weight_decay: float


def make_weight_optimizer(schedule: Callable, momentum: float = 0.9, weight_decay: float = 3e-4,
                          grad_clip: float | None = 5.0) -> WeightOptimizer:
    """PyTorch SGD as DARTS uses it: clip the gradient norm, add wd·w, heavy-ball momentum
    (buf ← g + m·buf, w ← w − lr·buf), one named chain so the momentum buffer is
    ``opt_state["momentum"].trace``."""
    parts = []
    if grad_clip:
        parts.append(("clip", optax.clip_by_global_norm(grad_clip)))
    parts += [("weight_decay", optax.add_decayed_weights(weight_decay)),
              ("momentum", optax.trace(decay=momentum)),
              ("lr", optax.scale_by_learning_rate(schedule))]
    tx = optax.named_chain(*parts)
    return WeightOptimizer(tx.init, tx.update, float(momentum), float(weight_decay))


def make_arch_optimizer(lr: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
                        weight_decay: float = 1e-3) -> optax.GradientTransformation:
    """PyTorch Adam with (coupled, L2) weight decay, as DARTS's architecture optimiser."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr, b1=b1, b2=b2, eps=1e-8))


# --- State --------------------------------------------------------------------------------


class SearchState(struct.PyTreeNode):
    """Everything a search step reads and writes, as one checkpointable pytree."""

    step: jax.Array
    params: Any
    arch: Any
    batch_stats: Any
    w_opt_state: Any
    a_opt_state: Any
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    w_tx: Any = struct.field(pytree_node=False)
    a_tx: optax.GradientTransformation = struct.field(pytree_node=False)
    # The model's kernels admit forward-mode autodiff (XLA's native ops; the CPU "taps"
    # kernels define custom VJPs, which jax.jvp cannot enter).
    forward_mode: bool = struct.field(pytree_node=False, default=False)

    def variables(self, params=None, arch=None, batch_stats=None) -> dict:
        return {"params": self.params if params is None else params,
                "arch": self.arch if arch is None else arch,
                "batch_stats": self.batch_stats if batch_stats is None else batch_stats}


def create_search_state(model: SearchNetwork, w_tx: WeightOptimizer | optax.GradientTransformation,
                        a_tx: optax.GradientTransformation, sample_input: jax.Array, seed: int) -> SearchState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = model.init({"params": init_key}, sample_input, train=False)
    params, arch = variables["params"], variables[ARCH]
    return SearchState(
        step=jnp.zeros((), jnp.int32), params=params, arch=arch,
        batch_stats=variables.get("batch_stats", flax.core.FrozenDict()),
        w_opt_state=w_tx.init(params), a_opt_state=a_tx.init(arch), rng=state_key,
        apply_fn=model.apply, w_tx=w_tx, a_tx=a_tx, forward_mode=ops_lib.resolve_impl(model.impl) == "lax")


# --- Complexity penalty -------------------------------------------------------------------


NORMALIZATIONS = ("global", "per_cell_type", "per_edge")


@dataclasses.dataclass(frozen=True)
class Complexity:
    """C(α), the expected parameter count of the cells' edges under softmax(α), normalised.

    ``tables[type][e, o]`` sums params(o) on edge e over all cells of that type (at each
    cell's width and edge stride).  ``normalization`` says what C(α) is divided by, and so
    what μ in L_val + μ·C(α) means (SPEC §4.1):

    - ``"global"`` (default, SPEC's formula): Σ_type Σ_e Σ_o p_o·tables / Σ_type Σ_e max_o tables.
      C ∈ [0, 1] is the fraction of the largest possible cell parameters.  The widest cells
      dominate: in the 3-cell search of paper A's pipeline the two reduction cells (2C and
      4C wide) hold ~90 % of the denominator, so the normal cell's α is almost unpenalised
      (in the 8-cell, 16-channel supernet the six normal cells hold 69 %).
    - ``"per_cell_type"``: the mean over cell types of each type's own global C, so the normal
      and the reduction cell weigh the same (each type's C ∈ [0, 1]).  μ = the loss, in nats,
      of filling *every* edge of both cell types with its largest op instead of a free one.
    - ``"per_edge"``: the mean over all edges of both types of Σ_o p_o·params(o)/max_o params(o);
      each edge weighs 1/E (E = 2 × edges per cell; edges whose ops are all free are left out).
      C ∈ [0, 1]; under uniform α, C = mean over edges of mean_o params(o)/max_o params(o)
      (``uniform_value``).  μ/E is the loss of one edge's largest op against a free op,
      whatever the edge's width or stride (E depends only on the nodes per cell).  In the
      DARTS space it equals "per_cell_type" (every edge's largest op is sep_conv_5x5 at its
      cell's width); the two differ only for op sets whose largest op varies by edge.

    Recommended with "per_cell_type" or "per_edge": μ ≈ 1 (0.5 to 3).  At initialisation the
    RMS α-gradient of 1·C is then 0.3 to 1.8 times the cross-entropy's in *each* cell type of
    the reference supernets (3 cells, 4 channels, 1 to 4 nodes, including paper A's pipeline
    search with all 8 ops; ``benchmarks/penalty_scale.py``), where "global" pulls on the
    normal cell 3 to 9 times less than on the reduction cell.
    μ = 0.1 stays a light touch (3 % to 18 % of the CE's pull).  The CE's gradient scale
    depends on the network and on training, so report the measured ratio with a μ sweep.
    ``denominator`` is the global one in every mode; ``expected_params`` is un-normalised.
    """

    tables: Mapping[str, np.ndarray]
    denominator: float
    normalization: str = "global"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"Complexity normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}.")

    @classmethod
    def for_model(cls, model: SearchNetwork, count_bn_affine: bool = True,
                  normalization: str = "global") -> "Complexity":
        num_ops = len(model.primitives)
        edges = edge_inputs(model.steps)
        tables = {t: np.zeros((len(edges), num_ops), np.float64) for t in CELL_TYPES}
        for spec in model.plan():
            table = tables["reduce" if spec.reduction else "normal"]
            for e, (_, j) in enumerate(edges):
                strides = 2 if spec.reduction and j < 2 else 1
                for k, name in enumerate(model.primitives):
                    table[e, k] += ops_lib.op_param_count(name, spec.channels, strides, count_bn_affine)
        denominator = float(sum(t.max(axis=1).sum() for t in tables.values()))
        if denominator <= 0:
            raise ValueError("Every candidate op is parameter-free; the complexity penalty is undefined.")
        return cls(tables, denominator, normalization)

    def _scaled_tables(self) -> dict[str, np.ndarray]:
        """tables divided so that C(α) = Σ_type Σ_e Σ_o p_o · scaled[type][e, o]."""
        if self.normalization == "global":
            return {t: self.tables[t] / self.denominator for t in CELL_TYPES}
        if self.normalization == "per_cell_type":
            totals = {t: self.tables[t].max(axis=1).sum() for t in CELL_TYPES}
            used = [t for t in CELL_TYPES if totals[t] > 0]  # A 1-cell supernet has no normal cell.
            return {t: self.tables[t] / (totals[t] * len(used)) if totals[t] > 0 else 0 * self.tables[t]
                    for t in CELL_TYPES}
        maxima = {t: self.tables[t].max(axis=1, keepdims=True) for t in CELL_TYPES}
        count = sum(int((m > 0).sum()) for m in maxima.values())
        return {t: np.divide(self.tables[t], maxima[t] * count, out=np.zeros_like(self.tables[t]),
                             where=maxima[t] > 0) for t in CELL_TYPES}

    def __call__(self, arch: Mapping[str, jax.Array]) -> jax.Array:
        if self.normalization == "global":  # Kept bit for bit as before the option existed.
            total = 0.0
            for t in CELL_TYPES:
                weights = jax.nn.softmax(arch[t], axis=-1)
                total = total + jnp.sum(weights * jnp.asarray(self.tables[t], weights.dtype))
            return total / self.denominator
        scaled = self._scaled_tables()
        total = 0.0
        for t in CELL_TYPES:
            weights = jax.nn.softmax(arch[t], axis=-1)
            total = total + jnp.sum(weights * jnp.asarray(scaled[t], weights.dtype))
        return total

    def uniform_value(self) -> float:
        """C under uniform α (every op equally likely): where the search starts."""
        return float(sum(s.mean(axis=1).sum() for s in self._scaled_tables().values()))

    def expected_params(self, arch) -> float:
        """The expected parameter count of all cell edges (un-normalised C(α))."""
        if self.normalization == "global":
            return float(self(arch)) * self.denominator
        return float(sum(jnp.sum(jax.nn.softmax(arch[t], axis=-1) * jnp.asarray(self.tables[t], jnp.float32))
                         for t in CELL_TYPES))


# --- Loss and step ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchHParams:
    """Static settings of the search step (see the module docstring)."""

    order: str = "first"
    second_order_method: str = "unrolled"
    lam: float = 0.0
    temperature: float = 4.0
    mu: float = 0.0
    unroll_momentum: bool = True
    fd_radius: float = 0.01

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}.")
        if self.second_order_method not in SECOND_ORDER_METHODS:
            raise ValueError(f"second_order_method must be one of {SECOND_ORDER_METHODS}, "
                             f"got {self.second_order_method!r}.")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam (the KD weight λ) must lie in [0, 1], got {self.lam}.")
        if self.temperature <= 0 or self.mu < 0:
            raise ValueError(f"temperature must be > 0 and mu >= 0, got {self.temperature}, {self.mu}.")


TeacherFn = Callable[[jax.Array], jax.Array]


def _teacher(batch, prefix: str, teacher_fn: TeacherFn | None, lam: float):
    """(teacher_logits, teacher_probs) for the KD term: stored in the batch, or online."""
    if lam == 0.0:
        return None, None
    if f"{prefix}teacher_probs" in batch:
        return None, batch[f"{prefix}teacher_probs"]
    if f"{prefix}teacher_logits" in batch:
        return batch[f"{prefix}teacher_logits"], None
    if teacher_fn is None:
        raise ValueError(
            f"lam = {lam} > 0 needs teacher outputs: put '{prefix}teacher_logits' (or "
            f"'{prefix}teacher_probs') in the batch, pass teacher_fn, or set lam = 0 for plain DARTS.")
    return jax.lax.stop_gradient(teacher_fn(batch[f"{prefix}image"])), None


def task_loss(logits, labels, teacher_logits, teacher_probs, hp: SearchHParams):
    """(1 − λ)·CE + λ·τ²·KL (``distill.losses``); plain CE when λ = 0."""
    ce = losses.cross_entropy(logits, labels)
    if hp.lam == 0.0:
        return ce, {"ce": ce}
    kd = losses.kd_loss(logits, teacher_logits, teacher_probs=teacher_probs, temperature=hp.temperature)
    return (1.0 - hp.lam) * ce + hp.lam * kd, {"ce": ce, "kd": kd}


class SearchLosses:
    """L_train(w, α) and L_val(w, α) of one batch, in the forms the α gradients need."""

    def __init__(self, state: SearchState, batch, hp: SearchHParams, complexity: Complexity | None,
                 teacher_fn: TeacherFn | None):
        self.state, self.batch, self.hp, self.complexity = state, batch, hp, complexity
        self.train_teacher = _teacher(batch, "", teacher_fn, hp.lam)
        self.val_teacher = _teacher(batch, "val_", teacher_fn, hp.lam)

    def _forward(self, params, arch, images):
        logits, updates = self.state.apply_fn(self.state.variables(params, arch), images, train=True,
                                              mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def train(self, params, arch):
        logits, stats = self._forward(params, arch, self.batch["image"])
        loss, parts = task_loss(logits, self.batch["label"], *self.train_teacher, self.hp)
        return loss, (logits, stats, parts)

    def penalty(self, arch):
        if self.complexity is None or self.hp.mu == 0.0:
            return 0.0
        return self.hp.mu * self.complexity(arch)

    def val(self, params, arch):
        logits, _ = self._forward(params, arch, self.batch["val_image"])
        loss, parts = task_loss(logits, self.batch["val_label"], *self.val_teacher, self.hp)
        return loss + self.penalty(arch), (logits, parts)


def virtual_step(losses_: SearchLosses, params, arch, lr):
    """w'(α) = w − ξ(m·buf + ∇_w L_train(w, α) + wd·w): DARTS's unrolled model."""
    grads = jax.grad(lambda w: losses_.train(w, arch)[0])(params)
    momentum, weight_decay, buf = _sgd_settings(losses_.state)
    if not losses_.hp.unroll_momentum:
        momentum = 0.0
    return jax.tree.map(lambda w, g, b: w - lr * (g + weight_decay * w + momentum * b), params, grads, buf)


def _sgd_settings(state: SearchState):
    """(momentum, weight decay, momentum buffer) of the weight optimiser."""
    if not isinstance(state.w_tx, WeightOptimizer):
        raise ValueError("The second-order step needs the weight optimiser from "
                         "nas.search.make_weight_optimizer (it reads its momentum and weight decay).")
    return state.w_tx.momentum, state.w_tx.weight_decay, state.w_opt_state["momentum"].trace


def mixed_hessian_vector_product(losses_: SearchLosses, params, arch, v):
    """∇²_{α,w} L_train(w, α)·v, exactly.

    Forward over reverse: ``jax.jvp`` of ∇_α L_train along v, one gradient's work with
    tangents riding along, and nothing of the unrolled graph kept.  With the CPU kernels
    (``impl="taps"``: custom VJPs, ``SearchState.forward_mode`` False) it is reverse over
    reverse, ∇_α (∇_w L_train(w, α) · v).
    """
    if losses_.state.forward_mode:
        grad_alpha = jax.grad(lambda w, a: losses_.train(w, a)[0], argnums=1)
        return jax.jvp(lambda w: grad_alpha(w, arch), (params,), (v,))[1]

    def directional(a):
        g = jax.grad(lambda w: losses_.train(w, a)[0])(params)
        return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
    return jax.grad(directional)(arch)


def arch_gradient(state: SearchState, batch, hp: SearchHParams, complexity: Complexity | None = None,
                  teacher_fn: TeacherFn | None = None, lr=None, method: str | None = None):
    """(∇_α, metrics) for the architecture step, first or second order (``hp.order``)."""
    L = SearchLosses(state, batch, hp, complexity, teacher_fn)
    arch, params = state.arch, state.params
    if hp.order == "first":
        (loss, (logits, parts)), grads = jax.value_and_grad(lambda a: L.val(params, a), has_aux=True)(arch)
        return grads, _val_metrics(loss, logits, parts, batch)
    method = method or hp.second_order_method
    if method == "unrolled":
        def unrolled(a):
            return L.val(virtual_step(L, params, a, lr), a)
        (loss, (logits, parts)), grads = jax.value_and_grad(unrolled, has_aux=True)(arch)
        return grads, _val_metrics(loss, logits, parts, batch)
    w_prime = virtual_step(L, params, arch, lr)
    (loss, (logits, parts)), (g_w, g_a) = jax.value_and_grad(L.val, argnums=(0, 1), has_aux=True)(w_prime, arch)
    grad_alpha_train = jax.grad(lambda w, a: L.train(w, a)[0], argnums=1)
    if method == "hvp":
        implicit = mixed_hessian_vector_product(L, params, arch, g_w)
    elif method == "finite_difference":
        eps = hp.fd_radius / optax.tree.norm(g_w)
        plus = grad_alpha_train(jax.tree.map(lambda w, v: w + eps * v, params, g_w), arch)
        minus = grad_alpha_train(jax.tree.map(lambda w, v: w - eps * v, params, g_w), arch)
        implicit = jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus, minus)
    else:
        raise ValueError(f"Unknown second-order method {method!r}; use one of {SECOND_ORDER_METHODS}.")
    grads = jax.tree.map(lambda d, h: d - lr * h, g_a, implicit)
    return grads, _val_metrics(loss, logits, parts, batch)


def _val_metrics(loss, logits, parts, batch):
    out = {"val_loss": loss, "val_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["val_label"])}
    out.update({f"val_{k}": v for k, v in parts.items()})
    return out


def search_step(state: SearchState, batch: Mapping[str, jax.Array], *, hp: SearchHParams,
                complexity: Complexity | None, lr_schedule: Callable, teacher_fn: TeacherFn | None = None,
                update_arch: bool = True):
    """One DARTS iteration: α step on (val_image, val_label), then w step on (image, label).

    ``update_arch=False`` trains the weights only (a warm-up, as in later DARTS variants).
    """
    lr = lr_schedule(state.step)
    metrics = {"lr": lr}
    arch, a_opt_state = state.arch, state.a_opt_state
    if update_arch:
        g_a, val_metrics = arch_gradient(state, batch, hp, complexity, teacher_fn, lr)
        updates, a_opt_state = state.a_tx.update(g_a, state.a_opt_state, state.arch)
        arch = optax.apply_updates(state.arch, updates)
        metrics |= val_metrics | {"arch_grad_norm": optax.tree.norm(g_a)}
    state = state.replace(arch=arch, a_opt_state=a_opt_state)
    L = SearchLosses(state, batch, hp, complexity, teacher_fn)
    (loss, (logits, stats, parts)), g_w = jax.value_and_grad(L.train, has_aux=True)(state.params, arch)
    updates, w_opt_state = state.w_tx.update(g_w, state.w_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics |= {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                "grad_norm": optax.tree.norm(g_w)} | parts
    if complexity is not None:
        metrics["complexity"] = complexity(arch)
    state = state.replace(step=state.step + 1, params=params, batch_stats=stats, w_opt_state=w_opt_state)
    return state, metrics


def eval_step(state: SearchState, batch):
    """Masked sums for ``train.evaluate`` (running BN statistics, as DARTS's ``infer``)."""
    logits = state.apply_fn(state.variables(), batch["image"], train=False)
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(loss * mask), "accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def num_arch_params(arch) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(arch)))
