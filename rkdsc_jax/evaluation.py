"""Accuracy-vs-SNR sweeps, their plots and tables (shared by paper A and paper B).

Results are nested plain dicts, ``{method: {channel: {snr: [accuracy per seed]}}}``, so they
go to JSON as they are and any number in a report can be traced to one.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rkdsc_jax import files, stats
from rkdsc_jax.train import mesh as mesh_lib

Curves = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]


def snr_key(snr_db: float) -> str:
    """JSON keys for SNRs: '-4', '0', '12.5'."""
    return f"{snr_db:g}"


def accuracy_vs_snr(
    step: Callable,
    params: Any,
    make_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    *,
    snrs_db: Sequence[float],
    kinds: Sequence[str],
    mesh,
    seed: int = 0,
    keys: tuple[str, ...] = ("image", "label", "index", "mask"),
) -> dict[str, dict[str, float]]:
    """Accuracy at every (channel kind, SNR) of ``step(params, batch, snr_db, key, kind=...)``.

    ``step`` returns masked sums including ``count`` and ``accuracy``; it is jitted once
    per channel kind (the SNR is a traced scalar).  The channel noise depends on
    (seed, SNR, batch), so two models evaluated with one seed see the same noise.
    """
    results: dict[str, dict[str, float]] = {}
    for kind in kinds:
        jitted = jax.jit(
            functools.partial(step, kind=kind),
            in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh), None, None),
            out_shardings=mesh_lib.replicated(mesh),
        )
        results[kind] = {}
        started, count = time.perf_counter(), 0
        for snr in snrs_db:
            key = jax.random.fold_in(jax.random.PRNGKey(seed), int(round(snr * 1000)) % 2**32)
            totals = None
            for batch in make_batches():
                sums = jitted(params, mesh_lib.shard_batch(batch, mesh, keys), jnp.float32(snr), key)
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            if totals is None:
                raise ValueError("The evaluation set is empty.")
            totals = jax.device_get(totals)
            results[kind][snr_key(snr)] = float(totals["accuracy"] / totals["count"])
            count += int(totals["count"])
        seconds = time.perf_counter() - started
        logging.info("Accuracy vs SNR over %s: %d SNRs, %d examples in %.0f s (%.0f examples/s).", kind,
                     len(snrs_db), count, seconds, count / max(seconds, 1e-9))
    return results


def collect_seeds(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """[{kind: {snr: acc}} per seed] → {kind: {snr: [acc, …]}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in per_seed:
        for kind, curve in run.items():
            for snr, acc in curve.items():
                out.setdefault(kind, {}).setdefault(snr, []).append(acc)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_accuracy_vs_snr(curves: Curves, path, *, title: str = "", ylabel: str = "accuracy (%)") -> None:
    """One panel per channel; mean over seeds as a line, ± one standard deviation shaded."""
    from matplotlib.figure import Figure  # The object API: the caller's backend is never changed.

    kinds = sorted({kind for method in curves.values() for kind in method})
    fig = Figure(figsize=(5.2 * len(kinds), 4))
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        for method, by_kind in curves.items():
            if kind not in by_kind:
                continue
            snrs = sorted(by_kind[kind], key=float)
            stats = np.array([mean_std(by_kind[kind][s]) for s in snrs]) * 100
            x = [float(s) for s in snrs]
            line, = ax.plot(x, stats[:, 0], marker="o", ms=3, label=method)
            ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2,
                            color=line.get_color())
        ax.set_title(kind.upper() if kind == "awgn" else kind.capitalize())
        ax.set_xlabel("SNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path, dpi: int = 120) -> None:
    """Writes a matplotlib figure atomically (PNG bytes, then rename), on any file system."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(os.fspath(path))[1][1:] or "png", dpi=dpi)
    files.atomic_write_bytes(path, buffer.getvalue())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value):
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def curves_table(curves: Curves, kind: str, snrs: Sequence[str], confidence: float | None = None) -> str:
    """Methods × SNRs in percent: 'mean ± std' over seeds, or with ``confidence`` (e.g. 0.95)
    'mean ± CI half-width' (Student t, ``stats.mean_ci``; one seed shows its value and '(n=1)')."""
    rows = []
    for method, by_kind in curves.items():
        if kind not in by_kind:
            continue
        row = [method]
        for snr in snrs:
            values = by_kind[kind].get(snr)
            if not values:
                row.append("—")
            elif confidence is not None:
                e = stats.mean_ci(values, confidence)
                row.append(f"{100 * e.mean:.2f} ± {100 * e.half_width:.2f}" if e.has_ci else f"{100 * e.mean:.2f} (n=1)")
            else:
                mean, std = mean_std(values)
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * mean:.2f}")
        rows.append(row)
    spread = "" if confidence is None else f" (±{100 * confidence:g} % CI)"
    return markdown_table(["method", *[f"{s} dB{spread}" for s in snrs]], rows)


def curve_differences(curves: Curves, method_a: str, method_b: str, kind: str, snrs: Sequence[str],
                      confidence: float = 0.95) -> dict:
    """{snr: stats.Estimate of accuracy(a) − accuracy(b) in points}, paired over seeds.

    ``collect_seeds`` lists each arm's accuracies in seed order, so two arms run with the
    same seeds are paired position by position; arms with different seed counts use Welch.
    """
    out = {}
    for snr in snrs:
        a, b = curves[method_a][kind][snr], curves[method_b][kind][snr]
        a, b = [100 * v for v in a], [100 * v for v in b]
        out[snr] = (stats.paired_difference(a, b, confidence) if len(a) == len(b)
                    else stats.welch_difference(a, b, confidence))
    return out
