"""Paper A's ``report.md``, ``results.json`` and plots, from whatever stages have finished."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.common import export as export_lib
from experiments.common import results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from rkdsc_jax import evaluation, stats
from rkdsc_jax.nas import genotypes

METHOD_LABELS = {
    "rkdsc": "RKD-SC", "stage1": "stage-1 student (no codec)", "no_kd": "same student, no KD",
    "cnn": "CNN SemCom",
}
CONFIDENCE = 0.95


def _per_seed(layout: RunLayout, method: str) -> list[dict]:
    return results.per_seed(layout.method_dir(method))


def method_symbols(summary: dict) -> int | None:
    """Complex channel symbols per image a run's curves were measured at."""
    return summary.get("max_symbols", summary.get("num_symbols"))


def collect_curves(layout: RunLayout, methods, teacher: dict | None = None) -> dict:
    """{row label: per-seed curves}: every method, then the teacher's reference row (all its
    features) and its equal-bandwidth rows at RKD-SC's largest budget (the symbols of RKD-SC's
    and the CNN's curves; the other budgets are in the bandwidth table)."""
    curves = {}
    for method in ("rkdsc", *[m for m in methods if m != "rkdsc"]):
        runs = _per_seed(layout, method)
        if runs:
            curves[METHOD_LABELS[method]] = evaluation.collect_seeds([r["curves"] for r in runs])
    if teacher is None:
        teacher = results.read_json(layout.run("teacher") / "summary.json")
    largest = max((int(k) for k in (teacher or {}).get("equal_bandwidth", {}).get("pca", {})), default=None)
    curves.update(teacher_lib.teacher_rows(teacher, symbols=[largest] if largest else []))
    return curves


def _bandwidth(layout: RunLayout) -> dict | None:
    """{kind@snr: {budget: [acc per seed]}} of the RKD-SC runs, and the ratios."""
    runs = [r for r in _per_seed(layout, "rkdsc") if r.get("bandwidth")]
    if not runs:
        return None
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for budget, curves in run["bandwidth"].items():
            for kind, curve in curves.items():
                for snr, acc in curve.items():
                    table.setdefault(f"{kind}@{snr}", {}).setdefault(budget, []).append(acc)
    input_size = runs[0]["input_size"]
    ratios = {b: int(b) / input_size for b in runs[0]["bandwidth"]}
    return {"accuracy": table, "bandwidth_ratio": ratios, "input_size": input_size}


def _plot_bandwidth(bandwidth: dict, teacher: dict, path) -> None:
    """RKD-SC's CAT model per (channel, SNR) point, and the teacher through each equal-bandwidth
    codec at the same symbols (dashed/dotted, same colour)."""
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    codec_styles = {"linear": ("--", "s", "teacher, linear codec"), "pca": (":", "^", "teacher, PCA")}
    for point, by_budget in bandwidth["accuracy"].items():
        budgets = sorted(by_budget, key=int)
        stats = np.array([evaluation.mean_std(by_budget[b]) for b in budgets]) * 100
        x = [bandwidth["bandwidth_ratio"][b] for b in budgets]
        kind, snr = point.split("@")
        line, = ax.plot(x, stats[:, 0], marker="o", label=f"RKD-SC, {kind} {snr} dB")
        ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2, color=line.get_color())
        for codec, rows in (teacher or {}).get("equal_bandwidth", {}).items():
            style, marker, name = codec_styles.get(codec, ("-.", "x", f"teacher, {codec}"))
            found = [(bandwidth["bandwidth_ratio"][b], rows[b]["curves"].get(kind, {}).get(snr))
                     for b in budgets if b in rows]
            found = [(r, 100 * v) for r, v in found if v is not None]
            if found:
                ax.plot(*zip(*found), linestyle=style, marker=marker, ms=4, color=line.get_color(),
                        label=f"{name}, {kind} {snr} dB")
    ax.set_xscale("log")
    ax.set_xlabel("bandwidth ratio (complex symbols / input values)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("RKD-SC's CAT model and the teacher at the same symbols")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)


def _symbols_per_image(layout: RunLayout) -> dict[str, int]:
    """{row label: complex symbols per image}: RKD-SC and the no-KD student their largest budget,
    stage 1 and the CNN their width."""
    symbols = {}
    for method in ("rkdsc", "no_kd", "stage1", "cnn"):
        runs = _per_seed(layout, method)
        if runs and method_symbols(runs[0]) is not None:
            symbols[METHOD_LABELS[method]] = method_symbols(runs[0])
    return symbols


def describe_stages(first: dict) -> dict:
    """The compute table's "of which" column: RKD-SC's steps per stage (``results.compute_rows``)."""
    return {"stages": (f"{first.get('stage1_steps')} stage 1 + {first.get('steps')} stage 2"
                       if "stage1_steps" in first else f"{first.get('steps')}")}


def _arm(label: str, by_seed: dict[int, dict]) -> str:
    first = next(iter(by_seed.values()))
    steps = first.get("total_steps", first.get("steps"))
    seen = first.get("total_examples_seen", first.get("examples_seen"))
    stage = f" ({first['stage1_steps']} + {first['steps']})" if "stage1_steps" in first else ""
    return f"{label} {steps} steps{stage}, {seen:,} examples" if isinstance(seen, int) else f"{label} {steps} steps"


def _compute(by_seed: dict[int, dict]) -> tuple:
    """(optimiser steps, examples seen) of an arm's whole training (its first seed)."""
    first = next(iter(by_seed.values()))
    return (first.get("total_steps", first.get("steps")), first.get("total_examples_seen", first.get("examples_seen")))


def paper_claims(arms: dict[str, dict[int, dict]], teacher: dict | None,
                 complexity_by_seed: dict[int, float] | None, latency: dict | None, snrs: list[str],
                 kinds=("awgn", "rayleigh"), images="all") -> list[stats.Verdict]:
    """Paper A's claims (SPEC §4.4) as tests with verdicts over the seeds each arm ran; nothing is
    tuned to them.

    ``arms``: {method: {seed: summary}}; ``teacher``: the teacher-over-the-channel summary, whose
    PCA row at RKD-SC's symbol count is the teacher compared with (one fine-tuned teacher: each
    student seed is paired with it); ``complexity_by_seed``: {seed: parameter reduction}.
    Accuracies in %, ratios as fractions.
    """
    verdicts = []
    rk = arms.get("rkdsc", {})
    if complexity_by_seed:
        claim = stats.Claim("parameters cut (student transmitter + receiver vs teacher)", "value", ">=", 0.9406,
                            paper_value=0.9406, protocol="exact parameter counts (the same for every seed)",
                            exact=True)
        verdicts.append(stats.evaluate_claim(claim, complexity_by_seed, confidence=CONFIDENCE))
    high, low = snrs[-1], snrs[0]
    k = method_symbols(next(iter(rk.values()))) if rk else None
    codec, pca = teacher_lib.comparison_codec(teacher, k) if k else ("", None)
    fit = f"teacher codec fitted on {teacher['codec_fit_examples']:,} training images" if pca else ""
    sent = pca.get("num_symbols", k) if pca else k  # Fewer than k when all the teacher's features fit.
    for kind in kinds:
        if rk and pca:
            for snr, claim in (
                    (high, stats.Claim(f"keeps 95.86 % of the teacher's accuracy at {high} dB ({kind}; teacher "
                                       f"through {codec} at {sent} symbols)", "ratio", ">=", 0.9586, paper_value=0.9586,
                                       protocol=f"{_arm('RKD-SC', rk)}; {fit}; {images} test images; {k} symbols")),
                    (low, stats.Claim(f"more than 83.12 % above the teacher at {low} dB ({kind}; teacher through "
                                      f"{codec} at {sent} symbols)", "ratio", ">=", 1.8312, paper_value=1.8312,
                                      protocol=f"{_arm('RKD-SC', rk)}; {fit}; {images} test images; {k} symbols"))):
                a = results.curve_points(rk, kind, snr)
                t = pca["curves"].get(kind, {}).get(snr)
                if a and t:
                    verdicts.append(stats.evaluate_claim(claim, a, 100 * t, CONFIDENCE))
        for other in ("no_kd", "cnn"):
            b_arm = arms.get(other, {})
            if not rk or not b_arm:
                continue
            note = "" if _compute(rk) == _compute(b_arm) else "UNEQUAL compute: "
            for snr in ("0", high):
                a, b = results.curve_points(rk, kind, snr), results.curve_points(b_arm, kind, snr)
                if not a or not b:
                    continue
                what = "the same student without KD" if other == "no_kd" else "the CNN SemCom baseline"
                other_k = method_symbols(next(iter(b_arm.values())))
                claim = stats.Claim(f"RKD-SC beats {what} at {snr} dB ({kind})", "difference", ">=", 0.0,
                                    paper_value="> 0", unit="points",
                                    protocol=f"{note}{_arm('RKD-SC', rk)} vs {_arm(METHOD_LABELS[other], b_arm)}; "
                                             f"{images} test images; {k} vs {other_k} symbols")
                verdicts.append(stats.evaluate_claim(claim, a, b, CONFIDENCE))
    if latency:
        claim = stats.Claim("encoder ~10× faster than the teacher's (1058.86 / 106.21 ms on an IoT device)", "ratio",
                            ">=", 9.97, paper_value=9.97, unit="×",
                            protocol=f"one timing run: batch 1, median of {latency.get('repeats', '?')}, "
                                     f"{latency.get('platform', '?')}")
        verdicts.append(stats.evaluate_claim(claim, [latency["teacher_encoder_ms"]], latency["student_transmitter_ms"],
                                             CONFIDENCE))
    return verdicts


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever stages have finished."""
    layout = RunLayout.from_config(config, workdir)
    methods = list(config.pipeline.methods)
    teacher = results.read_json(layout.run("teacher") / "summary.json")
    curves = collect_curves(layout, methods, teacher)
    snrs = [evaluation.snr_key(s) for s in config.eval.snrs_db]
    arms = {m: results.seed_summaries(layout, m) for m in ("rkdsc", *methods) if m != "stage1"}
    most_seeds = max([len(v) for v in arms.values()] or [0])
    finetuned = results.read_json(layout.teacher_run / "summary.json")
    images = (f"{finetuned['eval']['count']:,}" if finetuned and (finetuned.get("eval") or {}).get("count")
              else config.data.get("num_eval_examples") or "all")
    out: dict[str, Any] = {"curves": curves, "snrs_db": snrs, "seeds": list(config.pipeline.seeds)}
    lines = ["# RKD-SC pipeline (paper A)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; student `{config.student.encoder}`; "
             f"stage-2 SNR U{tuple(config.stage2.snr_range)} dB over {', '.join(config.stage2.channels)}; "
             f"seeds {list(config.pipeline.seeds)}; {images} test images. Accuracy in %, "
             + ("mean ± 95 % CI half-width (Student t) over seeds." if most_seeds >= 2 else "one seed.")
             + " Every row states its complex channel symbols per image.", ""]
    if teacher and teacher.get("equal_bandwidth"):
        budgets = sorted(teacher["equal_bandwidth"]["pca"], key=int)
        lines += [teacher_lib.equal_bandwidth_paragraph(
            teacher, f"{', '.join(budgets)} complex symbols (RKD-SC's budgets)", "stage 2's SNR range and channels"), ""]
        out["teacher_equal_bandwidth"] = teacher["equal_bandwidth"]
    if finetuned:
        out["teacher_finetune"] = finetuned
        lines += [f"Teacher `{finetuned['teacher']['name']}` fine-tuned for {finetuned['steps']} steps: "
                  f"{100 * finetuned['eval']['accuracy']:.2f} % clean test accuracy.", ""]
    search = results.read_json(layout.search / "summary.json")
    if search:
        out["search"] = {k: search[k] for k in ("genotype", "op_histogram", "derived_params", "derived_params_at",
                                                     "lam", "mu", "order", "steps", "total_wall_time_s")}
        lines += ["## KDL-DARTS search", "",
                  f"{search['steps']} {search['order']}-order steps, λ = {search['lam']}, μ = {search['mu']}, "
                  f"{search['total_wall_time_s']:.0f} s. Derived network at {search['derived_params_at']}: "
                  f"{search['derived_params']:,} parameters.", "",
                  *[f"- {cell} cell: " + ", ".join(f"`{op}`←{source}" for op, source in search["genotype"][cell])
                    for cell in ("normal", "reduce")], "",
                  evaluation.markdown_table(
                      ["cell", *genotypes.PRIMITIVES],
                      [[cell, *[search["op_histogram"][cell].get(op, 0) for op in genotypes.PRIMITIVES]]
                       for cell in ("normal", "reduce")]), ""]
    if curves:
        shown = results.with_symbols(curves, _symbols_per_image(layout))
        evaluation.plot_accuracy_vs_snr(shown, layout / "accuracy_vs_snr.png", title="Accuracy vs SNR (paper A)")
        for kind in config.eval.channels:
            lines += [f"## Accuracy vs SNR, {kind}", "",
                      evaluation.curves_table(shown, kind, snrs, confidence=CONFIDENCE if most_seeds >= 2 else None),
                      ""]
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    bandwidth = _bandwidth(layout)
    if bandwidth:
        out["bandwidth"] = bandwidth
        _plot_bandwidth(bandwidth, teacher, layout / "accuracy_vs_bandwidth.png")
        points = sorted(bandwidth["accuracy"])
        budgets = sorted(bandwidth["bandwidth_ratio"], key=int)
        rows = []
        for budget in budgets:
            row = ["RKD-SC (one CAT model)", budget, f"{bandwidth['bandwidth_ratio'][budget]:.4f}"]
            for point in points:
                values = bandwidth["accuracy"][point].get(budget, [])
                if not values:
                    row.append("—")
                    continue
                e = stats.mean_ci([100 * v for v in values], CONFIDENCE)
                row.append(f"{e.mean:.2f} ± {e.half_width:.2f}" if e.has_ci else f"{e.mean:.2f}")
            rows.append(row)
            for codec, labels in teacher_lib.equal_bandwidth_labels(teacher or {}).items():
                found = (teacher or {}).get("equal_bandwidth", {}).get(codec, {}).get(str(budget))
                if found:
                    row = [labels[str(budget)], budget, f"{bandwidth['bandwidth_ratio'][budget]:.4f}"]
                    for point in points:
                        kind, snr = point.split("@")
                        value = found["curves"].get(kind, {}).get(snr)
                        row.append("—" if value is None else f"{100 * value:.2f}")
                    rows.append(row)
        spread = " ± 95 % CI" if most_seeds >= 2 else ""
        lines += ["## Accuracy vs bandwidth ratio (one variable-length CAT model; the teacher at the same symbols)",
                  "", evaluation.markdown_table(["method", "symbols", "ratio",
                                                 *[p.replace("@", " ") + f" dB{spread}" for p in points]], rows),
                  "", "![bandwidth](accuracy_vs_bandwidth.png)", ""]
    compute = results.compute_rows({METHOD_LABELS[m]: arms[m] for m in arms}, describe_stages)
    if compute:
        # Summaries written before runs recorded their compute have no examples_seen: then unknown, not equal.
        recorded, equal = results.compute_recorded(compute), results.compute_equal(compute)
        out["compute"] = {"arms": compute, "equal": equal}
        lines += ["## Compute per arm (equal compute)", "", evaluation.markdown_table(
            ["method", "seeds", "optimiser steps", "of which", "batch", "examples seen"],
            [[r["method"], len(r["seeds"]), "/".join(map(str, r["steps"])), r["stages"], r["batch_size"],
              "/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in r["examples_seen"])] for r in compute]), "",
            ("Every compared arm ran the same number of optimiser steps on the same number of examples." if equal else
             "Some runs predate the recording of their compute (no examples_seen in their summary.json): "
             "delete their directories to retrain them and have it recorded." if not recorded else
             "**The compared arms did not get equal compute** (see the table; each claim's protocol says so). "
             "The baselines train `baselines.num_steps` steps with stage 2's settings; leave it unset for RKD-SC's "
             "stage 1 + stage 2 total."),
            ""]
    complexity = None
    rkdsc_runs, stage1_runs = _per_seed(layout, "rkdsc"), _per_seed(layout, "stage1")
    if teacher and (rkdsc_runs or stage1_runs):
        counts = (rkdsc_runs or stage1_runs)[0]["params"]
        complexity = {"teacher": teacher["num_params"], "student_deployed": counts["deployed"],
                      "student_transmitter": counts["transmitter"], "student_encoder": counts["encoder"],
                      "cat_encoder": counts["cat_encoder"], "receiver": counts["receiver"]}
        cnn = _per_seed(layout, "cnn")
        rows = [["teacher (features → its head; all features sent: reference)", f"{teacher['num_params']:,}", "—",
                 teacher["num_symbols"]],
                ["RKD-SC transmitter (student + CAT encoder)", f"{counts['transmitter']:,}",
                 f"{100 * (1 - counts['transmitter'] / teacher['num_params']):.2f} %",
                 (rkdsc_runs[0]["max_symbols"] if rkdsc_runs else "—")],
                ["RKD-SC transmitter + receiver", f"{counts['deployed']:,}",
                 f"{100 * (1 - counts['deployed'] / teacher['num_params']):.2f} %", ""]]
        if cnn:
            rows.append(["CNN SemCom (all)", f"{cnn[0]['params']['deployed']:,}", "", cnn[0]["num_symbols"]])
        out["complexity"] = complexity
        lines += ["## Parameters", "", evaluation.markdown_table(["model", "params", "reduction vs teacher",
                                                                   "complex symbols"], rows), ""]
        if stage1_runs:
            clean = [r["clean_accuracy"] for r in stage1_runs]
            mean, std = evaluation.mean_std(clean)
            out["stage1_clean_accuracy"] = clean
            lines += [f"Stage-1 student, clean (no channel): {100 * mean:.2f} ± {100 * std:.2f} %; teacher clean: "
                      f"{100 * teacher['clean_accuracy']:.2f} %.", ""]
    latency = results.read_json(layout / "latency.json")
    if latency:
        out["latency"] = latency
        lines += ["## Encoder latency (batch 1, this machine, same run)", "", evaluation.markdown_table(
            ["encoder", "ms / image"],
            [["teacher", latency["teacher_encoder_ms"]], ["student encoder", latency["student_encoder_ms"]],
             ["student + CAT encoder (transmitter)", latency["student_transmitter_ms"]]]), "",
            f"Teacher / transmitter: {latency['teacher_over_student_transmitter']:.2f}× on {latency['platform']} "
            f"({latency['device']}), median of {latency['repeats']}.", ""]
    exported, export_lines = export_lib.report_section(config, workdir)
    if exported:
        out["export"] = exported
        lines += export_lines
    reductions = None
    if teacher and arms.get("rkdsc"):
        reductions = {seed: 1.0 - r["params"]["deployed"] / teacher["num_params"] for seed, r in arms["rkdsc"].items()}
    verdicts = paper_claims(arms, teacher, reductions, latency, snrs, tuple(config.eval.channels), images)
    if verdicts:
        out["claims"] = [v.as_dict() for v in verdicts]
        lines += ["## Paper A's claims on this data", "",
                  "Verdict per claim from the 95 % CI of the measured quantity (paired over the seeds both arms "
                  "ran; against the one fine-tuned teacher, the CI is over RKD-SC's seeds): *reproduced* when the "
                  "whole CI lies on the claimed side of the test, *not reproduced* when it lies on the other side, "
                  "*inconclusive* otherwise and always with one seed. Ratios as fractions, differences in points. "
                  "KDL-DARTS vs DARTS is measured by the darts study, not this pipeline.", "",
                  claim_table(verdicts), ""]
    return results.finish_report(layout.root, out, lines, [], "Paper A")


def claim_table(verdicts) -> str:
    """``stats.claim_table`` with 4 decimals for ratios and values, 2 for differences in points."""
    return "\n".join([stats.claim_table_header(),
                      *(stats.claim_row(v, 2 if v.claim.quantity == "difference" else 4) for v in verdicts)])
