"""Paper B's ``report.md``, ``results.json`` and plots, from whatever runs have finished."""

from __future__ import annotations

import json
from typing import Any

from experiments.common import export as export_lib
from experiments.common import results
from experiments.common.layout import RunLayout
from experiments.ltosc.methods import METHOD_LABELS
from rkdsc_jax import evaluation


def collect_curves(layout: RunLayout, methods) -> dict:
    curves = {}
    for method in methods:
        per_seed = [s["curves"] for s in results.per_seed(layout.method_dir(method))]
        if per_seed:
            curves[METHOD_LABELS.get(method, method)] = evaluation.collect_seeds(per_seed)
    teacher = results.read_json(layout.run("la_tosc") / "summary.json")
    if teacher:
        curves[METHOD_LABELS["la_tosc"]] = evaluation.collect_seeds([teacher["curves"]])
    return curves


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever runs have finished."""
    layout = RunLayout.from_config(config, workdir)
    methods = list(config.study.methods)
    curves = collect_curves(layout, methods)
    out: dict[str, Any] = {"curves": curves, "snrs_db": [evaluation.snr_key(s) for s in config.eval.snrs_db]}
    lines = ["# L-TOSC-KD study (paper B)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; "
             f"{config.model.num_symbols} complex channel uses per image; "
             f"train SNR U{tuple(config.objective.snr_range)} dB over {', '.join(config.objective.channels)}; "
             f"seeds {list(config.study.seeds)}. Accuracy in %, mean ± std over seeds.", ""]
    if curves:
        evaluation.plot_accuracy_vs_snr(curves, layout / "accuracy_vs_snr.png", title="Accuracy vs SNR (paper B)")
        for kind in config.eval.channels:
            lines += [f"## Accuracy vs SNR, {kind}", "",
                      evaluation.curves_table(curves, kind, [evaluation.snr_key(s) for s in config.eval.report_snrs_db]),
                      ""]
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    complexity = _complexity_rows(layout, methods)
    if complexity:
        out["complexity"] = complexity
        lines += ["## Models", "", evaluation.markdown_table(
            ["method", "params", "transmitter params", "channel uses", "train examples/s"],
            [[r["method"], f"{r['params']:,}", f"{r['transmitter_params']:,}", r["num_symbols"],
              r["examples_per_second"]] for r in complexity]), ""]
    sizes = _size_sweep(config, layout)
    if sizes:
        out["train_size"] = sizes
        _plot_size_sweep(sizes, layout / "accuracy_vs_train_size.png")
        lines += ["## Accuracy vs training-set size (paper B Fig. 3)", "",
                  evaluation.markdown_table(["method", "examples", *[f"{k} {s} dB" for k, s in sizes["points"]]],
                                            sizes["rows"]), "", "![size](accuracy_vs_train_size.png)", ""]
    ablation = results.read_json(layout / "fdm_ablation.json")
    if ablation:
        out["fdm_ablation"] = ablation
        lines += _ablation_lines(ablation)
    verify = results.read_json(layout.store / "verify.json")
    if verify:
        out["store_verification"] = verify
        lines += ["## Store verification", "", "```", json.dumps(verify, indent=2), "```", ""]
    exported, export_lines = export_lib.report_section(config, workdir)
    if exported:
        out["export"] = exported
        lines += export_lines
    return results.finish_report(layout.root, out, lines, _claims(curves), "Paper B")


def _complexity_rows(layout: RunLayout, methods) -> list[dict]:
    rows = []
    for method in methods:
        summary = results.read_json(layout.run(method, 0) / "summary.json")
        if summary is None:
            summary = next(iter(results.per_seed(layout.method_dir(method))), None)
        if summary:
            rows.append({"method": METHOD_LABELS.get(method, method), "params": summary["num_params"],
                         "transmitter_params": summary["transmitter_params"], "num_symbols": summary["num_symbols"],
                         "examples_per_second": summary.get("examples_per_second")})
    teacher = results.read_json(layout.run("la_tosc") / "summary.json")
    if teacher:
        rows.append({"method": METHOD_LABELS["la_tosc"], "params": teacher["num_params"],
                     "transmitter_params": teacher["num_params"], "num_symbols": teacher["num_symbols"],
                     "examples_per_second": None})
    return rows


def _size_sweep(config, layout: RunLayout) -> dict | None:
    rows, series = [], {}
    points = [(kind, evaluation.snr_key(s)) for kind in config.eval.channels for s in config.study.size_snrs_db]
    for method in config.study.size_methods:
        for size in config.study.train_sizes:
            summary = results.read_json(layout.size_run(size, method) / "summary.json")
            if not summary:
                continue
            values = [summary["curves"][k][s] for k, s in points]
            rows.append([METHOD_LABELS.get(method, method), size, *[f"{100 * v:.2f}" for v in values]])
            series.setdefault(METHOD_LABELS.get(method, method), {})[size] = dict(
                zip([f"{k}@{s}" for k, s in points], values))
    return {"points": points, "rows": rows, "series": series} if rows else None


def _plot_size_sweep(sizes: dict, path) -> None:
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    keys = [f"{k}@{s}" for k, s in sizes["points"]]
    fig = Figure(figsize=(4.5 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method, by_size in sizes["series"].items():
            xs = sorted(by_size)
            ax.plot(xs, [100 * by_size[x][key] for x in xs], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_title(key.replace("@", " at ") + " dB")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)


def _ablation_lines(ablation: dict) -> list[str]:
    storage, per_epoch = ablation["storage"], ablation["seconds_per_epoch"]
    rows = [[k.replace("_", " "), f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else v)]
            for k, v in storage.items()]
    return [
        "## FDM ablation (paper B Table II)", "",
        evaluation.markdown_table(["storage", "value"], rows), "",
        evaluation.markdown_table(
            ["distillation", "s/step", "s/epoch"],
            [["stored top-K (FDM)", ablation["seconds_per_step"]["l_tosc_kd"], per_epoch["l_tosc_kd"]],
             ["teacher in the loop", ablation["seconds_per_step"]["l_tosc_kd_online"],
              per_epoch["l_tosc_kd_online"]]]),
        "", f"FDM is {ablation['speedup']:.2f}× faster per epoch on {ablation['platform']} "
            f"(batch {ablation['batch_size']}, median of {ablation['steps_timed']} steps each, same run); "
            f"the one-off store costs {ablation.get('precompute_wall_time_s') or float('nan'):.0f} s.", "",
    ]


def _mean_at(curves, method, kind, snr):
    values = curves.get(method, {}).get(kind, {}).get(snr)
    return evaluation.mean_std(values)[0] if values else None


def _claims(curves: dict) -> list[dict]:
    """Paper B's qualitative claims, checked on the measured curves (no tuning)."""
    claims = []
    kd, nokd, teacher = METHOD_LABELS["l_tosc_kd"], METHOD_LABELS["l_tosc"], METHOD_LABELS["la_tosc"]
    for kind in ("awgn", "rayleigh"):
        a, b = _mean_at(curves, kd, kind, "0"), _mean_at(curves, nokd, kind, "0")
        if a is not None and b is not None:
            claims.append({"claim": f"KD beats no-KD at 0 dB ({kind})",
                           "measured": f"{100 * a:.2f} vs {100 * b:.2f}", "holds": bool(a > b)})
        for snr in ("-4", "-2"):
            a, t = _mean_at(curves, kd, kind, snr), _mean_at(curves, teacher, kind, snr)
            if a is not None and t is not None:
                claims.append({"claim": f"KD student beats the teacher over the channel at {snr} dB ({kind})",
                               "measured": f"{100 * a:.2f} vs {100 * t:.2f}", "holds": bool(a > t)})
    return claims
