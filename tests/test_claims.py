"""Both studies' claim tables (issue 19): claims evaluated over the seeds each arm ran, against the
equal-bandwidth teacher, with verdicts and the protocol, checked on hand-computed values.  Cheap:
summaries are built by hand (the study runs of tests/test_ltosc.py and tests/test_rkdsc.py check
the same tables and the equal compute of their arms end to end)."""

import math
import shutil

import numpy as np
import pytest
import scipy.stats

from experiments import ltosc, rkdsc
from experiments.common import results
from experiments.common import teacher as teacher_lib
from experiments.configs import ltosc_fmnist
from experiments.ltosc import report as ltosc_report
from experiments.rkdsc import report as rkdsc_report
from rkdsc_jax import stats

T2 = scipy.stats.t.ppf(0.975, 2)  # 4.302652729749464


def _run(seed, points, **extra):
    """A summary with curves {kind: {snr: accuracy}} from {"kind@snr": accuracy}."""
    curves = {}
    for point, value in points.items():
        kind, snr = point.split("@")
        curves.setdefault(kind, {})[snr] = value
    return {"seed": seed, "curves": curves, **extra}


def _teacher(pca_points, k, *, sent=None, reference=0.9):
    pca = _run(0, pca_points)["curves"]
    return {"curves": {"awgn": {"0": reference}}, "num_symbols": 640, "num_params": 1000, "codec_fit_examples": 4096,
            "linear_codec_steps": 0,
            "equal_bandwidth": {"pca": {str(k): {"curves": pca, "clean_accuracy": 0.9, "num_symbols": sent or k}}}}


def test_teacher_rows_are_labelled_with_their_symbols():
    teacher = _teacher({"awgn@0": 0.5}, 98, sent=16)
    rows = teacher_lib.teacher_rows(teacher)
    assert list(rows) == ["teacher, all features (640 symbols, reference)",
                          "teacher, PCA 16 symbols (all features; budget 98)"]
    assert rows["teacher, PCA 16 symbols (all features; budget 98)"] == {"awgn": {"0": [0.5]}}
    assert teacher_lib.teacher_rows(_teacher({"awgn@0": 0.5}, 16), symbols=[12]).keys() == {
        "teacher, all features (640 symbols, reference)"}


def _ltosc_config():
    config = ltosc_fmnist.get_config()
    config.eval.channels = ("awgn",)
    config.eval.report_snrs_db = (-4.0, 0.0)
    config.study.methods = ("l_tosc_kd", "l_tosc")
    return config


def test_ltosc_claims_are_paired_over_seeds_and_use_the_equal_bandwidth_teacher():
    config = _ltosc_config()
    compute = dict(steps=469, batch_size=128, examples_seen=469 * 128, num_symbols=16)
    kd = {s: _run(s, {"awgn@0": a, "awgn@-4": b}, **compute)
          for s, a, b in ((0, 0.81, 0.60), (1, 0.82, 0.62), (2, 0.815, 0.61))}
    nokd = {s: _run(s, {"awgn@0": a}, **compute) for s, a in ((0, 0.79, ), (1, 0.801), (2, 0.794))}
    teacher = _teacher({"awgn@-4": 0.55, "awgn@0": 0.7}, 16, reference=0.99)
    verdicts = ltosc_report.paper_claims(config, {"l_tosc_kd": kd, "l_tosc": nokd}, teacher, None, None, "10,000")
    by_name = {v.claim.name: v for v in verdicts}
    assert set(by_name) == {"L-TOSC-KD beats L-TOSC at 0 dB (awgn)",
                            "L-TOSC-KD beats the teacher at -4 dB (awgn; teacher through PCA at 16 symbols)"}

    # KD − no-KD per seed: 2.0, 1.9, 2.1 points → mean 2.0, sd 0.1, CI 2 ± t·0.1/√3: reproduced.
    kd_vs = by_name["L-TOSC-KD beats L-TOSC at 0 dB (awgn)"]
    half = T2 * 0.1 / math.sqrt(3)
    assert kd_vs.estimate.method == "paired" and kd_vs.estimate.n == 3
    assert (kd_vs.estimate.mean, kd_vs.estimate.low, kd_vs.estimate.high) == pytest.approx((2.0, 2 - half, 2 + half))
    assert kd_vs.verdict == stats.REPRODUCED and kd_vs.claim.paper_value == 1.3
    assert kd_vs.claim.protocol == ("L-TOSC-KD: 469 steps, 60,032 examples; L-TOSC: 469 steps, 60,032 examples; "
                                    "10,000 test images; 16 symbols")

    # Student − the PCA teacher (55 %, not the 640-symbol 99 %): 5, 7, 6 points → 6 ± t·1/√3 = [3.52, 8.48].
    vs_teacher = by_name["L-TOSC-KD beats the teacher at -4 dB (awgn; teacher through PCA at 16 symbols)"]
    assert vs_teacher.estimate.mean == pytest.approx(6.0)
    assert vs_teacher.estimate.half_width == pytest.approx(T2 / math.sqrt(3))
    assert vs_teacher.verdict == stats.REPRODUCED

    row = stats.claim_row(kd_vs)
    assert row == ("| L-TOSC-KD beats L-TOSC at 0 dB (awgn) | 1.3 points | 2.00 ± 0.25 [1.75, 2.25] points | "
                   "A − B ≥ 0 points | **reproduced** | 3 | " + kd_vs.claim.protocol + " |")

    # One seed: no CI, inconclusive whatever the sign; unequal compute is stated in the protocol.
    short = {0: _run(0, {"awgn@0": 0.70}, steps=100, batch_size=128, examples_seen=12800, num_symbols=16)}
    one = ltosc_report.paper_claims(config, {"l_tosc_kd": {0: kd[0]}, "l_tosc": short}, None, None, None)
    assert [v.verdict for v in one] == [stats.INCONCLUSIVE]
    assert one[0].claim.protocol.startswith("UNEQUAL compute; ")
    assert "11.00 (n=1, no CI)" in stats.claim_row(one[0])


def test_ltosc_size_claim_is_paired_over_seeds_and_the_fdm_timing_is_inconclusive():
    config = _ltosc_config()
    # Accuracy in % per seed; the full size (60,000) is not a "less data" point.
    sizes = {"per_seed": {"L-TOSC-KD": {1000: {"awgn@0": {0: 60.0, 1: 62.0, 2: 61.0}},
                                        60000: {"awgn@0": {0: 80.0, 1: 80.0, 2: 80.0}}},
                          "L-TOSC": {1000: {"awgn@0": {0: 50.0, 1: 51.0, 2: 50.0}},
                                     60000: {"awgn@0": {0: 79.0, 1: 79.0, 2: 79.0}}}},
             "steps": {"L-TOSC-KD": {1000: [469], 60000: [469]}, "L-TOSC": {1000: [469], 60000: [469]}}}
    ablation = {"seconds_per_step": {"l_tosc_kd": 0.1, "l_tosc_kd_online": 0.25}, "steps_timed": 20,
                "batch_size": 128, "platform": "cpu"}
    verdicts = ltosc_report.paper_claims(config, {}, None, sizes, ablation)
    assert [v.claim.name for v in verdicts] == ["with less data (1,000 examples; the paper: 0.6M images), L-TOSC-KD beats L-TOSC "
                                                "(awgn, 0 dB)",
                                                "FDM: stored top-K logits train faster than the teacher in the loop"]
    size, fdm = verdicts
    # Paired differences 10, 11, 11: mean 32/3, sd 1/sqrt(3), t_{0.975, 2} = 4.302653.
    assert size.estimate.method == "paired" and size.estimate.n == 3
    assert size.effect == pytest.approx(32 / 3)
    assert size.estimate.half_width == pytest.approx(4.302653 * (1 / math.sqrt(3)) / math.sqrt(3), rel=1e-5)
    assert size.verdict == stats.REPRODUCED and "469/469 steps each (equal compute)" in size.claim.protocol
    assert fdm.effect == pytest.approx(2.5) and fdm.verdict == stats.INCONCLUSIVE  # One timing run: no CI.


def test_rkdsc_claims_against_the_equal_bandwidth_teacher_and_unequal_compute():
    rk_compute = dict(steps=400, batch_size=64, examples_seen=25600, stage1_steps=300, stage1_examples_seen=19200,
                      total_steps=700, total_examples_seen=44800, max_symbols=98)
    base = dict(steps=400, batch_size=64, examples_seen=25600, total_steps=400, total_examples_seen=25600,
                max_symbols=98)
    rk = {s: _run(s, {"awgn@25": a, "awgn@-10": b, "awgn@0": c}, **rk_compute)
          for s, a, b, c in ((0, 0.72, 0.50, 0.70), (1, 0.74, 0.52, 0.71), (2, 0.73, 0.51, 0.72))}
    nokd = {s: _run(s, {"awgn@25": a, "awgn@0": c}, **base)
            for s, a, c in ((0, 0.70, 0.69), (1, 0.71, 0.69), (2, 0.72, 0.69))}
    teacher = _teacher({"awgn@25": 0.80, "awgn@-10": 0.25}, 98)
    verdicts = rkdsc.paper_claims({"rkdsc": rk, "no_kd": nokd}, teacher, {0: 0.95, 1: 0.95, 2: 0.95},
                                  {"teacher_encoder_ms": 6.0, "student_transmitter_ms": 0.5, "repeats": 100,
                                   "platform": "cpu"}, ["-10", "0", "25"], ("awgn",), "2,000")
    by_start = lambda start: next(v for v in verdicts if v.claim.name.startswith(start))  # noqa: E731

    params = by_start("parameters cut")  # 0.95 for every seed: an exact count, CI of zero width.
    assert params.estimate.mean == pytest.approx(0.95) and params.verdict == stats.REPRODUCED
    keeps = by_start("keeps 95.86")  # 72/80, 74/80, 73/80 = 0.9125 ± t·0.0125/√3.
    assert "PCA at 98 symbols" in keeps.claim.name
    assert keeps.estimate.mean == pytest.approx(0.9125)
    assert keeps.estimate.half_width == pytest.approx(T2 * 0.0125 / math.sqrt(3))
    assert keeps.verdict == stats.NOT_REPRODUCED  # The whole CI is below 0.9586.
    gain = by_start("more than 83.12")  # 50/25, 52/25, 51/25 = 2.04 ± t·0.04/√3 ⊂ (1.83, ∞).
    assert gain.estimate.mean == pytest.approx(2.04) and gain.verdict == stats.REPRODUCED
    kd = [v for v in verdicts if v.claim.name.startswith("RKD-SC beats the same student")]
    assert [v.claim.name for v in kd] == ["RKD-SC beats the same student without KD at 0 dB (awgn)",
                                          "RKD-SC beats the same student without KD at 25 dB (awgn)"]
    assert kd[0].estimate.mean == pytest.approx(2.0) and kd[1].estimate.mean == pytest.approx(2.0)
    assert kd[0].claim.protocol.startswith("UNEQUAL compute: RKD-SC 700 steps (300 + 400), 44,800 examples vs "
                                           "same student, no KD 400 steps, 25,600 examples; 2,000 test images")
    latency = by_start("encoder ~10×")
    assert latency.effect == pytest.approx(12.0) and latency.verdict == stats.INCONCLUSIVE  # One timing run.
    table = rkdsc_report.claim_table(verdicts)
    assert table.splitlines()[0] == "| " + " | ".join(stats.CLAIM_TABLE_HEADERS) + " |"
    assert "| 0.9125 ± " in table and "**not reproduced**" in table


def test_compute_rows_record_steps_and_examples_per_arm():
    arms = {"RKD-SC": {0: {"steps": 400, "stage1_steps": 300, "total_steps": 700, "total_examples_seen": 44800,
                           "batch_size": 64}},
            "CNN SemCom": {0: {"steps": 400, "total_steps": 400, "total_examples_seen": 25600, "batch_size": 64}}}
    rows = results.compute_rows(arms, rkdsc_report.describe_stages)
    assert [(r["method"], r["steps"], r["examples_seen"], r["stages"]) for r in rows] == [
        ("RKD-SC", [700], [44800], "300 stage 1 + 400 stage 2"), ("CNN SemCom", [400], [25600], "400")]
    same = {m: {0: {"steps": 469, "examples_seen": 60032, "batch_size": 128}} for m in ("L-TOSC-KD", "L-TOSC")}
    assert results.compute_equal(results.compute_rows(same))
    assert ltosc.METHOD_LABELS["l_tosc_kd"] == "L-TOSC-KD"


def test_an_exact_quantity_decides_from_one_seed_and_the_verdict_is_strict_json():
    import json

    count = stats.Claim("parameters cut", "value", ">=", 0.9406, exact=True)
    assert stats.evaluate_claim(count, {0: 0.95}).verdict == stats.REPRODUCED
    assert stats.evaluate_claim(count, {0: 0.93}).verdict == stats.NOT_REPRODUCED
    assert stats.evaluate_claim(count, {0: 0.95, 1: 0.95}).verdict == stats.REPRODUCED  # sd 0: still exact.
    noisy = stats.evaluate_claim(count, {0: 0.95, 1: 0.96})  # Seeds disagree: not exact, the CI rule.
    assert noisy.verdict == stats.INCONCLUSIVE
    sampled = stats.Claim("accuracy", "value", ">=", 0.5)
    one = stats.evaluate_claim(sampled, {0: 0.9})
    assert one.verdict == stats.INCONCLUSIVE  # One seed of a noisy quantity: no CI, no verdict.
    record = one.as_dict()
    assert record["estimate"]["low"] is None and record["standardized_effect"] is None
    json.dumps(record, allow_nan=False)  # Strict JSON: NaN would raise here.


def test_alpha_movement_against_hand_computed_distances():
    from rkdsc_jax.nas import genotypes

    start = {"normal": np.zeros((14, 8)), "reduce": np.zeros((14, 8))}
    end = {"normal": np.zeros((14, 8)), "reduce": np.zeros((14, 8))}
    end["normal"][3, 5] = 100.0  # One edge becomes one-hot; everything else stays uniform.
    moved = genotypes.alpha_movement(start, end)
    # TV(one-hot, uniform over 8) = ½ (7/8 + 7 · 1/8) = 7/8.
    assert moved["normal"]["max_tv"] == pytest.approx(7 / 8)
    assert moved["normal"]["mean_tv"] == pytest.approx(7 / 8 / 14)
    assert moved["normal"]["max_abs_alpha_change"] == 100.0
    assert moved["normal"]["mean_top_weight"] == pytest.approx((1 + 13 / 8) / 14)
    assert moved["reduce"] == {"max_abs_alpha_change": 0.0, "mean_tv": 0.0, "max_tv": 0.0,
                               "mean_top_weight": pytest.approx(1 / 8), "uniform_weight": 1 / 8}
    with pytest.raises(ValueError, match="normal α shapes differ"):
        genotypes.alpha_movement(start, {"normal": np.zeros((14, 7)), "reduce": np.zeros((14, 8))})


def test_darts_comparison_claims_pair_the_variants_over_seeds(tmp_path):
    from experiments.darts import comparison
    from rkdsc_jax import files

    # Retrained accuracy and parameters per seed; kdl_pc (optional) has runs, so it joins.
    runs = {"kdl": ((0.80, 900), (0.82, 1000), (0.81, 1100)), "plain": ((0.79, 1000), (0.80, 1200), (0.80, 1300)),
            "kdl_pc": ((0.77, 500), (0.78, 600), (0.77, 700)), "kdl_pc_mu3": ((0.70, 200), (0.71, 300), (0.72, 400)),
            "kdl_pc_mu0.3": ((0.78, 800), (0.79, 900), (0.80, 1000))}
    mus = {"kdl": 0.1, "plain": 0.0, "kdl_pc": 1.0, "kdl_pc_mu3": 3.0, "kdl_pc_mu0.3": 0.3}
    for variant, rows in runs.items():
        for seed, (accuracy, params) in enumerate(rows):
            files.atomic_write_json(str(tmp_path / f"{variant}_s{seed}" / "summary.json"), {
                "mu": mus[variant], "val": {"accuracy": 0.5}, "complexity": 0.3, "total_wall_time_s": 60.0,
                "op_histogram": {"normal": {"sep_conv_3x3": 2}, "reduce": {"max_pool_3x3": 2}},
                "genotype": {"normal": [["sep_conv_3x3", 0]], "reduce": [["max_pool_3x3", 0]]},
                "alpha_movement": {"normal": {"mean_tv": 0.125}, "reduce": {"mean_tv": 0.25}}})
            files.atomic_write_json(str(tmp_path / f"{variant}_s{seed}_retrain" / "summary.json"), {
                "eval": {"accuracy": accuracy}, "num_params": params, "total_wall_time_s": 60.0})
    result = comparison.collect(str(tmp_path), [0, 1, 2])
    assert list(result) == ["kdl", "kdl_pc", "plain", "kdl_pc_mu0.3", "kdl_pc_mu3"]  # The sweep by μ.
    assert result["kdl_pc_mu3"]["label"] == "KDL-DARTS (λ=0.5, τ=4, μ=3, C per cell type)"
    # The μ sweep: plain DARTS as μ = 0, then the per-cell-type variants by μ (kdl is on another scale).
    sweep = comparison.mu_sweep(result)
    assert [(r["mu"], r["params"]) for r in sweep] == [(0.0, 1166.6666666666667), (0.3, 900.0), (1.0, 600.0),
                                                        (3.0, 300.0)]
    assert sweep[3]["test_accuracy"] == pytest.approx(0.71)
    verdicts = {v.claim.name: v for v in comparison.claims(result)}
    size = verdicts["KDL-DARTS (λ=0.5, τ=4, μ=0.1): fewer parameters than DARTS's cells"]
    # Paired ratios 0.9, 1000/1200, 1100/1300.
    assert size.effect == pytest.approx(np.mean([0.9, 1000 / 1200, 1100 / 1300]))
    assert size.verdict == stats.REPRODUCED
    accuracy = verdicts["KDL-DARTS (λ=0.5, τ=4, μ=1, C per cell type): higher accuracy than DARTS"]
    assert accuracy.effect == pytest.approx(-7 / 3)  # Differences −2, −2, −3 points.
    assert accuracy.verdict == stats.NOT_REPRODUCED  # sd 0.577, CI half-width t·sd/√3 = 1.43 < 2.33.
    table = comparison.markdown(result)
    assert "0.125 / 0.250" in table and "## Claims" in table
    assert "| 3 | 3 | 300 | 71.00 % | 0.300 | 0.125 / 0.250 |" in table
    comparison.plot(result, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    # Without the μ = 0.1 variant's runs the others are still compared; a missing seed is an error.
    for path in tmp_path.glob("kdl_s*"):
        shutil.rmtree(path)
    assert list(comparison.collect(str(tmp_path), [0, 1, 2])) == ["kdl_pc", "plain", "kdl_pc_mu0.3", "kdl_pc_mu3"]
    shutil.rmtree(tmp_path / "kdl_pc_s2_retrain")
    with pytest.raises(FileNotFoundError, match="kdl_pc_s2_retrain"):
        comparison.collect(str(tmp_path), [0, 1, 2])
