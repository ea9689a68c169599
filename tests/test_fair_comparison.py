"""Issue 19's library pieces: claim statistics and verdicts, the equal-bandwidth teacher
baseline, and a complexity penalty that can steer the search.

All cheap: hand-computed statistics, a toy linear "teacher" on synthetic features, and the
smallest supernet of tests/test_nas.py (compiled once, module scope).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rkdsc_jax import channels, stats
from rkdsc_jax.distill import bandwidth
from rkdsc_jax.nas import search, search_space


# --- statistics --------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 2.5, 120])
@pytest.mark.parametrize("p", [0.975, 0.025, 0.9, 0.995])
def test_t_quantile_matches_scipy(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-9, abs=1e-9)


def test_mean_ci_by_hand():
    # [1, 2, 3]: mean 2, sd 1, t_{0.975, 2} = 4.302652729749464 → 2 ± 4.3027/√3.
    e = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (e.mean, e.n, e.sd, e.df) == (2.0, 3, 1.0, 2)
    assert e.low == pytest.approx(2 - half, rel=1e-9) and e.high == pytest.approx(2 + half, rel=1e-9)
    one = stats.mean_ci([0.8])
    assert one.mean == 0.8 and not one.has_ci and math.isnan(one.low)


def test_paired_difference_uses_the_per_seed_differences():
    a = {0: 80.0, 1: 82.0, 2: 81.0}
    b = {2: 79.5, 0: 78.0, 1: 80.5}  # Order does not matter: paired by seed.
    e = stats.difference(a, b)
    d = np.array([2.0, 1.5, 1.5])
    half = scipy.stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert e.method == "paired" and e.mean == pytest.approx(d.mean())
    assert (e.low, e.high) == pytest.approx((d.mean() - half, d.mean() + half))
    # Pairing removes the shared seed-to-seed spread: much narrower than Welch.
    assert e.half_width < stats.welch_difference(list(a.values()), list(b.values())).half_width


def test_welch_difference_matches_scipy():
    a, b = [70.1, 72.3, 71.0, 69.8], [68.0, 71.5, 66.2]
    e = stats.difference({0: a[0], 1: a[1], 2: a[2], 3: a[3]}, {5: b[0], 6: b[1], 7: b[2]})
    ref = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert e.method == "welch" and (e.low, e.high) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_ratio_to_one_teacher_and_paired():
    e = stats.ratio([0.84, 0.86, 0.85], 0.9)
    ref = stats.mean_ci(np.array([0.84, 0.86, 0.85]) / 0.9)
    assert (e.mean, e.low, e.high) == pytest.approx((ref.mean, ref.low, ref.high))
    paired = stats.ratio({0: 0.8, 1: 0.9}, {0: 1.0, 1: 1.0})
    assert paired.mean == pytest.approx(0.85) and paired.method == "ratio-paired"


CLAIM = stats.Claim("KD beats no-KD at 0 dB", "difference", ">=", 0.0, paper_value=1.3, unit="points",
                    protocol="3 seeds, 10k test images, 16 symbols")


@pytest.mark.parametrize("a, b, expected", [
    ({0: 81.0, 1: 82.0, 2: 81.5}, {0: 79.0, 1: 80.1, 2: 79.4}, "reproduced"),  # CI ⊂ (0, ∞)
    ({0: 77.0, 1: 78.0, 2: 77.5}, {0: 79.0, 1: 80.1, 2: 79.4}, "not reproduced"),  # CI ⊂ (−∞, 0)
    ({0: 80.0, 1: 79.0, 2: 81.0}, {0: 79.5, 1: 80.0, 2: 80.0}, "inconclusive"),  # CI straddles 0
    ({0: 90.0}, {0: 10.0}, "inconclusive"),  # One seed: no CI.
], ids=["whole-CI-supports", "whole-CI-contradicts", "CI-straddles", "one-seed"])
def test_verdicts(a, b, expected):
    v = stats.evaluate_claim(CLAIM, a, b)
    assert v.verdict == expected
    assert v.effect == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))


def test_verdict_for_at_most_claims_and_thresholds():
    smaller = stats.Claim("KDL-DARTS cells smaller than DARTS", "ratio", "<=", 1.0)
    assert stats.evaluate_claim(smaller, {0: 1.18, 1: 1.2, 2: 1.17}, {0: 1, 1: 1, 2: 1}).verdict == "not reproduced"
    assert stats.evaluate_claim(smaller, [0.7, 0.72, 0.71], 1.0).verdict == "reproduced"
    keeps = stats.Claim("keeps ≥ 95.86 % of the teacher", "ratio", ">=", 0.9586, paper_value=0.9586)
    v = stats.evaluate_claim(keeps, [0.85, 0.86, 0.84], 1.0)
    assert v.verdict == "not reproduced" and v.margin == pytest.approx(0.85 - 0.9586)
    by_x = stats.Claim("beats by ≥ 6.6 points", "difference", ">=", 6.6)
    assert stats.evaluate_claim(by_x, [8.0, 8.2, 7.9], [0.0, 0.1, 0.0]).verdict == "reproduced"
    assert stats.evaluate_claim(by_x, [3.0, 3.2, 2.9], [0.0, 0.1, 0.0]).verdict == "not reproduced"


def test_claim_row_markdown():
    v = stats.evaluate_claim(CLAIM, {0: 81.0, 1: 82.0, 2: 81.5}, {0: 79.0, 1: 80.1, 2: 79.4})
    row = stats.claim_row(v)
    assert row.startswith("| KD beats no-KD at 0 dB | 1.3 points | 2.00 ± ")
    assert "| A − B ≥ 0 points | **reproduced** | 3 | 3 seeds, 10k test images, 16 symbols |" in row
    table = stats.claim_table([v])
    assert table.splitlines()[0].count("|") == table.splitlines()[2].count("|")


@pytest.mark.parametrize("call, message", [
    (lambda: stats.mean_ci([]), "values is empty; pass one value per seed"),
    (lambda: stats.mean_ci([1.0, float("nan")]), "values contains nan at index 1; pass finite"),
    (lambda: stats.paired_difference([1, 2], [1, 2, 3]), "one value per shared seed.*welch_difference"),
    (lambda: stats.ratio([1.0], 0.0), "non-zero denominator"),
    (lambda: stats.Claim("x", "difference", ">"), "direction must be one of"),
    (lambda: stats.Claim("x", "mean"), "quantity must be one of"),
    (lambda: stats.evaluate_claim(CLAIM, [1.0, 2.0]), "pass the second arm as b"),
    (lambda: stats.mean_ci([1.0, 2.0], confidence=95), "confidence must lie in"),
    (lambda: stats.t_quantile(0.975, 0), "df > 0"),
], ids=["empty", "nan", "unpaired-lengths", "zero-denominator", "bad-direction", "bad-quantity",
        "missing-arm", "confidence-percent", "zero-df"])
def test_stats_refuse_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- complexity penalty that can steer ---------------------------------------------------


def _toy_complexity(normalization):
    # Normal cell: 2 edges, ops (free, 1 param); reduction: (free, 9 params): reduction is 90 %.
    tables = {"normal": np.array([[0.0, 1.0], [0.0, 1.0]]), "reduce": np.array([[0.0, 9.0], [0.0, 9.0]])}
    return search.Complexity(tables, 20.0, normalization)


def _heavy(types):
    return {t: jnp.array([[0.0, 50.0]] * 2) if t in types else jnp.array([[50.0, 0.0]] * 2)
            for t in ("normal", "reduce")}


def test_per_cell_type_gives_normal_and_reduce_cells_equal_weight():
    glob, per_type = _toy_complexity("global"), _toy_complexity("per_cell_type")
    # All-heavy normal cell: 2/20 of the global C, half of the per-type C (hand-computed).
    assert float(glob(_heavy({"normal"}))) == pytest.approx(0.1)
    assert float(per_type(_heavy({"normal"}))) == pytest.approx(0.5)
    assert float(per_type(_heavy({"reduce"}))) == pytest.approx(0.5)
    assert float(per_type(_heavy({"normal", "reduce"}))) == pytest.approx(1.0)
    uniform = {t: jnp.zeros((2, 2)) for t in ("normal", "reduce")}
    g = jax.grad(per_type)(uniform)
    np.testing.assert_allclose(g["normal"], g["reduce"], rtol=1e-6)  # Equal pull on both cells.
    g_old = jax.grad(glob)(uniform)
    np.testing.assert_allclose(g_old["reduce"], 9 * g_old["normal"], rtol=1e-6)  # The old 9:1.
    assert per_type.uniform_value() == pytest.approx(0.5)
    assert per_type.expected_params(uniform) == pytest.approx(glob.expected_params(uniform)) == pytest.approx(10.0)


def test_per_edge_is_the_mean_of_per_edge_fractions():
    tables = {"normal": np.array([[0.0, 2.0, 4.0], [0.0, 0.0, 0.0]]), "reduce": np.array([[1.0, 1.0, 3.0], [0, 5.0, 10.0]])}
    cx = search.Complexity(tables, 17.0, "per_edge")
    uniform = {t: jnp.zeros((2, 3)) for t in tables}
    # The all-free normal edge is left out: mean of (6/12, 5/9, 15/30) over 3 edges.
    assert float(cx(uniform)) == pytest.approx((0.5 + 5 / 9 + 0.5) / 3, rel=1e-6)
    assert cx.uniform_value() == pytest.approx((0.5 + 5 / 9 + 0.5) / 3)
    with pytest.raises(ValueError, match="normalization must be one of .*got 'edge'"):
        search.Complexity(tables, 17.0, "edge")


def test_default_complexity_is_unchanged():
    model = search_space.SearchNetwork(10, channels=4, layers=3, steps=1, multiplier=1,
                                       primitives=("none", "skip_connect", "sep_conv_3x3"))
    cx = search.Complexity.for_model(model)
    arch = {t: jax.random.normal(jax.random.PRNGKey(i), (2, 3)) for i, t in enumerate(("normal", "reduce"))}
    expected = sum(float(jnp.sum(jax.nn.softmax(arch[t]) * cx.tables[t])) for t in arch) / cx.denominator
    assert cx.normalization == "global" and float(cx(arch)) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def reference_supernet_gradients():
    """The CE's α-gradient at initialisation on a 3-cell supernet (one normal, two reduction
    cells; 1 node, 3 ops, 4 channels: the smallest with both cell types, ~20 s to compile)."""
    from benchmarks import penalty_scale

    model = search_space.SearchNetwork(10, channels=4, layers=3, steps=1, multiplier=1,
                                       primitives=("none", "skip_connect", "sep_conv_3x3"))
    arch, ce_grad = penalty_scale.ce_arch_gradient(model, seed=0, batch_size=8)
    return model, penalty_scale.gradient_ratios(model, arch, ce_grad, mu=1.0)


def test_normalised_penalty_gradient_is_within_an_order_of_magnitude_of_the_ce(reference_supernet_gradients):
    _, ratios = reference_supernet_gradients
    for normalization in ("per_cell_type", "per_edge"):  # μ = 1, the docstring's recommendation.
        for cell_type in ("normal", "reduce", "all"):
            assert 0.1 <= ratios[normalization][cell_type] <= 10, (normalization, cell_type, ratios)
    # The normal cell is steered: the old normalisation pulled on it > 3× less.
    assert ratios["per_cell_type"]["normal"] > 3 * ratios["global"]["normal"]
    # At the old μ = 0.1 the old penalty's pull on the normal cell is < 1/10 of the CE's.
    assert 0.1 * ratios["global"]["normal"] < 0.1


# --- equal-bandwidth teacher baseline ----------------------------------------------------


D, CLASSES = 16, 4


def _head(params, x):
    return x @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def toy_teacher():
    """Linearly separable 'teacher features' (4 class means in R^16 + noise) and a
    nearest-mean linear head: logits = f·m_c − ‖m_c‖²/2."""
    rng = np.random.default_rng(0)
    means = 3.0 * rng.normal(size=(CLASSES, D))
    labels = rng.integers(0, CLASSES, 2000)
    features = (means[labels] + 0.5 * rng.normal(size=(2000, D))).astype(np.float32)
    head = {"w": jnp.asarray(means.T, jnp.float32), "b": jnp.asarray(-0.5 * (means ** 2).sum(1), jnp.float32)}
    return features, labels.astype(np.int32), head


def _accuracy(codec, head, features, labels, snr_db, kind="awgn", key=0):
    logits = bandwidth.codec_logits({"codec": codec, "head": head}, jnp.asarray(features), jnp.float32(snr_db),
                                    jax.random.PRNGKey(key), head_fn=_head, kind=kind,
                                    channel=channels.ChannelSpec())
    return float(jnp.mean(jnp.argmax(logits, -1) == labels))


@pytest.mark.parametrize("num_symbols", [1, 3, 8])
def test_equal_bandwidth_sends_exactly_num_symbols_at_unit_power(toy_teacher, num_symbols):
    features, _, head = toy_teacher
    codec = bandwidth.fit_pca_codec(features[:500], num_symbols)
    symbols = bandwidth.channel_symbols(codec, jnp.asarray(features[:64]))
    assert symbols.shape == (64, num_symbols) and jnp.iscomplexobj(symbols)
    np.testing.assert_allclose(np.mean(np.abs(np.asarray(symbols)) ** 2, axis=1), 1.0, rtol=1e-5)
    # What the channel is given: exactly 2k reals per image, i.e. k complex uses.
    sent = []

    @dataclasses.dataclass(frozen=True)
    class Spy(channels.ChannelSpec):
        def transmit(self, key, x, snr_db, kind, mask=None, return_h=False):
            sent.append(x.shape)
            return super().transmit(key, x, snr_db, kind, mask, return_h)

    bandwidth.over_channel(codec, jnp.asarray(features[:64]), jax.random.PRNGKey(0), 10.0, kind="rayleigh",
                           channel=Spy())
    assert sent == [(64, 2 * num_symbols)]


def test_pca_reconstruction_error_is_the_sum_of_discarded_eigenvalues(toy_teacher):
    features = toy_teacher[0].astype(np.float64)
    codec, eigenvalues = bandwidth.fit_pca_codec(features, 3, return_eigenvalues=True)
    reference = np.sort(np.linalg.eigvalsh(np.cov(features.T, bias=True)))[::-1]
    np.testing.assert_allclose(eigenvalues, reference, rtol=1e-6, atol=1e-9)
    decoded = bandwidth.over_channel(codec, jnp.asarray(features, jnp.float32), None, 0.0, kind="none",
                                     channel=channels.ChannelSpec())
    error = np.mean(np.sum((np.asarray(decoded, np.float64) - features) ** 2, axis=1))
    assert error == pytest.approx(reference[6:].sum(), rel=1e-3)


def test_full_rank_pca_at_very_high_snr_reproduces_the_teachers_logits(toy_teacher):
    features, _, head = toy_teacher
    codec = bandwidth.fit_pca_codec(features, D // 2)
    params = {"codec": codec, "head": head}
    for kind in ("awgn", "rayleigh"):
        logits = bandwidth.codec_logits(params, jnp.asarray(features[:256]), jnp.float32(300.0),
                                        jax.random.PRNGKey(1), head_fn=_head, kind=kind,
                                        channel=channels.ChannelSpec())
        np.testing.assert_allclose(logits, _head(head, features[:256]), rtol=1e-3, atol=1e-2)


def test_accuracy_rises_with_snr_and_the_trained_codec_learns(toy_teacher):
    features, labels, head = toy_teacher
    codec = bandwidth.fit_pca_codec(features[:1000], 1)
    test_x, test_y = features[1000:], labels[1000:]
    curve = [_accuracy(codec, head, test_x, test_y, s) for s in (-10.0, 0.0, 10.0, 30.0)]
    assert all(b >= a - 0.02 for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] > curve[0] + 0.2 and curve[-1] > 0.9, curve
    trained, history = bandwidth.train_linear_codec(features[:1000], labels[:1000], _head, head, 1, steps=60,
                                                    batch_size=128, learning_rate=3e-3, snr_range=(-10.0, 10.0))
    assert np.mean(history[-10:]) < np.mean(history[:10])
    assert _accuracy(trained, head, test_x, test_y, 0.0) >= curve[1] - 0.02


def test_equal_bandwidth_eval_step_counts_like_the_teacher_reference(toy_teacher):
    features, labels, head = toy_teacher
    codec = bandwidth.fit_pca_codec(features, D // 2)
    batch = {"image": jnp.asarray(features[:32]), "label": jnp.asarray(labels[:32]),
             "index": jnp.arange(32), "mask": jnp.ones(32).at[30:].set(0)}
    step = jax.jit(functools.partial(bandwidth.equal_bandwidth_eval_step, feature_fn=lambda p, im: im,
                                     head_fn=_head, kind="awgn"))
    sums = step({"network": {}, "head": head, "codec": codec}, batch, jnp.float32(300.0), jax.random.PRNGKey(0))
    expected = np.sum((np.argmax(_head(head, features[:30]), -1) == labels[:30]))
    assert int(sums["count"]) == 30 and int(sums["accuracy"]) == expected


@pytest.mark.parametrize("call, message", [
    (lambda f: bandwidth.fit_pca_codec(f, 0), "num_symbols must be >= 1"),
    (lambda f: bandwidth.fit_pca_codec(f, 9), "2·9 = 18 reals but the teacher has only D = 16 .*cannot add "
                                              "information. Use num_symbols <= 8"),
    (lambda f: bandwidth.fit_pca_codec(f, 2.5), "whole number of complex symbols"),
    (lambda f: bandwidth.fit_pca_codec(f.at[3, 2].set(np.nan) if hasattr(f, "at") else
                                       np.where(np.arange(f.size).reshape(f.shape) == 50, np.nan, f), 2),
     "contains nan at row 3; pass finite"),
    (lambda f: bandwidth.fit_pca_codec(f[0], 2), r"must be \(N, D\)"),
    (lambda f: bandwidth.LinearCodec(9, 16).init(jax.random.PRNGKey(0), f[:1]), "cannot add information"),
    (lambda f: bandwidth.over_channel(bandwidth.fit_pca_codec(f, 2), f[:2], None, 0.0, kind="none",
                                      channel=channels.ChannelSpec(), side_info="header"), "side_info must be one of"),
    (lambda f: bandwidth.train_linear_codec(f, np.zeros(5, np.int32), _head, {}, 2), r"labels must be \(N,\)"),
], ids=["zero-symbols", "more-reals-than-features", "fractional-symbols", "nan-features", "one-vector",
        "module-too-many-symbols", "bad-side-info", "labels-mismatch"])
def test_equal_bandwidth_refuses_bad_inputs(toy_teacher, call, message):
    with pytest.raises(ValueError, match=message):
        call(toy_teacher[0][:200])


def test_curves_table_with_confidence_intervals_and_paired_differences():
    from rkdsc_jax import evaluation

    curves = {"kd": {"awgn": {"0": [0.81, 0.82, 0.815], "10": [0.9]}},
              "no-kd": {"awgn": {"0": [0.79, 0.801, 0.794], "10": [0.88]}}}
    table = evaluation.curves_table(curves, "awgn", ["0", "10"], confidence=0.95)
    half = 100 * stats.mean_ci([0.81, 0.82, 0.815]).half_width
    assert f"| kd | 81.50 ± {half:.2f} | 90.00 (n=1) |" in table
    diffs = evaluation.curve_differences(curves, "kd", "no-kd", "awgn", ["0"])
    assert diffs["0"].method == "paired" and diffs["0"].mean == pytest.approx(2.0, abs=1e-9)
    assert stats.verdict(CLAIM, diffs["0"]).verdict == "reproduced"


def test_linear_codec_module_params_without_side_information(toy_teacher):
    features, _, head = toy_teacher
    params = bandwidth.LinearCodec(2, D).init(jax.random.PRNGKey(0), jnp.asarray(features[:1]))["params"]
    codec = bandwidth.with_scale(params, features[:500])
    z = np.asarray(bandwidth.encode(codec, jnp.asarray(features[:500])))
    assert float(codec["scale"]) == pytest.approx(np.mean(np.sqrt(np.mean(z ** 2, 1))), rel=1e-5)
    decoded = bandwidth.over_channel(codec, jnp.asarray(features[:8]), jax.random.PRNGKey(0), 5.0,
                                     kind="awgn", channel=channels.ChannelSpec(), side_info="none")
    assert decoded.shape == (8, D) and bool(jnp.all(jnp.isfinite(decoded)))


def test_collect_features_drops_masked_rows(toy_teacher):
    features, labels, _ = toy_teacher
    batches = [{"image": features[i:i + 8], "label": labels[i:i + 8], "mask": np.arange(8) < (8 if i else 5)}
               for i in (0, 8, 16)]
    f, y = bandwidth.collect_features(lambda p, im: im * p, 2.0, batches)
    np.testing.assert_allclose(f, 2 * np.concatenate([features[:5], features[8:24]]), rtol=1e-6)
    assert y.tolist() == np.concatenate([labels[:5], labels[8:24]]).tolist()
    assert bandwidth.collect_features(lambda p, im: im, None, batches, max_examples=6)[0].shape == (6, D)
