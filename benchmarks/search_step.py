"""Time and memory of one DARTS search step: JAX (``rkdsc_jax.nas``) against PyTorch, same run.

    python -m benchmarks.search_step [--layers=8 --channels=16 --batch_size=64 --image_size=32]
        [--orders=first,second] [--steps=5] [--torch_device=cpu|cuda] [--retrain]
        [--out=benchmarks/results/search_step.json]

The defaults are DARTS's CIFAR-10 search (batch 64, 8 cells, 16 channels, 32×32×3);
``--layers=1`` is the quick variant.  Every measurement runs in its own process, so peak
memory is per configuration:

- ``jax first``: α step (first order) + weight step, one jitted program;
- ``jax second/unrolled``: the exact second-order α gradient (``jax.grad`` through the
  virtual step); ``jax second/hvp``: the same number from DARTS's decomposition with an
  exact Hessian-vector product (forward over reverse with XLA's native ops, reverse over
  reverse with the CPU kernels); ``jax second/finite_difference``: DARTS's approximation,
  the same arithmetic as PyTorch's;
- ``torch first`` / ``torch second``: ``benchmarks/torch_darts.py`` (DARTS's eager code,
  finite-difference second order), NCHW and channels-last;
- ``--retrain``: also the retrain network from DARTS_V2 (20 cells, 36 channels, auxiliary
  head, drop-path 0.2, batch 96), one SGD step (JAX only).

Reported: compile (JAX) or first-step time, median and p90 step time after it, the step's
memory (JAX: XLA's buffer assignment for the step, arguments + temporaries; PyTorch: the
growth of the process's peak RSS over the steps) and the process's peak RSS, and JAX's step
time relative to PyTorch's best layout for the same order.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import time

import numpy as np

_MARK = "SEARCH_STEP_RESULT "


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def search_batch(args, rng):
    """A random training and validation batch of ``args``' shape (batch_size, image_size, in_channels)."""
    shape = (args.batch_size, args.image_size, args.image_size, args.in_channels)
    return {"image": rng.normal(size=shape).astype(np.float32),
            "label": rng.integers(0, 10, args.batch_size).astype(np.int32),
            "val_image": rng.normal(size=shape).astype(np.float32),
            "val_label": rng.integers(0, 10, args.batch_size).astype(np.int32)}


def _timed(step, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.percentile(times, 90))


def run_jax(args, order: str, method: str) -> dict:
    import jax
    import jax.numpy as jnp

    from rkdsc_jax.nas import search as search_lib
    from rkdsc_jax.nas.search_space import SearchNetwork

    model = SearchNetwork(10, channels=args.channels, layers=args.layers, impl=args.impl)
    schedule = search_lib.epoch_cosine_schedule(0.025, 0.001, 50, 1000)
    w_tx = search_lib.make_weight_optimizer(schedule)
    a_tx = search_lib.make_arch_optimizer()
    sample = jnp.zeros((1, args.image_size, args.image_size, args.in_channels))
    state = jax.jit(lambda x: search_lib.create_search_state(model, w_tx, a_tx, x, 0))(sample)
    hp = search_lib.SearchHParams(order=order, second_order_method=method)
    step = jax.jit(functools.partial(search_lib.search_step, hp=hp, complexity=None, lr_schedule=schedule),
                   donate_argnums=0)
    batch = jax.device_put(search_batch(args, np.random.default_rng(0)))
    name = f"jax_{order}" + (f"_{method}" if order == "second" else "")
    row = _time_jax(step, state, (batch,), args.steps, args.profile_dir, name)
    return row | {"network": "search", "order": order, "variant": method if order == "second" else ""}


def _profile(one, hlo_text: str, directory: str, name: str, top: int = 12) -> dict:
    """Where one step's time goes: a ``jax.profiler`` trace of one step, its XLA ops' times
    summed by the JAX operation that produced them (HLO ``op_name`` metadata, cell index
    dropped), split into forward and backward (``transpose(...)``) work."""
    import jax

    trace_dir = os.path.join(directory, name)
    jax.profiler.start_trace(trace_dir)
    one()
    jax.profiler.stop_trace()
    op_names = dict(re.findall(r'%(\S+) = [^\n]*?op_name="([^"]*)"', hlo_text))
    trace = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))[-1]
    with gzip.open(trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e.get("name") in op_names]
    by_op, by_pass = collections.Counter(), collections.Counter()
    for event in events:
        name = op_names[event["name"]]
        backward = "transpose(" in name
        name = re.sub(r"^jit\([^)]*\)/|cell_\d+/|transpose\(|jvp\([^)]*\)|\)", "", name).strip("/")
        by_op[("backward " if backward else "forward ") + name] += event["dur"] / 1e3
        by_pass["backward" if backward else "forward"] += event["dur"] / 1e3
    return {"trace_dir": trace_dir, "ms_by_pass": dict(by_pass),
            "top_ops_ms": [[name, ms] for name, ms in by_op.most_common(top)]}


def run_jax_retrain(args) -> dict:
    """One SGD step of the DARTS_V2 retrain network (DARTS's CIFAR-10 evaluation setting)."""
    import jax
    import jax.numpy as jnp
    import optax

    from rkdsc_jax import genotype_data
    from rkdsc_jax.nas import genotypes
    from rkdsc_jax.nas.network import GenotypeNetwork

    batch_size = 96
    model = GenotypeNetwork(genotypes.load(genotype_data.path("DARTS_V2")), 10, channels=36, layers=20,
                            auxiliary=True, drop_path_prob=0.2, impl=args.impl, remat_cells=args.remat_cells)
    shape = (batch_size, args.image_size, args.image_size, args.in_channels)
    variables = jax.jit(lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False))(
        jnp.zeros((1,) + shape[1:]))
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(3e-4), optax.sgd(0.025, 0.9))
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]), jax.random.PRNGKey(1))

    def step(state, images, labels):
        params, stats, opt_state, rng = state
        rng, key = jax.random.split(rng)

        def loss(params):
            (logits, aux), updates = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                                 rngs={"dropout": key}, mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels
            return jnp.mean(ce(logits, labels)) + 0.4 * jnp.mean(ce(aux, labels)), updates["batch_stats"]

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state, rng), value

    rng = np.random.default_rng(0)
    images = jax.device_put(rng.normal(size=shape).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32))
    row = _time_jax(jax.jit(step, donate_argnums=0), state, (images, labels), args.steps, args.profile_dir,
                    "jax_retrain")
    return row | {"network": "retrain DARTS_V2 20x36, batch 96", "order": "retrain",
                  "variant": "remat" if args.remat_cells else ""}


def _time_jax(step, state, inputs, steps: int, profile_dir: str = "", name: str = "") -> dict:
    import jax

    start = time.perf_counter()
    compiled = step.lower(state, *inputs).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    step_mb = None
    if memory is not None:
        step_mb = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                   - memory.alias_size_in_bytes) / 2**20
    cost = compiled.cost_analysis()  # XLA's count: tells FLOP-bound ratios from overhead-bound ones.
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gflops = cost["flops"] / 1e9 if cost and "flops" in cost else None
    holder = {"state": state}

    def one():
        holder["state"], out = compiled(holder["state"], *inputs)
        jax.block_until_ready(out)

    start = time.perf_counter()
    one()
    first_s = time.perf_counter() - start
    median, p90 = _timed(one, steps)
    profile = _profile(one, compiled.as_text(), profile_dir, name) if profile_dir else None
    return {"profile": profile, "framework": "jax", "compile_s": compile_s, "first_step_s": first_s, "median_step_s": median,
            "p90_step_s": p90, "step_memory_mb": step_mb, "gflops": gflops, "peak_rss_mb": _peak_rss_mb(),
            "platform": jax.default_backend(), "version": jax.__version__}


def run_torch(args, order: str, layout: str) -> dict:
    import torch

    from benchmarks import torch_darts

    torch.manual_seed(0)
    torch.set_num_threads(args.torch_threads or os.cpu_count())
    device = torch.device(args.torch_device)
    cuda = device.type == "cuda"
    model = torch_darts.Network(args.channels, 10, args.layers, in_channels=args.in_channels)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    search = torch_darts.Search(model, order)
    batch = {k: torch.from_numpy(v).to(device) for k, v in search_batch(args, np.random.default_rng(0)).items()}
    for key in ("image", "val_image"):
        batch[key] = batch[key].permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    def one():
        search.step(batch["image"], batch["label"].long(), batch["val_image"], batch["val_label"].long())
        if cuda:
            torch.cuda.synchronize()

    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    start = time.perf_counter()
    one()
    first_s = time.perf_counter() - start
    median, p90 = _timed(one, args.steps)
    peak = _peak_rss_mb()
    step_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak - base
    return {"framework": "torch", "network": "search", "order": order, "variant": layout, "compile_s": 0.0,
            "first_step_s": first_s, "median_step_s": median, "p90_step_s": p90, "step_memory_mb": step_mb,
            "peak_rss_mb": peak, "platform": args.torch_device, "version": torch.__version__,
            "threads": torch.get_num_threads()}


def _configurations(args):
    if args.retrain:
        yield "jax", "retrain", ""
    for order in args.orders:
        if "jax" in args.frameworks:
            for method in (("",) if order == "first" else tuple(args.jax_second_order_methods)):
                yield "jax", order, method or "unrolled"
        if "torch" in args.frameworks:
            for layout in args.torch_layouts:
                yield "torch", order, layout


def _worker_args(args) -> list[str]:
    keys = ("layers", "channels", "batch_size", "image_size", "in_channels", "steps", "impl", "torch_threads",
            "torch_device", "profile_dir")
    flags = [f"--{k}={getattr(args, k)}" for k in keys]
    return flags + (["--remat_cells"] if args.remat_cells else [])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--in_channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--orders", type=lambda s: [o for o in s.split(",") if o], default=["first", "second"],
                        help="first,second; empty (--orders=) with --retrain times the retrain network only.")
    parser.add_argument("--frameworks", type=lambda s: s.split(","), default=["jax", "torch"])
    parser.add_argument("--jax_second_order_methods", type=lambda s: s.split(","),
                        default=["unrolled", "hvp", "finite_difference"])
    parser.add_argument("--torch_layouts", type=lambda s: s.split(","), default=["nchw", "channels_last"])
    parser.add_argument("--torch_threads", type=int, default=0, help="0: one per core.")
    parser.add_argument("--torch_device", default="cpu", help="cpu | cuda: where PyTorch runs.")
    parser.add_argument("--retrain", action="store_true", help="Also time the DARTS_V2 retrain network's step.")
    parser.add_argument("--remat_cells", action="store_true", help="The retrain network recomputes its cells.")
    parser.add_argument("--impl", default="auto", help="JAX op implementation: auto | taps | lax.")
    parser.add_argument("--profile_dir", default="",
                        help="Also trace one JAX step per configuration here and report where its time goes.")
    parser.add_argument("--out", default="benchmarks/results/search_step.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for order in args.orders:
        if order not in ("first", "second"):
            parser.error(f"--orders takes first and/or second, got {order!r}.")

    if args.worker:  # One measurement in this process.
        framework, order, variant = args.worker.split(":")
        if order == "retrain":
            row = run_jax_retrain(args)
        else:
            row = run_jax(args, order, variant) if framework == "jax" else run_torch(args, order, variant)
        print(_MARK + json.dumps(row), flush=True)
        return

    setting = {k: getattr(args, k) for k in ("layers", "channels", "batch_size", "image_size", "in_channels")}
    print(f"DARTS search step, {setting}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores; one process "
          "per configuration.", flush=True)
    rows = []
    for framework, order, variant in _configurations(args):
        command = [sys.executable, "-m", "benchmarks.search_step", f"--worker={framework}:{order}:{variant}",
                   *_worker_args(args)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
        if done.returncode or not lines:
            raise RuntimeError(f"{framework} {order} {variant} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len(_MARK):]))
        r = rows[-1]
        print(f"  {framework} {order} {r['variant']}: {1e3 * r['median_step_s']:.0f} ms/step", flush=True)
        _write(args, setting, rows)  # After every configuration: a long run stopped early keeps its rows.
    for row in rows:
        torch_rows = [r for r in rows if r["framework"] == "torch" and r["order"] == row["order"]
                      and r["network"] == row["network"]]
        row["vs_torch_best"] = (min(r["median_step_s"] for r in torch_rows) / row["median_step_s"]
                                if torch_rows else None)
    print(f"\n{'framework':>9} {'order':>6} {'variant':>17} {'compile s':>9} {'median ms':>10} {'p90 ms':>8} "
          f"{'step MB':>8} {'GFLOP':>7} {'peak RSS MB':>11} {'speed vs torch':>15}")
    for r in rows:
        ratio = f"{r['vs_torch_best']:.2f}x" if r["vs_torch_best"] else "-"
        step_mb = f"{r['step_memory_mb']:.0f}" if r["step_memory_mb"] is not None else "-"
        gflops = f"{r['gflops']:.1f}" if r.get("gflops") is not None else "-"
        print(f"{r['framework']:>9} {r['order']:>6} {r['variant']:>17} {r['compile_s']:>9.1f} "
              f"{1e3 * r['median_step_s']:>10.0f} {1e3 * r['p90_step_s']:>8.0f} {step_mb:>8} {gflops:>7} "
              f"{r['peak_rss_mb']:>11.0f} {ratio:>15}")
    print("speed vs torch: PyTorch's faster layout's step time / this step time (>1: faster than PyTorch).")
    for r in rows:
        if r.get("profile"):
            p = r["profile"]
            passes = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(p["ms_by_pass"].items()))
            print(f"\nJAX {r['order']} {r['variant']}: XLA op time by pass: {passes}; top operations:")
            for name, ms in p["top_ops_ms"]:
                print(f"  {ms:8.1f} ms  {name}")
    _write(args, setting, rows)
    print(f"wrote {args.out}")


def _write(args, setting: dict, rows: list[dict]) -> None:
    from rkdsc_jax import files

    files.atomic_write_json(args.out, {"benchmark": "search_step", "setting": setting, "cpu_count": os.cpu_count(),
                                       "cpus_allowed": len(os.sched_getaffinity(0)), "steps": args.steps,
                                       "rows": rows})


if __name__ == "__main__":
    main()
