"""Paper B's ``report.md``, ``results.json`` and plots, from whatever runs have finished."""

from __future__ import annotations

import json
from typing import Any

from experiments.common import export as export_lib
from experiments.common import results
from experiments.common import teacher as teacher_lib
from experiments.common.layout import RunLayout
from experiments.ltosc.methods import METHOD_LABELS
from rkdsc_jax import evaluation, stats

CONFIDENCE = 0.95


def collect_curves(layout: RunLayout, methods) -> dict:
    """{row label: {kind: {snr: [accuracy per seed]}}}: the methods, then the teacher's rows (the
    640-symbol reference and the equal-bandwidth codecs at the students' symbol count)."""
    curves = {}
    for method in methods:
        per_seed = [s["curves"] for s in results.per_seed(layout.method_dir(method))]
        if per_seed:
            curves[METHOD_LABELS.get(method, method)] = evaluation.collect_seeds(per_seed)
    curves.update(teacher_lib.teacher_rows(results.read_json(layout.run("la_tosc") / "summary.json")))
    return curves


def snr_tables(curves: dict, kinds, snrs, seeds_per_row: int) -> list[str]:
    """One accuracy table per channel: mean ± 95 % CI over seeds with ≥ 2 seeds, else the values."""
    lines = []
    for kind in kinds:
        lines += [f"## Accuracy vs SNR, {kind}", "",
                  evaluation.curves_table(curves, kind, snrs, confidence=CONFIDENCE if seeds_per_row >= 2 else None),
                  ""]
    return lines


def write_report(config, workdir: str) -> dict:
    """``report.md``, ``results.json`` and the plots, from whatever runs have finished."""
    layout = RunLayout.from_config(config, workdir)
    methods = list(config.study.methods)
    curves = collect_curves(layout, methods)
    out: dict[str, Any] = {"curves": curves, "snrs_db": [evaluation.snr_key(s) for s in config.eval.snrs_db]}
    teacher = results.read_json(layout.run("la_tosc") / "summary.json")
    arms = {METHOD_LABELS.get(m, m): results.seed_summaries(layout, m) for m in methods}
    most_seeds = max([len(v) for v in arms.values()] or [0])
    symbols = {label: next(iter(by_seed.values()))["num_symbols"] for label, by_seed in arms.items() if by_seed}
    lines = ["# L-TOSC-KD study (paper B)", "",
             f"Dataset `{config.data.name}`; teacher `{config.teacher.kind}`; "
             f"{config.model.num_symbols} complex channel uses per image; "
             f"train SNR U{tuple(config.objective.snr_range)} dB over {', '.join(config.objective.channels)}; "
             f"seeds {list(config.study.seeds)}; {test_images(config, layout)} test images. Accuracy in %, "
             + ("mean ± 95 % CI half-width (Student t) over seeds." if most_seeds >= 2 else "one seed.")
             + " Every row states its complex channel symbols per image.", ""]
    if teacher and teacher.get("equal_bandwidth"):
        lines += [teacher_lib.equal_bandwidth_paragraph(teacher, f"the students' {config.model.num_symbols} complex symbols",
                                                        "the students' SNR range and channels"), ""]
    if curves:
        evaluation.plot_accuracy_vs_snr(results.with_symbols(curves, symbols), layout / "accuracy_vs_snr.png",
                                        title="Accuracy vs SNR (paper B)")
        lines += snr_tables(results.with_symbols(curves, symbols), config.eval.channels,
                            [evaluation.snr_key(s) for s in config.eval.report_snrs_db], most_seeds)
        lines += ["![accuracy vs SNR](accuracy_vs_snr.png)", ""]
    compute = results.compute_rows(arms, lambda first: {"data_stream": first.get("data_stream", "—")})
    if compute:
        out["compute"] = {"arms": compute, "equal": results.compute_equal(compute)}
        lines += ["## Compute per arm (equal compute)", "", evaluation.markdown_table(
            ["method", "seeds", "optimiser steps", "batch", "examples seen", "training data"],
            [[r["method"], len(r["seeds"]), "/".join(map(str, r["steps"])), r["batch_size"],
              "/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in r["examples_seen"]), r["data_stream"]]
             for r in compute]), "",
            ("Every compared arm ran the same number of optimiser steps on the same number of examples."
             if out["compute"]["equal"] else "**The compared arms did not get equal compute** (see the table).")
            + ("" if len({r["data_stream"] for r in compute}) <= 1 else
               " Their training data differ: the KD arms replay the store's pre-augmented views, the label arms "
               "draw fresh augmentations (as many examples, not the same views)."),
            ""]
    complexity = _complexity_rows(layout, methods)
    if complexity:
        out["complexity"] = complexity
        lines += ["## Models", "", evaluation.markdown_table(
            ["method", "params", "transmitter params", "channel uses", "train examples/s"],
            [[r["method"], f"{r['params']:,}", f"{r['transmitter_params']:,}", r["num_symbols"],
              r["examples_per_second"]] for r in complexity]), ""]
    ablations = _loss_ablations(config, layout)
    if ablations:
        out["loss_ablations"] = ablations["curves"]
        lines += _variant_tables(
            config, "Loss ablations: IB vs KL, and β (paper B §III-B)",
            f"L-TOSC-KD with the main runs' steps and data; the IB rows differ only in β of eq. 13 (main runs: "
            f"β = {config.objective.beta:g}), the KL row distils with the KL loss instead.", ablations)
    longer = _longer_training(config, layout)
    if longer:
        out["longer_training"] = {"factor": longer["factor"], "curves": longer["curves"]}
        lines += _variant_tables(
            config, "Longer training: have the arms converged?",
            f"The main runs against the same arms trained {longer['factor']}× as many steps (same data stream, "
            "the warm-up and cosine decay stretched).", longer)
    sizes = _size_sweep(config, layout)
    if sizes:
        out["train_size"] = sizes
        _plot_size_sweep(sizes, layout / "accuracy_vs_train_size.png")
        lines += ["## Accuracy vs training-set size (paper B Fig. 3)", "",
                  evaluation.markdown_table(["method", "examples", "seeds", "steps",
                                             *[f"{k} {s} dB" for k, s in sizes["points"]]], sizes["rows"]), "",
                  "Every size trains the same optimiser steps with the same schedule (equal compute); smaller "
                  "sets are nested random subsets, so their runs see each example more often. Accuracy in %, "
                  "mean ± 95 % CI over seeds.", "", "![size](accuracy_vs_train_size.png)", ""]
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
    verdicts = paper_claims(config, {m: results.seed_summaries(layout, m) for m in methods}, teacher, sizes,
                            ablation, test_images(config, layout))
    if longer:
        verdicts += paper_claims(config, longer["arms"], teacher, None, None, test_images(config, layout),
                                 when=f", {longer['factor']}× the steps")
    kl = results.seed_summaries(layout, "l_tosc_kd_kl")
    if kl:
        verdicts += loss_claims(config, results.seed_summaries(layout, "l_tosc_kd"), kl,
                                test_images(config, layout))
    if verdicts:
        out["claims"] = [v.as_dict() for v in verdicts]
        lines += ["## Paper B's claims on this data", "",
                  "Verdict per claim from the 95 % CI of the measured quantity (paired over the seeds both arms "
                  "ran; against the one fine-tuned teacher, the CI is over the student's seeds): *reproduced* "
                  "when the whole CI lies on the claimed side of the test, *not reproduced* when it lies on the "
                  "other side, *inconclusive* otherwise and always with one seed.", "",
                  stats.claim_table(verdicts), ""]
    return results.finish_report(layout.root, out, lines, [], "Paper B")


def _variant_tables(config, title: str, intro: str, variants: dict) -> list[str]:
    """A section with one accuracy table per channel of ``variants['curves']`` (mean ± 95 % CI)."""
    lines = [f"## {title}", "", intro + " Accuracy in %, mean ± 95 % CI over seeds.", ""]
    for kind in config.eval.channels:
        lines += [f"**{kind}**", "", evaluation.curves_table(
            variants["curves"], kind, [evaluation.snr_key(s) for s in config.eval.report_snrs_db],
            confidence=CONFIDENCE if variants["most_seeds"] >= 2 else None), ""]
    return lines


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
        rows.append({"method": teacher_lib.REFERENCE_LABEL.format(symbols=teacher["num_symbols"]),
                     "params": teacher["num_params"],
                     "transmitter_params": teacher["num_params"], "num_symbols": teacher["num_symbols"],
                     "examples_per_second": None})
    return rows


def _loss_ablations(config, layout: RunLayout) -> dict | None:
    """{curves: {row label: {kind: {snr: [accuracy per seed]}}}, most_seeds} of L-TOSC-KD at its
    main β, with the KL loss, and at each β of ``study.betas``."""
    main_runs, kl = results.seed_summaries(layout, "l_tosc_kd"), results.seed_summaries(layout, "l_tosc_kd_kl")
    rows = {f"L-TOSC-KD, IB loss, β = {config.objective.beta:g} (main runs)": main_runs, "L-TOSC-KD, KL loss": kl}
    for beta in config.study.get("betas", ()):
        found = {seed: results.read_json(layout.beta_run(beta, "l_tosc_kd", seed) / "summary.json")
                 for seed in config.study.ablation_seeds}
        rows[f"L-TOSC-KD, IB loss, β = {beta:g}"] = {seed: s for seed, s in found.items() if s}
    rows = {label: by_seed for label, by_seed in rows.items() if by_seed}
    if len(rows) < 2:
        return None
    curves = {label: evaluation.collect_seeds([s["curves"] for s in by_seed.values()])
              for label, by_seed in rows.items()}
    return {"curves": curves, "most_seeds": max(len(v) for v in rows.values())}


def _longer_training(config, layout: RunLayout) -> dict | None:
    """{factor, arms {method: {seed: summary}}, curves {row label: {kind: {snr: [accuracy per seed]}}},
    most_seeds} of ``study.long_methods`` at the main runs' steps and ``study.long_factor`` times them."""
    factor = config.study.get("long_factor")
    if not factor:
        return None
    arms, curves = {}, {}
    for method in config.study.get("long_methods", ()):
        label = METHOD_LABELS.get(method, method)
        long = {seed: results.read_json(layout.long_run(factor, method, seed) / "summary.json")
                for seed in config.study.seeds}
        long = {seed: s for seed, s in long.items() if s}
        if not long:
            continue
        arms[method] = long
        for by_seed in (results.seed_summaries(layout, method), long):
            if by_seed:
                steps = "/".join(str(v) for v in sorted({s.get("steps") for s in by_seed.values()}, key=str))
                curves[f"{label}, {steps} steps"] = evaluation.collect_seeds([s["curves"] for s in by_seed.values()])
    if not arms:
        return None
    return {"factor": factor, "arms": arms, "curves": curves,
            "most_seeds": max(len(v) for v in arms.values())}


def loss_claims(config, ib: dict[int, dict], kl: dict[int, dict], images="all") -> list[stats.Verdict]:
    """The IB loss against the KL loss at 0 dB, paired over the seeds both ran."""
    verdicts = []
    for kind in config.eval.channels:
        a, b = results.curve_points(ib, kind, "0"), results.curve_points(kl, kind, "0")
        if a and b:
            claim = stats.Claim(f"the IB loss beats the KL loss at 0 dB ({kind})", "difference", ">=", 0.0,
                                paper_value="> 0 (IB is the paper's loss)", unit="points",
                                protocol=(f"{_arm_protocol('IB', ib)}; {_arm_protocol('KL', kl)}; {images} test "
                                          f"images; {config.model.num_symbols} symbols"))
            verdicts.append(stats.evaluate_claim(claim, a, b, CONFIDENCE))
    return verdicts


def _size_sweep(config, layout: RunLayout) -> dict | None:
    """{points, rows (mean ± CI over seeds per method and size), series {label: {size: {point: mean}}},
    per_seed {label: {size: {point: {seed: accuracy %}}}}, steps {label: {size: [steps]}}}."""
    rows, series, per_seed, steps = [], {}, {}, {}
    points = [(kind, evaluation.snr_key(s)) for kind in config.eval.channels for s in config.study.size_snrs_db]
    for method in config.study.size_methods:
        label = METHOD_LABELS.get(method, method)
        for size in config.study.train_sizes:
            found = {seed: results.read_json(layout.size_run(size, method, seed) / "summary.json")
                     for seed in config.study.size_seeds}
            found = {seed: summary for seed, summary in found.items() if summary}
            if not found:
                continue
            values = {f"{k}@{s}": {seed: 100 * summary["curves"][k][s] for seed, summary in found.items()}
                      for k, s in points}
            estimates = [stats.mean_ci(list(v.values()), CONFIDENCE) for v in values.values()]
            symbols = next(iter(found.values()))["num_symbols"]
            rows.append([f"{label} ({symbols} symbols)", f"{size:,}", len(found),
                         "/".join(str(v) for v in sorted({s.get("steps") for s in found.values()}, key=str)),
                         *[_mean_pm(e) for e in estimates]])
            per_seed.setdefault(label, {})[size] = values
            series.setdefault(label, {})[size] = {key: e.mean for key, e in zip(values, estimates)}
            steps.setdefault(label, {})[size] = sorted({s.get("steps") for s in found.values()}, key=str)
    if not rows:
        return None
    return {"points": points, "rows": rows, "series": series, "per_seed": per_seed, "steps": steps}


def _mean_pm(estimate: stats.Estimate) -> str:
    return f"{estimate.mean:.2f} ± {estimate.half_width:.2f}" if estimate.has_ci else f"{estimate.mean:.2f}"


def _plot_size_sweep(sizes: dict, path) -> None:
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    keys = [f"{k}@{s}" for k, s in sizes["points"]]
    fig = Figure(figsize=(4.5 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method, by_size in sizes["per_seed"].items():
            xs = sorted(by_size)
            estimates = [stats.mean_ci(list(by_size[x][key].values()), CONFIDENCE) for x in xs]
            errors = [e.half_width if e.has_ci else 0.0 for e in estimates]
            ax.errorbar(xs, [e.mean for e in estimates], yerr=errors, marker="o", capsize=3, label=method)
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


def test_images(config, layout: RunLayout):
    """How many test images every accuracy was measured on (the teacher's evaluation counted them)."""
    finetuned = results.read_json(layout.teacher_run / "summary.json") or {}
    count = (finetuned.get("eval") or {}).get("count")
    return f"{count:,}" if count else (config.data.get("num_eval_examples") or "all")


def _arm_protocol(label: str, by_seed: dict[int, dict]) -> str:
    first = next(iter(by_seed.values()))
    return f"{label}: {first.get('steps', '?')} steps, {first.get('examples_seen', '?'):,} examples" if isinstance(
        first.get("examples_seen"), int) else f"{label}: {first.get('steps', '?')} steps"


def paper_claims(config, arms: dict[str, dict[int, dict]], teacher: dict | None, sizes: dict | None,
                 ablation: dict | None, images="all", when: str = "") -> list[stats.Verdict]:
    """Paper B's claims (SPEC §3.5) as tests with verdicts, over the seeds each arm ran.

    Differences in accuracy points, paired over shared seeds; the teacher is one fine-tuned
    model sent at the students' symbol count through the PCA codec (never the 640-symbol
    reference), so "student − teacher" has the student's seeds as its samples.  ``arms``:
    {method: {seed: summary}} (``seed_summaries``); ``images``: the number of test images, for
    the protocol column; ``when`` ends the accuracy claims' names (e.g. ", 3× the steps")."""
    verdicts = []
    k = config.model.num_symbols
    kd_label = METHOD_LABELS["l_tosc_kd"]
    kd = arms.get("l_tosc_kd", {})

    def protocol(*pairs) -> str:
        parts = [_arm_protocol(label, by_seed) for label, by_seed in pairs if by_seed]
        steps = {next(iter(b.values())).get("examples_seen") for _, b in pairs if b}
        note = "" if len(steps) <= 1 else "UNEQUAL compute; "
        return f"{note}{'; '.join(parts)}; {images} test images; {k} symbols"

    if kd:
        for kind in config.eval.channels:
            for method, paper in (("l_tosc", 1.3), ("eff_tosc", 6.6), ("res_tosc", 12.4)):
                other = arms.get(method, {})
                a, b = results.curve_points(kd, kind, "0"), results.curve_points(other, kind, "0")
                if not a or not b:
                    continue
                label = METHOD_LABELS[method]
                claim = stats.Claim(f"L-TOSC-KD beats {label} at 0 dB ({kind}){when}", "difference", ">=", 0.0,
                                    paper_value=paper, unit="points",
                                    protocol=protocol((kd_label, kd), (label, other)))
                verdicts.append(stats.evaluate_claim(claim, a, b, CONFIDENCE))
            if teacher and teacher.get("equal_bandwidth"):
                codec, pca = teacher_lib.comparison_codec(teacher, k)
                for snr_db in config.eval.report_snrs_db:
                    snr = evaluation.snr_key(snr_db)
                    if snr_db >= 0 or not pca or snr not in pca["curves"].get(kind, {}):
                        continue
                    a = results.curve_points(kd, kind, snr)
                    if not a:
                        continue
                    fixed = {seed: 100 * pca["curves"][kind][snr] for seed in a}  # One teacher: paired with each seed.
                    claim = stats.Claim(
                        f"L-TOSC-KD beats the teacher at {snr} dB ({kind}; teacher through {codec} at {k} symbols){when}",
                        "difference", ">=", 0.0, paper_value="> 0", unit="points",
                        protocol=(protocol((kd_label, kd)) + f"; teacher codec fitted on "
                                  f"{teacher['codec_fit_examples']:,} training images"))
                    verdicts.append(stats.evaluate_claim(claim, a, fixed, CONFIDENCE))
    if sizes:
        kd_sizes = sizes["per_seed"].get(kd_label, {})
        nokd_sizes = sizes["per_seed"].get(METHOD_LABELS["l_tosc"], {})
        shared = sorted(set(kd_sizes) & set(nokd_sizes))
        full = max(shared, default=None)
        for size in shared:
            if size == full:
                continue
            steps = "/".join(map(str, sizes["steps"][kd_label][size] + sizes["steps"][METHOD_LABELS["l_tosc"]][size]))
            for point, kd_values in kd_sizes[size].items():
                kind, snr = point.split("@")
                claim = stats.Claim(
                    f"with less data ({size:,} examples; the paper: 0.6M images), L-TOSC-KD beats L-TOSC ({kind}, "
                    f"{snr} dB)", "difference", ">=", 0.0, paper_value=15.5, unit="points",
                    protocol=f"{size:,} of {full:,} examples, {steps} steps each (equal compute); seeds "
                             f"{sorted(kd_values)}; {images} test images; {k} symbols")
                verdicts.append(stats.evaluate_claim(claim, kd_values, nokd_sizes[size][point], CONFIDENCE))
    if ablation:
        seconds = ablation["seconds_per_step"]
        claim = stats.Claim("FDM: stored top-K logits train faster than the teacher in the loop", "ratio", ">=", 1.0,
                            paper_value="> 1 (Table II)", unit="×",
                            protocol=f"one timing run: median of {ablation['steps_timed']} steps of batch "
                                     f"{ablation['batch_size']} on {ablation['platform']}")
        verdicts.append(stats.evaluate_claim(claim, [seconds["l_tosc_kd_online"]], seconds["l_tosc_kd"], CONFIDENCE))
    return verdicts
