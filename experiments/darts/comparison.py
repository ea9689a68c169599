"""KDL-DARTS vs plain DARTS: one table from the searches and retrains of scripts/darts_fmnist.sh.

    python -m experiments.darts.comparison --runs=runs/darts_fmnist --seeds=0,1,2

Reads ``{variant}_s{seed}/summary.json`` (search) and ``{variant}_s{seed}_retrain/summary.json``
for ``plain`` and each KDL variant whose runs exist (``kdl``; ``kdl_pc``, the per-cell-type penalty;
``kdl_pc_mu<μ>``, the μ sweep of ``MUS="…" scripts/darts_fmnist.sh``) and writes ``comparison.json``,
``comparison.md`` (tables, how far α moved, the μ sweep, the claims with 95 % CIs and verdicts) and
``comparison.png`` (the params-vs-accuracy plane: every seed, and each variant's mean ± CI) into
``--runs``.
"""

from __future__ import annotations

import collections

import numpy as np
from absl import app, flags
from etils import epath

from experiments.common import results
from rkdsc_jax import evaluation, files, stats
from rkdsc_jax.nas.ops import PRIMITIVES
from rkdsc_jax.nas.search_space import CELL_TYPES

_RUNS = flags.DEFINE_string("runs", "runs/darts_fmnist", "Directory holding the search and retrain runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to compare.")
# DARTS's collapse shows as these ops crowding the convolutions out of the derived cells.
COLLAPSE_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
VARIANTS = {"kdl": "KDL-DARTS (λ=0.5, τ=4, μ=0.1)",
            "kdl_pc": "KDL-DARTS (λ=0.5, τ=4, μ=1, C per cell type)", "plain": "DARTS (λ=μ=0)"}
REQUIRED = ("plain",)  # The reference; each KDL variant joins when its runs exist.
SWEEP_PREFIX = "kdl_pc_mu"  # kdl_pc with another μ: ``kdl_pc_mu3_s0`` (scripts/darts_fmnist.sh, MUS).
CONFIDENCE = 0.95


def _load(path: epath.Path) -> dict:
    found = results.read_json(path)
    if found is None:
        raise FileNotFoundError(f"{path} is missing; run scripts/darts_fmnist.sh (it resumes) to produce it.")
    return found


def sweep_variants(runs: str, first_seed: int) -> dict[str, str]:
    """The μ sweep's variants that have runs, by μ: name → label."""
    found = {}
    for path in epath.Path(runs).glob(f"{SWEEP_PREFIX}*_s{first_seed}"):
        name = path.name[:-len(f"_s{first_seed}")]
        try:
            mu = float(name[len(SWEEP_PREFIX):])
        except ValueError:
            continue
        found[mu] = (name, f"KDL-DARTS (λ=0.5, τ=4, μ={mu:g}, C per cell type)")
    return dict(found[mu] for mu in sorted(found))


def collect(runs: str, seeds: list[int]) -> dict:
    """Per variant: one row per seed and the mean ± std of every number."""
    result = {}
    variants = VARIANTS | sweep_variants(runs, seeds[0])
    for variant, label in variants.items():  # One with its first seed's runs must have every seed's (_load).
        if variant not in REQUIRED and not (epath.Path(runs) / f"{variant}_s{seeds[0]}" / "summary.json").exists():
            continue
        rows = []
        for seed in seeds:
            search = _load(epath.Path(runs) / f"{variant}_s{seed}" / "summary.json")
            retrain = _load(epath.Path(runs) / f"{variant}_s{seed}_retrain" / "summary.json")
            rows.append({
                "seed": seed,
                "test_accuracy": retrain["eval"]["accuracy"],
                "params": retrain["num_params"],
                "search_val_accuracy": search["val"]["accuracy"],
                "complexity": search["complexity"],
                "mu": search.get("mu"),
                "op_histogram": search["op_histogram"],
                "normal": [op for op, _ in search["genotype"]["normal"]],
                "reduce": [op for op, _ in search["genotype"]["reduce"]],
                # How far the search moved α (older summaries lack it): mean softmax TV per edge.
                "alpha_tv": {cell: search.get("alpha_movement", {}).get(cell, {}).get("mean_tv")
                             for cell in CELL_TYPES},
                "search_minutes": search["total_wall_time_s"] / 60,
                "retrain_minutes": retrain["total_wall_time_s"] / 60,
            })
        histogram = {cell: collections.Counter() for cell in CELL_TYPES}
        for row in rows:
            for cell in CELL_TYPES:
                histogram[cell].update(row["op_histogram"][cell])
        summary = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
                   for k in ("test_accuracy", "params", "search_val_accuracy", "complexity", "search_minutes",
                             "retrain_minutes")}
        summary["op_histogram"] = {cell: {op: histogram[cell][op] for op in PRIMITIVES if histogram[cell][op]}
                                   for cell in CELL_TYPES}
        summary["pool_skip_none_edges_per_seed"] = sum(
            n for cell in CELL_TYPES for op, n in histogram[cell].items() if op in COLLAPSE_OPS) / len(rows)
        result[variant] = {"label": label, "runs": rows, "summary": summary}
    return result


def claims(result: dict) -> list[stats.Verdict]:
    """SPEC §4.1: KDL-DARTS finds cells with fewer parameters and higher accuracy than DARTS; each
    KDL variant against plain DARTS, paired over the seeds (same data split, order and init)."""
    plain = {r["seed"]: r for r in result["plain"]["runs"]}
    verdicts = []
    for variant, found in result.items():
        if variant == "plain":
            continue
        kdl = {r["seed"]: r for r in found["runs"]}
        protocol = (f"seeds {sorted(kdl)}; retrained networks, test accuracy of each; "
                    f"{found['label']} vs {result['plain']['label']}")
        size = stats.Claim(f"{found['label']}: fewer parameters than DARTS's cells", "ratio", "<=", 1.0,
                           paper_value="< 1", unit="×", protocol=protocol)
        verdicts.append(stats.evaluate_claim(size, {s: r["params"] for s, r in kdl.items()},
                                             {s: r["params"] for s, r in plain.items()}, CONFIDENCE))
        accuracy = stats.Claim(f"{found['label']}: higher accuracy than DARTS", "difference", ">=", 0.0,
                               paper_value="> 0", unit="points", protocol=protocol)
        verdicts.append(stats.evaluate_claim(accuracy, {s: 100 * r["test_accuracy"] for s, r in kdl.items()},
                                             {s: 100 * r["test_accuracy"] for s, r in plain.items()}, CONFIDENCE))
    return verdicts


def _tv(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    lines = ["| method | retrained test accuracy | parameters | C(α) | search val accuracy | pool/skip/none edges "
             "of 16 | normal cells' ops (all seeds) | reduction cells' ops |", "|---|---|---|---|---|---|---|---|"]
    for variant in result.values():
        s = variant["summary"]
        ops = [", ".join(f"{op} {n}" for op, n in sorted(s["op_histogram"][cell].items(), key=lambda kv: -kv[1]))
               for cell in CELL_TYPES]
        lines.append(f"| {variant['label']} | {100 * s['test_accuracy']['mean']:.2f} ± "
                     f"{100 * s['test_accuracy']['std']:.2f} % | {s['params']['mean']:,.0f} ± "
                     f"{s['params']['std']:,.0f} | {s['complexity']['mean']:.3f} | "
                     f"{100 * s['search_val_accuracy']['mean']:.1f} % | {s['pool_skip_none_edges_per_seed']:.1f} | "
                     f"{ops[0]} | {ops[1]} |")
    lines += ["", "| method | seed | test accuracy | parameters | α moved (TV normal / reduce) | normal cell | "
              "reduction cell | search min |", "|---|---|---|---|---|---|---|---|"]
    for variant in result.values():
        for r in variant["runs"]:
            tv = r.get("alpha_tv", {})
            lines.append(f"| {variant['label']} | {r['seed']} | {100 * r['test_accuracy']:.2f} % | "
                         f"{r['params']:,} | {_tv(tv.get('normal'))} / {_tv(tv.get('reduce'))} | "
                         f"{', '.join(r['normal'])} | {', '.join(r['reduce'])} | {r['search_minutes']:.1f} |")
    lines += ["", "α moved: the mean over edges of the total-variation distance between softmax(α) before and "
              "after the search (0: unchanged, 1: all weight moved; rkdsc_jax.nas.genotypes.alpha_movement)."]
    sweep = mu_sweep(result)
    if len(sweep) > 2:
        lines += ["", "## The μ sweep (KDL-DARTS with C per cell type; μ = 0 is plain DARTS)", "",
                  "| μ | seeds | parameters | retrained test accuracy | C(α) | α moved (TV normal / reduce) |",
                  "|---|---|---|---|---|---|"]
        for row in sweep:
            lines.append(f"| {row['mu']:g} | {row['seeds']} | {row['params']:,.0f} | {100 * row['test_accuracy']:.2f} % | "
                         f"{row['complexity']:.3f} | {_tv(row['tv_normal'])} / {_tv(row['tv_reduce'])} |")
    verdicts = claims(result)
    if verdicts:
        lines += ["", "## Claims (SPEC §4.1), 95 % CI over seeds", "", stats.claim_table(verdicts)]
    return "\n".join(lines) + "\n"


def mu_sweep(result: dict) -> list[dict]:
    """Means per μ over plain DARTS (μ = 0) and the per-cell-type variants, by μ."""
    rows = []
    for variant, found in result.items():
        if variant not in ("plain", "kdl_pc") and not variant.startswith(SWEEP_PREFIX):
            continue  # kdl's μ is on another (global) scale.
        runs = found["runs"]
        tv = {cell: [r["alpha_tv"][cell] for r in runs if r["alpha_tv"].get(cell) is not None] for cell in CELL_TYPES}
        recorded_mu = runs[0]["mu"]  # Older summaries lack it; kdl_pc's default is μ = 1.
        rows.append({"mu": 0.0 if variant == "plain" else float(1.0 if recorded_mu is None else recorded_mu),
                     "variant": variant, "seeds": len(runs),
                     "params": found["summary"]["params"]["mean"],
                     "test_accuracy": found["summary"]["test_accuracy"]["mean"],
                     "complexity": found["summary"]["complexity"]["mean"],
                     "tv_normal": float(np.mean(tv["normal"])) if tv["normal"] else None,
                     "tv_reduce": float(np.mean(tv["reduce"])) if tv["reduce"] else None})
    return sorted(rows, key=lambda r: r["mu"])


def plot(result: dict, path) -> None:
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for variant in result.values():
        runs = variant["runs"]
        params = stats.mean_ci([r["params"] for r in runs], CONFIDENCE)
        accuracy = stats.mean_ci([100 * r["test_accuracy"] for r in runs], CONFIDENCE)
        dots = ax.scatter([r["params"] for r in runs], [100 * r["test_accuracy"] for r in runs], alpha=0.4, s=18)
        ax.errorbar([params.mean], [accuracy.mean], xerr=[params.half_width if params.has_ci else 0.0],
                    yerr=[accuracy.half_width if accuracy.has_ci else 0.0], marker="o", capsize=3,
                    color=dots.get_facecolor()[0][:3], label=f"{variant['label']} (mean ± 95 % CI)")
    sweep = mu_sweep(result)
    if len(sweep) > 2:  # The sweep's means joined in order of μ, each labelled.
        ax.plot([r["params"] for r in sweep], [100 * r["test_accuracy"] for r in sweep], color="0.5", lw=0.8,
                zorder=0)
        for r in sweep:
            ax.annotate(f"μ={r['mu']:g}", (r["params"], 100 * r["test_accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.margins(0.15)  # Room for the labels.
    ax.set_title("Retrained networks: parameters vs accuracy (dots: seeds)", fontsize=9)
    ax.set_xlabel("parameters of the retrained network")
    ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1e3:,.0f}k")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left" if len(sweep) > 2 else "best")
    fig.tight_layout()
    evaluation.save_figure(fig, path)


def main(argv):
    del argv
    runs = epath.Path(_RUNS.value)
    result = collect(runs, [int(s) for s in _SEEDS.value])
    table = markdown(result)
    files.atomic_write_json(runs / "comparison.json", result | {"claims": [v.as_dict() for v in claims(result)],
                                                             "mu_sweep": mu_sweep(result)})
    files.atomic_write_text(runs / "comparison.md", table)
    plot(result, runs / "comparison.png")
    print(table)


if __name__ == "__main__":
    app.run(main)
