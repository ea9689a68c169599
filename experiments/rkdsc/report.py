"""Paper A's ``report.md``, ``results.json`` and plots, from whatever stages have finished."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments.common import export as export_lib
from experiments.common import results
from experiments.common.layout import RunLayout
from rkdsc_jax import evaluation
from rkdsc_jax.nas import genotypes

METHOD_LABELS = {
    "rkdsc": "RKD-SC", "stage1": "stage-1 student (no codec)", "no_kd": "same student, no KD",
    "cnn": "CNN SemCom", "teacher": "teacher over the channel",
}


def _per_seed(layout: RunLayout, method: str) -> list[dict]:
    return results.per_seed(layout.method_dir(method))


def collect_curves(layout: RunLayout, methods) -> dict:
    curves = {}
    for method in ("rkdsc", *[m for m in methods if m != "rkdsc"], "teacher"):
        runs = _per_seed(layout, method) if method != "teacher" else []
        if method == "teacher":
            teacher = results.read_json(layout.run("teacher") / "summary.json")
            runs = [teacher] if teacher else []
        if runs:
            curves[METHOD_LABELS[method]] = evaluation.collect_seeds([r["curves"] for r in runs])
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


def _plot_bandwidth(bandwidth: dict, path) -> None:
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for point, by_budget in bandwidth["accuracy"].items():
        budgets = sorted(by_budget, key=int)
        stats = np.array([evaluation.mean_std(by_budget[b]) for b in budgets]) * 100
        x = [bandwidth["bandwidth_ratio"][b] for b in budgets]
        kind, snr = point.split("@")
        line, = ax.plot(x, stats[:, 0], marker="o", label=f"{kind} {snr} dB")
        ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("bandwidth ratio (complex symbols / input values)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("One variable-length CAT model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)


def _symbols_per_image(layout: RunLayout) -> dict[str, int]:
    """What each method sends: RKD-SC its largest budget, the others their feature width."""
    symbols = {}
    for method, key in (("rkdsc", "max_symbols"), ("no_kd", "max_symbols"), ("stage1", "num_symbols"),
                        ("cnn", "num_symbols")):
        runs = _per_seed(layout, method)
        if runs and key in runs[0]:
            symbols[method] = runs[0][key]
    teacher = results.read_json(layout.run("teacher") / "summary.json")
    if teacher and "num_symbols" in teacher:
        symbols["teacher"] = teacher["num_symbols"]
    return symbols


def _mean(curves, method: str, kind: str, snr: str) -> float | None:
    values = curves.get(METHOD_LABELS[method], {}).get(kind, {}).get(snr)
    return evaluation.mean_std(values)[0] if values else None


def paper_claims(curves: dict, complexity: dict | None, latency: dict | None, teacher_clean: float | None,
                 snrs: list[str]) -> list[dict]:
    """Paper A's claims (SPEC §4.4) next to what this run measured; nothing is tuned to them."""
    claims = []
    if complexity:
        reduction = 1.0 - complexity["student_deployed"] / complexity["teacher"]
        claims.append({"claim": "parameters cut by 94.06 % (student transmitter + receiver vs teacher)",
                       "measured": f"{100 * reduction:.2f} %", "holds": bool(reduction >= 0.9406)})
    high, low = snrs[-1], snrs[0]
    for kind in ("awgn", "rayleigh"):
        student, teacher = _mean(curves, "rkdsc", kind, high), _mean(curves, "teacher", kind, high)
        if student is not None and teacher is not None:
            claims.append({"claim": f"keeps 95.86 % of the teacher's accuracy at {high} dB ({kind}, teacher "
                                    "over the same channel)",
                           "measured": f"{100 * student / teacher:.2f} % ({100 * student:.2f} vs {100 * teacher:.2f})",
                           "holds": bool(student / teacher >= 0.9586)})
        if student is not None and teacher_clean and kind == "awgn":
            claims.append({"claim": f"… of the teacher's clean accuracy at {high} dB ({kind})",
                           "measured": f"{100 * student / teacher_clean:.2f} %",
                           "holds": bool(student / teacher_clean >= 0.9586)})
        student, teacher = _mean(curves, "rkdsc", kind, low), _mean(curves, "teacher", kind, low)
        if student is not None and teacher is not None:
            relative = student / teacher - 1.0 if teacher > 0 else float("inf")
            claims.append({"claim": f"more than 83.12 % higher than the teacher at {low} dB ({kind})",
                           "measured": f"{100 * relative:+.1f} % relative, {100 * (student - teacher):+.2f} points "
                                       f"({100 * student:.2f} vs {100 * teacher:.2f})",
                           "holds": bool(relative > 0.8312)})
        for snr in ("0", high):
            kd, nokd = _mean(curves, "rkdsc", kind, snr), _mean(curves, "no_kd", kind, snr)
            if kd is not None and nokd is not None:
                claims.append({"claim": f"distillation beats the same student trained without KD at {snr} dB ({kind})",
                               "measured": f"{100 * kd:.2f} vs {100 * nokd:.2f}", "holds": bool(kd > nokd)})
    if latency:
        ratio = latency["teacher_over_student_transmitter"]
        claims.append({"claim": "encoder ~10× faster than the teacher's (1058.86 / 106.21 ms on an IoT device)",
                       "measured": f"{ratio:.2f}× ({latency['teacher_encoder_ms']:.2f} vs "
                                   f"{latency['student_transmitter_ms']:.2f} ms, {latency['platform']}, batch 1)",
                       "holds": bool(ratio >= 9.97)})
    return claims


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever stages have finished."""
    layout = RunLayout.from_config(config, workdir)
    methods = list(config.pipeline.methods)
    curves = collect_curves(layout, methods)
    snrs = [evaluation.snr_key(s) for s in config.eval.snrs_db]
    out: dict[str, Any] = {"curves": curves, "snrs_db": snrs, "seeds": list(config.pipeline.seeds)}
    lines = ["# RKD-SC pipeline (paper A)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; student `{config.student.encoder}`; "
             f"stage-2 SNR U{tuple(config.stage2.snr_range)} dB over {', '.join(config.stage2.channels)}; "
             f"seeds {list(config.pipeline.seeds)}. Accuracy in %, mean ± std over seeds.", ""]
    teacher = results.read_json(layout.run("teacher") / "summary.json")
    finetuned = results.read_json(layout.teacher_run / "summary.json")
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
        evaluation.plot_accuracy_vs_snr(curves, layout / "accuracy_vs_snr.png", title="Accuracy vs SNR (paper A)")
        symbols = _symbols_per_image(layout)
        if symbols:
            lines += ["Complex channel symbols per image: " + "; ".join(
                f"{METHOD_LABELS[m]} {n}" for m, n in symbols.items()) + ".", ""]
        for kind in config.eval.channels:
            lines += [f"## Accuracy vs SNR, {kind}", "", evaluation.curves_table(curves, kind, snrs), ""]
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    bandwidth = _bandwidth(layout)
    if bandwidth:
        out["bandwidth"] = bandwidth
        _plot_bandwidth(bandwidth, layout / "accuracy_vs_bandwidth.png")
        points = sorted(bandwidth["accuracy"])
        budgets = sorted(bandwidth["bandwidth_ratio"], key=int)
        rows = []
        for budget in budgets:
            row = [budget, f"{bandwidth['bandwidth_ratio'][budget]:.4f}"]
            for point in points:
                values = bandwidth["accuracy"][point].get(budget, [])
                mean, std = evaluation.mean_std(values) if values else (float("nan"), 0.0)
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f}")
            rows.append(row)
        lines += ["## Accuracy vs bandwidth ratio (one variable-length CAT model)", "",
                  evaluation.markdown_table(["symbols", "ratio", *[p.replace("@", " ") + " dB" for p in points]], rows),
                  "", "![bandwidth](accuracy_vs_bandwidth.png)", ""]
    complexity = None
    rkdsc_runs, stage1_runs = _per_seed(layout, "rkdsc"), _per_seed(layout, "stage1")
    if teacher and (rkdsc_runs or stage1_runs):
        counts = (rkdsc_runs or stage1_runs)[0]["params"]
        complexity = {"teacher": teacher["num_params"], "student_deployed": counts["deployed"],
                      "student_transmitter": counts["transmitter"], "student_encoder": counts["encoder"],
                      "cat_encoder": counts["cat_encoder"], "receiver": counts["receiver"]}
        cnn = _per_seed(layout, "cnn")
        rows = [["teacher (features → its head)", f"{teacher['num_params']:,}", "—", teacher["num_symbols"]],
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
    claims = paper_claims(curves, complexity, latency, teacher["clean_accuracy"] if teacher else None, snrs)
    return results.finish_report(layout.root, out, lines, claims, "Paper A")
