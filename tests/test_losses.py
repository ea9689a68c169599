"""Tests of rkdsc_jax.distill.losses against hand values, NumPy/SciPy references and theory."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

from rkdsc_jax.distill import losses

ESTIMATORS = ("paper", "logmeanexp")


N, D = 16, 2  # one batch shape for most rate tests: each new shape is a new compilation


def _rates_impl(x, mu, sigma):
    return {e: losses.ib_rate_upper_bound(x, mu, sigma, estimator=e) for e in ESTIMATORS}


_rates = jax.jit(_rates_impl)  # both estimators, one compiled call
_rates_many = jax.jit(jax.vmap(_rates_impl))  # over a leading axis of independent batches

# Value tests call the losses through jit: one compilation per call signature instead of
# one per primitive (eager dispatch), and it checks that they trace. The error tests call
# them eagerly, where the value checks run.
soft_ce = jax.jit(losses.soft_cross_entropy)
cross_entropy = jax.jit(losses.cross_entropy)
kd = jax.jit(losses.kd_loss)  # temperature traced
kdl = jax.jit(losses.kdl_loss)  # lam, temperature traced
feature = jax.jit(losses.feature_loss, static_argnames="kind")
density = jax.jit(losses.gaussian_log_density_matrix, static_argnames="method")


def _np_kl(p, log_q):
    """Σ_c p_c (log p_c − log q_c) per row in float64, with 0·log 0 = 0."""
    p = np.asarray(p, np.float64)
    return np.sum(special.xlogy(p, p) - p * log_q, axis=-1)


def _np_log_density_matrix(x, mu, sigma):
    x, mu, sigma = (np.asarray(v, np.float64) for v in (x, mu, sigma))
    z = (x[:, None, :] - mu[None, :, :]) / sigma[None, :, :]
    return -0.5 * np.sum(z**2 + np.log(2 * np.pi * sigma[None, :, :] ** 2), axis=-1)


# ----------------------------------------------------------------------------- top-K


def test_reconstruct_topk_hand_case():
    # Row 2 sums to 1 + float16 rounding (> 1 by 5e-4): no remainder, not refused.
    probs = np.array([[0.5, 0.2], [0.6, 0.4005]], np.float16)
    indices = np.array([[3, 0], [1, 4]], np.int16)
    out = losses.reconstruct_topk(probs, indices, num_classes=5)
    assert out.dtype == jnp.float32
    expected = np.array([[0.2, 0.1, 0.1, 0.5, 0.1],
                         [0.0, 0.6, 0.0, 0.0, 0.4005]])
    np.testing.assert_allclose(out, expected, atol=1e-3)  # float16 storage of 0.7, 0.2 ...
    np.testing.assert_allclose(out[0].sum(), 1.0, atol=1e-6)


def test_reconstruct_topk_sums_to_one_and_full_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 20))
    p = special.softmax(logits, axis=-1)
    idx = np.argsort(-p, axis=-1)[:, :4]
    top = np.take_along_axis(p, idx, axis=-1)
    out = jax.jit(losses.reconstruct_topk, static_argnums=2)(top, idx, 20)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(np.asarray(out), idx, -1), top, rtol=1e-6)
    rest = (1 - top.sum(-1)) / 16
    mask = np.ones_like(p, bool)
    np.put_along_axis(mask, idx, False, -1)
    np.testing.assert_allclose(np.asarray(out)[mask].reshape(6, 16), np.repeat(rest[:, None], 16, 1),
                               rtol=1e-5)
    # K == C: a permutation of the full distribution comes back exactly, nothing spread.
    perm = np.stack([rng.permutation(5) for _ in range(3)])
    full = special.softmax(rng.normal(size=(3, 5)), -1).astype(np.float32)
    out_full = losses.reconstruct_topk(np.take_along_axis(full, perm, -1), perm, 5)
    np.testing.assert_allclose(out_full, full, rtol=1e-6)


def test_reconstruct_topk_errors():
    with pytest.raises(ValueError, match="same shape"):
        losses.reconstruct_topk(np.zeros((2, 3)), np.zeros((2, 2), np.int32), 5)
    with pytest.raises(ValueError, match="exceeds num_classes"):
        losses.reconstruct_topk(np.zeros((2, 6)), np.zeros((2, 6), np.int32), 5)
    with pytest.raises(ValueError, match="integers"):
        losses.reconstruct_topk(np.zeros((2, 2)), np.zeros((2, 2)), 5)


# ----------------------------------------------------------------------------- CE / KD


def test_soft_ce_one_hot_equals_integer_ce():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=7)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    got = soft_ce(logits, jax.nn.one_hot(labels, 10))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, labels), ref, rtol=1e-6)
    # A soft target against the NumPy definition.
    p = special.softmax(rng.normal(size=(7, 10)), -1)
    np.testing.assert_allclose(soft_ce(logits, p),
                               -(p * special.log_softmax(logits.astype(np.float64), -1)).sum(-1).mean(),
                               rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_loss_matches_numpy_kl(tau):
    rng = np.random.default_rng(2)
    s = rng.normal(size=(5, 8)) * 2
    t = rng.normal(size=(5, 8)) * 2
    ref = tau**2 * _np_kl(special.softmax(t / tau, -1), special.log_softmax(s / tau, -1)).mean()
    got = kd(s.astype(np.float32), t.astype(np.float32), temperature=tau)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # Teacher probabilities given directly (e.g. stored softmax(t/τ)) give the same value.
    got_p = kd(s.astype(np.float32), teacher_probs=special.softmax(t / tau, -1),
               temperature=tau)
    np.testing.assert_allclose(got_p, ref, rtol=1e-5)
    # Student == teacher → 0.
    np.testing.assert_allclose(kd(s, s, temperature=tau), 0.0, atol=1e-6)


def test_kd_loss_tau_squared_scaling():
    # softmax((τ·s)/τ) = softmax(s): kd(τs, τt; τ) = τ² · kd(s, t; 1).
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 4, 6)).astype(np.float32)
    base = kd(s, t, temperature=1.0)
    for tau in (2.0, 5.0):
        np.testing.assert_allclose(kd(tau * s, tau * t, temperature=tau),
                                   tau**2 * base, rtol=1e-5)


def test_kd_loss_targets_with_exact_zeros():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(3, 5)).astype(np.float32)
    p = np.array([[1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2]], np.float16)
    ref = 9.0 * _np_kl(p, special.log_softmax(s.astype(np.float64) / 3.0, -1)).mean()
    got = kd(s, teacher_probs=p, temperature=3.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    g = jax.grad(lambda q: kd(s, teacher_probs=q, temperature=3.0))(
        jnp.asarray(p, jnp.float32))
    assert np.all(np.isfinite(g))


def test_kd_loss_errors():
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        losses.kd_loss(s, temperature=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        losses.kd_loss(s, s, teacher_probs=s, temperature=1.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.kd_loss(s, np.zeros((2, 4)), temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_loss(s, s, temperature=0.0)


def test_kdl_loss_limits_and_mix():
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(2, 6, 10)).astype(np.float32)
    y = rng.integers(0, 10, size=6)
    ce_ref = optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    kd_ref = 16 * _np_kl(special.softmax(t / 4.0, -1), special.log_softmax(s / 4.0, -1)).mean()
    l0, parts = kdl(s, y, t, lam=0.0, temperature=4.0)
    np.testing.assert_allclose(l0, ce_ref, rtol=1e-5)
    np.testing.assert_allclose(parts["ce"], ce_ref, rtol=1e-5)
    np.testing.assert_allclose(parts["kd"], kd_ref, rtol=1e-5)
    l1, _ = kdl(s, y, t, lam=1.0, temperature=4.0)
    np.testing.assert_allclose(l1, kd_ref, rtol=1e-5)
    l3, _ = kdl(s, y, teacher_probs=special.softmax(t / 4.0, -1), lam=0.3,
                 temperature=4.0)
    np.testing.assert_allclose(l3, 0.7 * ce_ref + 0.3 * kd_ref, rtol=1e-5)
    with pytest.raises(ValueError, match="lam"):
        losses.kdl_loss(s, y, t, lam=1.5, temperature=4.0)
    with pytest.raises(ValueError, match="labels"):
        losses.kdl_loss(s, y[:3], t, lam=0.5, temperature=4.0)


# ----------------------------------------------------------------------------- features


def test_feature_loss_hand_cases():
    pred = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(feature(pred, np.zeros((2, 2))), (0.5 + 2.0) / 2)
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = np.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # cos = 1, 0, −1 → 1 − cos = 0, 1, 2 → mean 1.
    np.testing.assert_allclose(feature(a, b, kind="cosine"), 1.0, atol=1e-6)
    # Tokens: (B=1, N=2, D=2) — per-token values averaged: mse (1/2 + 4/2)/2, cosine (0+1)/2.
    p3 = np.array([[[1.0, 1.0], [1.0, 0.0]]])
    t3 = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(feature(p3, t3), (0.5 + 1.0) / 2)
    np.testing.assert_allclose(feature(p3, t3, kind="cosine"),
                               ((1 - 1 / math.sqrt(2)) + 1.0) / 2, rtol=1e-6)


def test_feature_loss_zero_vector_and_errors():
    z = jnp.zeros((2, 3))
    t = jnp.ones((2, 3))
    np.testing.assert_allclose(feature(z, t, kind="cosine"), 1.0)
    g = jax.grad(lambda p: feature(p, t, kind="cosine"))(z)
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="unknown feature loss kind"):
        losses.feature_loss(z, t, kind="l1")
    with pytest.raises(ValueError, match="same shape"):
        losses.feature_loss(z, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="rank"):
        losses.feature_loss(jnp.zeros(3), jnp.zeros(3))


# ----------------------------------------------------------------------------- IB rate


def test_density_matrix_matches_scipy():
    rng = np.random.default_rng(6)
    n, d = 4, 3
    x, mu = rng.normal(size=(2, n, d))
    sigma = rng.uniform(0.3, 2.0, size=(n, d))
    ref = np.array([[stats.multivariate_normal(mu[j], np.diag(sigma[j] ** 2)).logpdf(x[i])
                     for j in range(n)] for i in range(n)])
    for method in losses.DENSITY_METHODS:
        got = density(x, mu, sigma, method=method)
        chex.assert_shape(got, (n, n))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_density_matrix_memory_light_matches_broadcast():
    # Hard case for the expanded quadratic form: offset features and small σ.
    rng = np.random.default_rng(7)
    n, d = 48, 64
    mu = (rng.normal(size=(n, d)) + 20.0).astype(np.float32)
    sigma = (0.02 * rng.uniform(0.5, 2.0, size=(n, d))).astype(np.float32)
    x = (mu + sigma * rng.normal(size=(n, d))).astype(np.float32)
    light = np.asarray(density(x, mu, sigma))
    bcast = np.asarray(density(x, mu, sigma, method="broadcast"))
    ref = _np_log_density_matrix(x, mu, sigma)  # float64 on the same float32 inputs
    # Matched terms are O(100) here, off-diagonal ones O(1e5); both in float32.
    np.testing.assert_allclose(np.diag(light), np.diag(ref), rtol=1e-5)
    np.testing.assert_allclose(light, ref, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(light, bcast, rtol=1e-5, atol=1e-2)


def test_rate_zero_when_features_ignore_input():
    rng = np.random.default_rng(8)
    mu = np.broadcast_to(rng.normal(size=(1, D)), (N, D))
    sigma = np.broadcast_to(rng.uniform(0.2, 1.0, size=(1, D)), (N, D))
    x = mu + sigma * rng.normal(size=(N, D))  # every row of L is constant
    for est, rate in _rates(x, mu, sigma).items():
        np.testing.assert_allclose(rate, 0.0, atol=1e-4, err_msg=est)


def test_rate_grows_as_sigma_shrinks():
    rng = np.random.default_rng(9)
    mu = rng.normal(size=(N, D))  # depends on the input
    eps = rng.normal(size=(N, D))
    rates = [_rates(mu + s * eps, mu, np.full((N, D), s)) for s in (1.0, 0.3, 0.1)]
    for est in ESTIMATORS:
        r = [float(v[est]) for v in rates]
        assert 0 < r[0] < r[1] < r[2], (est, r)


def test_logmeanexp_bounded_by_log_n_and_below_paper():
    rng = np.random.default_rng(10)
    cases = []
    for s in (1.0, 1e-3, 0.05, 10.0):
        mu = rng.normal(size=(N, D)) * 3
        sigma = s * rng.uniform(0.5, 1.5, size=(N, D))
        cases.append((mu + sigma * rng.normal(size=(N, D)), mu, sigma))
        # A misfit (x far from its own μ; |L| ~ 1e6 for σ = 1e-3, a float32 stress test).
        cases.append((mu + sigma * rng.normal(size=(N, D)) + rng.normal(size=(N, D)), mu, sigma))
    for x, mu, sigma in cases:
        r = _rates(x.astype(np.float32), mu.astype(np.float32), sigma.astype(np.float32))
        lme, paper = float(r["logmeanexp"]), float(r["paper"])
        assert lme <= math.log(N) + 1e-5, lme
        assert lme <= paper + 1e-5 * max(1.0, abs(paper)), (lme, paper)  # Jensen
    # Well-separated inputs: logmeanexp saturates at exactly log N.
    mu = np.arange(N)[:, None] * np.full((N, D), 100.0)
    np.testing.assert_allclose(_rates(mu, mu, np.ones((N, D)))["logmeanexp"], math.log(N),
                               rtol=1e-6)


def test_paper_estimator_can_be_negative_on_a_draw():
    # N = 2, D = 1, σ = 1, μ = (0, 1), x = (0.9, 0.1): L = −½ (x − μ)² − ½ log 2π,
    # Î = ½(−0.405 − 0.405) − ¼(−0.405 − 0.005 − 0.005 − 0.405) = −0.2.
    x = np.array([[0.9], [0.1]])
    mu = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(_rates(x, mu, np.ones((2, 1)))["paper"], -0.2, atol=1e-6)


def test_paper_estimator_expectation_is_mean_pairwise_kl():
    # Given μ, σ: E_noise[Î_paper] = (1/N²) Σ_n Σ_j KL(N(μ_n, σ_n²) ‖ N(μ_j, σ_j²)).
    rng = np.random.default_rng(11)
    mu = rng.normal(size=(N, D))
    sigma = rng.uniform(0.5, 1.5, size=(N, D))
    s_n, s_j = sigma[:, None], sigma[None]
    kl = np.sum(np.log(s_j / s_n) + (s_n**2 + (mu[:, None] - mu[None]) ** 2) / (2 * s_j**2)
                - 0.5, axis=-1)
    m = 4000
    x = mu + sigma * rng.normal(size=(m, N, D))
    vals = np.asarray(_rates_many(x.astype(np.float32), *(
        np.broadcast_to(v, (m, N, D)).astype(np.float32) for v in (mu, sigma)))["paper"])
    stderr = vals.std() / math.sqrt(m)
    assert abs(vals.mean() - kl.mean()) < 4 * stderr, (vals.mean(), kl.mean(), stderr)
    assert stderr < 0.02 * kl.mean()  # the check above is a sharp one


def test_estimators_bracket_true_mutual_information():
    # Input i ~ N(0, I_D), encoder x = i + σ ε: I(I; X) = (D/2) log(1 + 1/σ²) nats.
    # E[paper] = (1 − 1/N) · E KL = (1 − 1/N) D/σ² ≥ I;  E[logmeanexp] (InfoNCE) ≤ I.
    sig, m = 0.5, 4000
    true_mi = 0.5 * D * math.log(1 + 1 / sig**2)
    rng = np.random.default_rng(12)
    i = rng.normal(size=(m, N, D)).astype(np.float32)
    x = (i + sig * rng.normal(size=(m, N, D))).astype(np.float32)
    r = _rates_many(x, i, np.full((m, N, D), sig, np.float32))
    paper, lme = np.asarray(r["paper"]), np.asarray(r["logmeanexp"])
    se_p, se_l = paper.std() / math.sqrt(m), lme.std() / math.sqrt(m)
    assert abs(paper.mean() - (1 - 1 / N) * D / sig**2) < 4 * se_p, (paper.mean(), se_p)
    assert paper.mean() > true_mi
    assert lme.mean() < true_mi - 4 * se_l, (lme.mean(), true_mi, se_l)


def test_rate_flattens_extra_axes():
    rng = np.random.default_rng(13)
    x, mu = rng.normal(size=(2, N, 1, D))
    sigma = rng.uniform(0.5, 1.0, size=(N, 1, D))
    got = _rates(x, mu, sigma)
    flat = _rates(x.reshape(N, D), mu.reshape(N, D), sigma.reshape(N, D))
    for est in ESTIMATORS:
        np.testing.assert_allclose(got[est], flat[est], rtol=1e-5, err_msg=est)


def test_rate_errors():
    z = np.ones((4, 3))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        losses.ib_rate_upper_bound(z, z, z * 0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        losses.gaussian_log_density_matrix(z, z, -z)
    with pytest.raises(ValueError, match="same shape"):
        losses.ib_rate_upper_bound(z, z, np.ones((4, 2)))
    with pytest.raises(ValueError, match="rank"):
        losses.ib_rate_upper_bound(np.ones(4), np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="rank"):
        losses.gaussian_log_density_matrix(np.ones((2, 4, 3)), np.ones((2, 4, 3)),
                                           np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="unknown estimator"):
        losses.ib_rate_upper_bound(z, z, z, estimator="club")
    with pytest.raises(ValueError, match="mask"):
        losses.ib_rate_upper_bound(z, z, z, mask=np.ones(3))


def test_ib_loss_combines_rate_and_distortion():
    rng = np.random.default_rng(13)
    x, mu = rng.normal(size=(2, N, D))
    sigma = rng.uniform(0.5, 1.0, size=(N, D))
    logits = rng.normal(size=(N, 5)).astype(np.float32)
    target = special.softmax(rng.normal(size=(N, 5)), -1)
    ce = -(target * special.log_softmax(logits.astype(np.float64), -1)).sum(-1).mean()
    rates = _rates(x, mu, sigma)
    both = jax.jit(lambda *a: {e: losses.ib_loss(*a, beta=0.5, estimator=e) for e in ESTIMATORS})
    for est, (loss, parts) in both(x, mu, sigma, logits, target).items():
        np.testing.assert_allclose(parts["rate"], rates[est], rtol=1e-6)
        np.testing.assert_allclose(parts["distortion"], ce, rtol=1e-5)
        np.testing.assert_allclose(loss, rates[est] + 0.5 * ce, rtol=1e-5)


# ----------------------------------------------------------------------------- jit / grad / mask


def _batch(rng, b=6, c=7, d=4):
    return dict(
        s=rng.normal(size=(b, c)).astype(np.float32),
        t=rng.normal(size=(b, c)).astype(np.float32),
        y=rng.integers(0, c, size=b).astype(np.int32),
        p=special.softmax(rng.normal(size=(b, c)), -1).astype(np.float32),
        f=rng.normal(size=(b, 3, d)).astype(np.float32),
        g=rng.normal(size=(b, 3, d)).astype(np.float32),
        x=rng.normal(size=(b, d)).astype(np.float32),
        mu=rng.normal(size=(b, d)).astype(np.float32),
        sigma=rng.uniform(0.3, 1.0, size=(b, d)).astype(np.float32),
    )


@jax.jit
def _all_losses(v, mask=None):
    out = {
        "soft_ce": losses.soft_cross_entropy(v["s"], v["p"], mask),
        "kd": losses.kd_loss(v["s"], v["t"], temperature=2.0, mask=mask),
        "kd_probs": losses.kd_loss(v["s"], teacher_probs=v["p"], temperature=2.0, mask=mask),
        "kdl": losses.kdl_loss(v["s"], v["y"], v["t"], lam=0.4, temperature=2.0, mask=mask)[0],
        "mse": losses.feature_loss(v["f"], v["g"], mask=mask),
        "cos": losses.feature_loss(v["f"], v["g"], kind="cosine", mask=mask),
    }
    for est in ESTIMATORS:
        out["ib_" + est] = losses.ib_loss(v["x"], v["mu"], v["sigma"], v["s"], v["p"], beta=0.3,
                                          mask=mask, estimator=est)[0]
    return out


def _padded(seed):
    """(real batch of 5, the same padded to 8 with garbage rows (σ = 0), the 8-row mask)."""
    rng = np.random.default_rng(seed)
    real = _batch(rng, b=5)
    pad = _batch(rng, b=3)
    pad["f"] = pad["f"] * 1e3
    pad["sigma"] = np.zeros_like(pad["sigma"])  # zero padding: σ = 0 must not matter
    padded = {k: np.concatenate([real[k], pad[k]]) for k in real}
    return real, padded, np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)


def test_mask_excludes_padding_rows():
    real, padded, mask = _padded(14)
    ref = _all_losses(real)
    # Padding rows in the middle, rows permuted (every loss is permutation invariant).
    order = np.array([0, 5, 1, 2, 6, 3, 4, 7])
    got = _all_losses({k: v[order] for k, v in padded.items()}, mask[order])
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_all_masked_batch_is_zero():
    _, padded, _ = _padded(16)
    got = _all_losses(padded, np.zeros(8, np.float32))
    for name, val in got.items():
        np.testing.assert_allclose(val, 0.0, atol=0, err_msg=name)


def test_gradients_finite_under_jit():
    _, padded, mask = _padded(15)
    padded["p"][0, :3] = 0.0  # exact zeros in a target
    floats = ("s", "t", "p", "f", "g", "x", "mu", "sigma")
    params = {k: jnp.asarray(padded[k]) for k in floats}

    @jax.jit
    def grads(prm):
        # A NaN/inf gradient of any one loss would show up in the gradient of the sum;
        # the rate terms also on their own, to see where their gradient goes.
        total = lambda q: sum(_all_losses({**padded, **q}, mask).values())
        rate = lambda q, e: losses.ib_rate_upper_bound(q["x"], q["mu"], q["sigma"], mask,
                                                       estimator=e)
        return jax.grad(total)(prm), {e: jax.grad(rate)(prm, e) for e in ESTIMATORS}

    g_total, g_rate = grads(params)
    for k, arr in g_total.items():
        assert np.all(np.isfinite(arr)), k
    # The rate sends no gradient to padding rows, and sends some to real ones.
    for est, g in g_rate.items():
        for k in ("x", "mu", "sigma"):
            assert np.all(np.isfinite(g[k])), (est, k)
            np.testing.assert_array_equal(g[k][5:], 0.0)
            assert np.any(g[k][:5] != 0), (est, k)
