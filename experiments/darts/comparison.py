"""KDL-DARTS vs plain DARTS: one table from the searches and retrains of scripts/darts_fmnist.sh.

    python -m experiments.darts.comparison --runs=runs/darts_fmnist --seeds=0,1,2

Reads ``{kdl,plain}_s{seed}/summary.json`` (search) and ``{kdl,plain}_s{seed}_retrain/summary.json``
and writes ``comparison.json``, ``comparison.md`` and ``comparison.png`` (retrained test
accuracy against parameters, one point per seed) into ``--runs``.
"""

from __future__ import annotations

import collections

import numpy as np
from absl import app, flags
from etils import epath

from experiments.common import results
from rkdsc_jax import evaluation, files
from rkdsc_jax.nas.ops import PRIMITIVES
from rkdsc_jax.nas.search_space import CELL_TYPES

_RUNS = flags.DEFINE_string("runs", "runs/darts_fmnist", "Directory holding the search and retrain runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to compare.")
# DARTS's collapse shows as these ops crowding the convolutions out of the derived cells.
COLLAPSE_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
VARIANTS = {"kdl": "KDL-DARTS (λ=0.5, τ=4, μ=0.1)", "plain": "DARTS (λ=μ=0)"}


def _load(path: epath.Path) -> dict:
    found = results.read_json(path)
    if found is None:
        raise FileNotFoundError(f"{path} is missing; run scripts/darts_fmnist.sh (it resumes) to produce it.")
    return found


def collect(runs: str, seeds: list[int]) -> dict:
    """Per variant: one row per seed and the mean ± std of every number."""
    result = {}
    for variant in VARIANTS:
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
                "op_histogram": search["op_histogram"],
                "normal": [op for op, _ in search["genotype"]["normal"]],
                "reduce": [op for op, _ in search["genotype"]["reduce"]],
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
        result[variant] = {"label": VARIANTS[variant], "runs": rows, "summary": summary}
    return result


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
    lines += ["", "| method | seed | test accuracy | parameters | normal cell | reduction cell | search min |",
              "|---|---|---|---|---|---|---|"]
    for variant in result.values():
        for r in variant["runs"]:
            lines.append(f"| {variant['label']} | {r['seed']} | {100 * r['test_accuracy']:.2f} % | "
                         f"{r['params']:,} | {', '.join(r['normal'])} | {', '.join(r['reduce'])} | "
                         f"{r['search_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    from matplotlib.figure import Figure  # The object API: no global backend to select.

    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for variant in result.values():
        runs = variant["runs"]
        ax.scatter([r["params"] for r in runs], [100 * r["test_accuracy"] for r in runs], label=variant["label"])
    ax.set_xlabel("parameters of the retrained network")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    evaluation.save_figure(fig, path)


def main(argv):
    del argv
    runs = epath.Path(_RUNS.value)
    result = collect(runs, [int(s) for s in _SEEDS.value])
    table = markdown(result)
    files.atomic_write_json(runs / "comparison.json", result)
    files.atomic_write_text(runs / "comparison.md", table)
    plot(result, runs / "comparison.png")
    print(table)


if __name__ == "__main__":
    app.run(main)
