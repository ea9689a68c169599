"""Distillation losses (SPEC §3.2–§3.4, §4.1–§4.2): pure ``jnp`` functions.

Every function is free of Python side effects on array values, so it works under ``jit``,
``vmap`` and ``grad``. String options (``kind``, ``estimator``, ``method``) and
``num_classes`` select code paths and must be static under ``jit``.

Conventions:

- Batch reductions take an optional ``mask`` of shape (B,): per-example weights, 0 for
  padding rows. The reduction is ``sum(w·l) / max(sum(w), 1)``; rows with w = 0 are
  dropped with ``jnp.where`` (not multiplied), so garbage in padding rows cannot leak
  NaN into the value. Without a mask it is the plain batch mean.
- Losses compute in float32 at least (bfloat16/float16 inputs are promoted; float64
  stays float64 when x64 is on).
- Input checks raise ``ValueError`` naming the problem and the fix. Shape checks always
  run (shapes are static under ``jit``); value checks (σ > 0, τ > 0, 0 ≤ λ ≤ 1) run only
  on concrete inputs and are skipped for tracers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

FEATURE_LOSS_KINDS = ("mse", "cosine")
IB_ESTIMATORS = ("paper", "logmeanexp")
DENSITY_METHODS = ("matmul", "broadcast")

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- helpers


def _concrete(value):
    """The value as a NumPy array, or None for a tracer (value checks are skipped)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _float(x):
    """x as a float array of at least float32 precision."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; use one of {valid}.")


def _check_rank(name, x, ranks, hint):
    """ranks: a tuple of allowed ranks, or an int: the least rank allowed."""
    ndim = jnp.ndim(x)
    ok = ndim >= ranks if isinstance(ranks, int) else ndim in ranks
    if not ok:
        want = (f"at least {ranks}" if isinstance(ranks, int)
                else " or ".join(map(str, ranks)))
        raise ValueError(
            f"{name} must have rank {want}, got shape {tuple(jnp.shape(x))}; {hint}.")


def _check_same_shape(name_a, a, name_b, b):
    if tuple(jnp.shape(a)) != tuple(jnp.shape(b)):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(jnp.shape(a))} "
            f"and {tuple(jnp.shape(b))}; pass one value per example and class/feature.")


def _check_mask(mask, batch):
    if mask is None:
        return None
    if tuple(jnp.shape(mask)) != (batch,):
        raise ValueError(
            f"mask must have shape (B,) = ({batch},), one weight per example (1 = real, "
            f"0 = padding), got shape {tuple(jnp.shape(mask))}.")
    return _float(mask)


def _check_positive_scalar(name, value, hint):
    arr = _concrete(value)
    if arr is None:
        return
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}.")
    if not np.isfinite(arr) or arr <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {arr.item()}; {hint}.")


def masked_mean(per_example: Array, mask: Array | None = None) -> Array:
    """Batch mean of per-example values l (B,): Σ_b w_b l_b / max(Σ_b w_b, 1).

    Rows with w_b = 0 are excluded with ``where`` (their value may be anything, NaN too).
    """
    per_example = _float(per_example)
    if mask is None:
        return jnp.mean(per_example)
    w = _check_mask(mask, per_example.shape[0])
    total = jnp.sum(jnp.where(w != 0, w * per_example, 0.0))
    return total / jnp.maximum(jnp.sum(w), 1.0)


def _check_logits_targets(logits_name, logits, targets_name, targets):
    _check_rank(logits_name, logits, (2,), "pass (B, C) logits, one row per example")
    _check_same_shape(logits_name, logits, targets_name, targets)


# ------------------------------------------------------------------- FDM reconstruction


def topk_sum_tolerance(top_k: int) -> float:
    """How far above 1 the stored top-K mass may be: float16 rounding of K values."""
    return 1e-3 + top_k * 2.0**-11


def check_topk_targets(probs, indices, num_classes: int, where: str = "the top-K targets") -> None:
    """Host-side checks of stored top-K targets (skipped for tracers): class indices in
    [0, C) and distinct per row, probabilities finite, >= 0 and summing to <= 1 (+ float16
    rounding). Out-of-range indices mean a teacher with more classes than the student:
    ``reconstruct_topk`` would silently drop them."""
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive Python int, got {num_classes!r}.")
    k = jnp.shape(probs)[-1] if jnp.ndim(probs) else 0
    if k < 1:
        raise ValueError(f"{where}: top-K size K = {k}; store at least one probability per example (K >= 1).")
    if k > num_classes:
        raise ValueError(
            f"{where}: top-K size K = {k} exceeds num_classes C = {num_classes}; K must be <= C "
            f"(check that num_classes matches the store).")
    p, i = _concrete(probs), _concrete(indices)
    if i is not None:
        i = i.reshape(-1, k).astype(np.int64)
        bad = (i < 0) | (i >= num_classes)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"{where}: class index {int(i[bad][0])} (row {row}) is outside [0, {num_classes}): the "
                f"targets come from a teacher with more classes (max index {int(i.max())}) than this "
                f"student's {num_classes}. Use the store of this dataset's teacher, or set num_classes "
                f"to the teacher's.")
        ordered = np.sort(i, axis=-1)
        dup = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(-1))
        if dup.size:
            raise ValueError(
                f"{where}: row {int(dup[0])} repeats a class index ({i[dup[0]].tolist()}); top-K indices "
                f"are distinct, so the targets are damaged. Recompute them (precompute_logits).")
    if p is not None:
        p = p.reshape(-1, k).astype(np.float64)
        if not np.isfinite(p).all() or (p < 0).any():
            row = int(np.argwhere(~(np.isfinite(p) & (p >= 0)))[0][0])
            raise ValueError(
                f"{where}: probabilities must be finite and >= 0, row {row} holds {p[row].tolist()}; "
                f"the targets are damaged. Recompute them (precompute_logits).")
        total = p.sum(-1)
        over = np.flatnonzero(total > 1 + topk_sum_tolerance(k))
        if over.size:
            raise ValueError(
                f"{where}: the top-{k} probabilities of row {int(over[0])} sum to "
                f"{total[over[0]]:.4f} > 1; they are not softmax probabilities (logits, or "
                f"damaged values). Store softmax(logits / T) (precompute_logits does).")


def reconstruct_topk(probs: Array, indices: Array, num_classes: int) -> Array:
    """Dense distribution from stored top-K probabilities (SPEC §3.2, eq. 6 of B).

    ŷ_n = y_{i(k)} if n = i(k) for some k, else ŷ_n = max(1 − Σ_k y_{i(k)}, 0) / (C − K).

    probs: (..., K) top-K probabilities, any float dtype (float16 from the store).
    indices: (..., K) integer class indices (distinct within a row).
    Returns (..., C) float32. If K == C there is no remainder to spread.
    """
    probs_shape, index_shape = tuple(jnp.shape(probs)), tuple(jnp.shape(indices))
    if probs_shape != index_shape:
        raise ValueError(
            f"probs and indices must have the same shape (B, K), got {probs_shape} and "
            f"{index_shape}; store one index per top-K probability.")
    if len(probs_shape) < 1:
        raise ValueError("probs must have at least one axis (..., K), got a scalar.")
    if not jnp.issubdtype(jnp.asarray(indices).dtype, jnp.integer):
        raise ValueError(
            f"indices must be integers, got dtype {jnp.asarray(indices).dtype}; "
            f"pass the stored class indices (e.g. int16/int32).")
    check_topk_targets(probs, indices, num_classes)
    k = probs_shape[-1]
    probs = jnp.asarray(probs).astype(jnp.float32)
    indices = jnp.asarray(indices).astype(jnp.int32)
    lead = probs_shape[:-1]
    flat_p = probs.reshape(-1, k)
    flat_i = indices.reshape(-1, k)
    if k < num_classes:
        rest = jnp.maximum(1.0 - jnp.sum(flat_p, axis=-1), 0.0) / (num_classes - k)
    else:
        rest = jnp.zeros(flat_p.shape[:1], jnp.float32)
    dense = jnp.broadcast_to(rest[:, None], (flat_p.shape[0], num_classes))
    rows = jnp.arange(flat_p.shape[0])[:, None]
    dense = dense.at[rows, flat_i].set(flat_p)
    return dense.reshape(*lead, num_classes)


# ------------------------------------------------------------------- logit losses


def _xlogx(p):
    """p·log p with 0·log 0 = 0 (and a zero, not NaN, gradient at p = 0)."""
    positive = p > 0
    return jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1.0)), 0.0)


def soft_cross_entropy(logits: Array, target_probs: Array, mask: Array | None = None) -> Array:
    """Soft cross-entropy, batch mean: −(1/B) Σ_b Σ_c p_{b,c} log softmax(z_b)_c.

    logits, target_probs: (B, C). Targets are used as given (not renormalised).
    """
    _check_logits_targets("logits", logits, "target_probs", target_probs)
    log_q = jax.nn.log_softmax(_float(logits), axis=-1)
    per_example = -jnp.sum(_float(target_probs) * log_q, axis=-1)
    return masked_mean(per_example, mask)


def cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Cross-entropy with integer labels, batch mean: −(1/B) Σ_b log softmax(z_b)_{y_b}."""
    _check_rank("logits", logits, (2,), "pass (B, C) logits, one row per example")
    if tuple(jnp.shape(labels)) != tuple(jnp.shape(logits))[:1]:
        raise ValueError(
            f"labels must have shape (B,) = ({jnp.shape(logits)[0]},), got "
            f"{tuple(jnp.shape(labels))}; pass one integer class per example.")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ValueError(
            f"labels must be integer class indices, got dtype {jnp.asarray(labels).dtype}; "
            f"for soft targets use soft_cross_entropy.")
    log_q = jax.nn.log_softmax(_float(logits), axis=-1)
    per_example = -jnp.take_along_axis(log_q, jnp.asarray(labels)[:, None], axis=-1)[:, 0]
    return masked_mean(per_example, mask)


def _teacher_target(student_logits, teacher_logits, teacher_probs, temperature):
    """(p_t, log-free p_t·log p_t) from exactly one of teacher logits / probabilities."""
    if (teacher_logits is None) == (teacher_probs is None):
        raise ValueError(
            "give exactly one of teacher_logits (softened here with the temperature) or "
            "teacher_probs (already softened, e.g. from the FDM store).")
    if teacher_logits is not None:
        _check_logits_targets("student_logits", student_logits, "teacher_logits",
                              teacher_logits)
        log_p = jax.nn.log_softmax(_float(teacher_logits) / temperature, axis=-1)
        p = jnp.exp(log_p)
        return p, p * log_p
    _check_logits_targets("student_logits", student_logits, "teacher_probs", teacher_probs)
    p = _float(teacher_probs)
    return p, _xlogx(p)


def kd_loss(student_logits: Array, teacher_logits: Array | None = None, *,
            teacher_probs: Array | None = None, temperature: float,
            mask: Array | None = None) -> Array:
    """Hinton KD, batch mean: τ² · KL(p_t ‖ softmax(s/τ)), KL(p‖q) = Σ_c p_c (log p_c − log q_c).

    p_t = softmax(t/τ) from ``teacher_logits``, or ``teacher_probs`` used as is (the FDM
    store keeps softmax(t/τ_store); the student is still softened by τ). 0·log 0 = 0, so
    targets may contain exact zeros. Shapes (B, C).
    """
    _check_positive_scalar("temperature", temperature, "Hinton KD uses tau >= 1, e.g. 4")
    p, p_log_p = _teacher_target(student_logits, teacher_logits, teacher_probs, temperature)
    log_q = jax.nn.log_softmax(_float(student_logits) / temperature, axis=-1)
    per_example = jnp.sum(p_log_p - p * log_q, axis=-1)
    return jnp.square(temperature) * masked_mean(per_example, mask)


def kdl_loss(student_logits: Array, labels: Array, teacher_logits: Array | None = None, *,
             teacher_probs: Array | None = None, lam: float, temperature: float,
             mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """KDL loss of A (SPEC §4.1) without the complexity term μ·C(α):

    L = (1 − λ) · CE(y, s) + λ · τ² · KL(softmax(t/τ) ‖ softmax(s/τ)).

    Returns (L, {"ce": CE, "kd": τ²·KL}) (the parts unweighted by λ).
    """
    lam_value = _concrete(lam)
    if lam_value is not None and not (0.0 <= float(lam_value) <= 1.0):
        raise ValueError(f"lam must lie in [0, 1] (the weight of the KD term), got {lam!r}.")
    ce = cross_entropy(student_logits, labels, mask)
    kd = kd_loss(student_logits, teacher_logits, teacher_probs=teacher_probs,
                 temperature=temperature, mask=mask)
    return (1.0 - lam) * ce + lam * kd, {"ce": ce, "kd": kd}


# ------------------------------------------------------------------- feature losses


def feature_loss(pred: Array, target: Array, kind: str = "mse", mask: Array | None = None,
                 eps: float = 1e-8) -> Array:
    """Feature-matching loss (SPEC §4.2), batch mean over examples.

    - ``"mse"``: l_b = mean over tokens and feature dims of (pred − target)².
    - ``"cosine"``: l_b = mean over tokens of 1 − ⟨p, t⟩ / (max(‖p‖, eps) · max(‖t‖, eps))
      (a zero vector gives cosine 0, loss 1, with a finite gradient).

    pred, target: (B, D) or (B, N, D) (tokens); more middle axes are tokens too.
    """
    _check_choice("feature loss kind", kind, FEATURE_LOSS_KINDS)
    _check_rank("pred", pred, 2, "pass (B, D) or (B, N, D) features")
    _check_same_shape("pred", pred, "target", target)
    pred, target = _float(pred), _float(target)
    if kind == "mse":
        per_token = jnp.mean(jnp.square(pred - target), axis=-1)
    else:
        def unit(v):
            sq = jnp.sum(jnp.square(v), axis=-1, keepdims=True)
            return v * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))

        per_token = 1.0 - jnp.sum(unit(pred) * unit(target), axis=-1)
    per_example = per_token.reshape(per_token.shape[0], -1).mean(axis=-1)
    return masked_mean(per_example, mask)


# ------------------------------------------------------------------- IB rate (SPEC §3.4)


def _check_gaussian(x, mu, sigma, ranks, hint):
    _check_rank("x", x, ranks, hint)
    _check_same_shape("x", x, "mu", mu)
    _check_same_shape("x", x, "sigma", sigma)


def _check_sigma_positive(sigma, mask=None):
    arr = _concrete(sigma)
    if arr is None:
        return
    if mask is not None:
        m = _concrete(mask)
        if m is None:
            return
        arr = arr[m != 0]
    if arr.size and not np.all(arr.astype(np.float64) > 0):
        raise ValueError(
            f"sigma must be > 0 everywhere (min {np.nanmin(arr.astype(np.float64))!r}, "
            f"NaN present: {bool(np.isnan(arr.astype(np.float64)).any())}); produce it "
            f"with a positive map such as softplus(.) + 1e-4 or exp(log_sigma).")


def gaussian_log_density_matrix(x: Array, mu: Array, sigma: Array,
                                method: str = "matmul") -> Array:
    """L[n, j] = log N(x_n; μ_j, diag σ_j²) = −½ Σ_d [((x_nd − μ_jd)/σ_jd)² + log σ_jd² + log 2π].

    x, mu, sigma: (N, D). Returns (N, N).

    ``method="matmul"`` (default) expands the quadratic form,
      Σ_d (x_nd − μ_jd)²/σ_jd² = (x²) @ (1/σ²)ᵀ − 2 x @ (μ/σ²)ᵀ + Σ_d μ_jd²/σ_jd²,
    so memory is O(N² + N·D) instead of O(N²·D). To limit cancellation, x and μ are first
    shifted by the batch mean of μ (the density is shift invariant), the matmuls run at
    highest precision (no TF32/bf16 passes), the quadratic form is clipped at ≥ 0, and the
    diagonal (the matched terms log p(x_n | i_n), where x_n ≈ μ_n and cancellation is worst)
    is recomputed directly. ``method="broadcast"`` builds the (N, N, D) tensor (reference).
    """
    _check_choice("method", method, DENSITY_METHODS)
    _check_gaussian(x, mu, sigma, (2,), "pass (N, D) arrays (flatten extra feature axes)")
    _check_sigma_positive(sigma)
    x, mu, sigma = _float(x), _float(mu), _float(sigma)
    return _log_density_matrix(x, mu, sigma, method)


def _log_density_matrix(x, mu, sigma, method):
    dim = x.shape[-1]
    log_var_sum = 2.0 * jnp.sum(jnp.log(sigma), axis=-1)  # (N,) Σ_d log σ_jd²
    if method == "broadcast":
        z = (x[:, None, :] - mu[None, :, :]) / sigma[None, :, :]
        quad = jnp.sum(jnp.square(z), axis=-1)
        return -0.5 * (quad + log_var_sum[None, :] + dim * _LOG_2PI)
    shift = jax.lax.stop_gradient(jnp.mean(mu, axis=0, keepdims=True))
    xs, ms = x - shift, mu - shift
    prec = 1.0 / jnp.square(sigma)  # (N, D)
    hi = jax.lax.Precision.HIGHEST
    quad = (jnp.matmul(jnp.square(xs), prec.T, precision=hi)
            - 2.0 * jnp.matmul(xs, (ms * prec).T, precision=hi)
            + jnp.sum(jnp.square(ms) * prec, axis=-1)[None, :])
    quad = jnp.maximum(quad, 0.0)
    diag_quad = jnp.sum(jnp.square((x - mu) / sigma), axis=-1)
    eye = jnp.eye(x.shape[0], dtype=bool)
    quad = jnp.where(eye, diag_quad[:, None], quad)
    return -0.5 * (quad + log_var_sum[None, :] + dim * _LOG_2PI)


def ib_rate_upper_bound(x: Array, mu: Array, sigma: Array, mask: Array | None = None,
                        estimator: str = "paper", method: str = "matmul") -> Array:
    """Sampled estimate of the rate I(I; X) for the encoder p(x | i) = N(μ(i), diag σ²(i)).

    x: (N, ..., D) samples x_n ~ p(· | i_n) (reparameterised); mu, sigma: same shape.
    Extra axes are flattened to (N, D'). With L[n, j] = log p(x_n | i_j):

    ``estimator="paper"`` (SPEC eq. 10 of B, literally):
        Î = (1/N) Σ_n L[n, n] − (1/N²) Σ_n Σ_j L[n, j].
      This is CLUB (Cheng et al., 2020, "a contrastive log-ratio upper bound") with the
      j = n terms kept in the double sum; as those terms are L[n, n] − L[n, n] = 0, it is
      exactly (N−1)/N times the j ≠ n CLUB estimate, on every draw. Given μ, σ its
      expectation over the noise is (1/N²) Σ_n Σ_j KL(p(·|i_n) ‖ p(·|i_j)) ≥ 0; over the
      data, the j ≠ n CLUB value has expectation E_{i,i'} KL(p(·|i) ‖ p(·|i')) ≥ I(I; X)
      (a true upper bound in expectation), so the paper's form is (N−1)/N of an upper
      bound. It is ≥ 0 only in expectation (a single draw can be negative) and is not
      bounded by log N; for a shared σ its mean grows like 1/σ² and its spread like 1/σ.

    ``estimator="logmeanexp"``:
        Î = (1/N) Σ_n [L[n, n] − log((1/N) Σ_j exp L[n, j])]   (via logsumexp).
      By Jensen (log of a mean ≥ mean of logs, row by row) it is ≤ the paper's value on
      every draw, and Î ≤ log N on every draw (the j = n term alone gives
      (1/N) Σ_j p(x_n|i_j) ≥ p(x_n|i_n)/N); a single draw can still be negative. With
      the j = n term included this is the InfoNCE estimator with the true conditional as
      critic, whose expectation is a *lower* bound on I(I; X) (van den Oord et al., 2018;
      Poole et al., 2019), not an upper bound: lower variance and never above log N, but
      it saturates at log N and can under-state the rate. (Leaving j = n out and dividing
      by N − 1 — Poole et al.'s "leave-one-out" bound — would be an upper bound in
      expectation.)

    Both are exactly 0 when the features do not depend on the input (all μ_j, σ_j equal:
    every row of L is constant).

    Both are computed from the log-ratios L[n, j] − L[n, n] (the paper's form equals
    −(1/N²) Σ_n Σ_j (L[n, j] − L[n, n])), so large per-row constants cancel first.

    mask (N,) weights: rows and columns with weight 0 are left out entirely (their inputs
    are replaced by safe values before use, so padding may hold anything). With weights,
    the paper's form is −Σ_n Σ_j w_n w_j (L[n, j] − L[n, n]) / W², the logmeanexp form
    Σ_n w_n [L[n, n] − log(Σ_j w_j p(x_n | i_j) / Σ_j w_j)] / W, with W = max(Σ w, 1)
    (for 0/1 masks: exactly the unmasked value on the kept rows).
    """
    _check_choice("estimator", estimator, IB_ESTIMATORS)
    _check_choice("method", method, DENSITY_METHODS)
    _check_gaussian(x, mu, sigma, 2,
                    "pass (N, D) or (N, ..., D) features, one row per example")
    batch = jnp.shape(x)[0]
    w = _check_mask(mask, batch)
    _check_sigma_positive(sigma, mask)
    x, mu, sigma = (_float(v).reshape(batch, -1) for v in (x, mu, sigma))
    if w is None:
        w = jnp.ones((batch,), x.dtype)
    valid = w != 0
    # Double-where: padding rows get harmless values, so neither the value nor the
    # gradient can pick up NaN/inf from them.
    x = jnp.where(valid[:, None], x, 0.0)
    mu = jnp.where(valid[:, None], mu, 0.0)
    sigma = jnp.where(valid[:, None], sigma, 1.0)
    logp = _log_density_matrix(x, mu, sigma, method)  # (N, N)
    # Work with log-ratios to the matched term, log p(x_n|i_j) − log p(x_n|i_n): the large
    # common parts of each row cancel before any sum (|L| can reach 1e6 for small σ, where
    # float32 rounding of separate sums would be O(0.1)).
    log_ratio = logp - jnp.diagonal(logp)[:, None]
    w = jnp.where(valid, w, 0.0)
    total = jnp.maximum(jnp.sum(w), 1.0)
    if estimator == "paper":
        return -jnp.sum(w[:, None] * w[None, :] * log_ratio) / jnp.square(total)
    # Valid rows mix over valid columns; padding rows mix over everything (finite, unused).
    b = jnp.where(valid[:, None], w[None, :], 1.0)
    log_mix = jax.nn.logsumexp(log_ratio, axis=-1, b=b) - jnp.log(jnp.sum(b, axis=-1))
    per_example = jnp.where(valid, -log_mix, 0.0)
    return jnp.sum(w * per_example) / total


def ib_loss(x: Array, mu: Array, sigma: Array, logits: Array, target_probs: Array, *,
            beta: float, mask: Array | None = None, estimator: str = "paper",
            method: str = "matmul") -> tuple[Array, dict[str, Array]]:
    """Information-bottleneck distillation loss (SPEC §3.4, eq. 13 of B):

    L = Î_up(x; μ, σ) + β · soft-CE(ŷ, q(· | x')),
    soft-CE = −(1/N) Σ_n Σ_c ŷ_{n,c} log softmax(logits_n)_c, ŷ = the teacher's (stored)
    probabilities. Returns (L, {"rate": Î_up, "distortion": soft-CE}).
    """
    beta_value = _concrete(beta)
    if beta_value is not None and (beta_value.ndim != 0 or not np.isfinite(beta_value)
                                   or beta_value < 0):
        raise ValueError(f"beta must be a finite scalar >= 0, got {beta!r}.")
    if jnp.shape(logits)[:1] != jnp.shape(x)[:1]:
        raise ValueError(
            f"logits and x must share the batch axis, got {tuple(jnp.shape(logits))} and "
            f"{tuple(jnp.shape(x))}.")
    rate = ib_rate_upper_bound(x, mu, sigma, mask=mask, estimator=estimator, method=method)
    distortion = soft_cross_entropy(logits, target_probs, mask=mask)
    return rate + beta * distortion, {"rate": rate, "distortion": distortion}
