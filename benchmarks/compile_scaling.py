"""How the DARTS supernet's compile time grows with depth, and what the graph is made of.

    python -m benchmarks.compile_scaling [--layers=1,2,3] [--batch_size=8] [--impl=auto]
        [--xla_flags=,--xla_backend_optimization_level=0] [--steps=2]
        [--out=benchmarks/results/compile_scaling.json]

For each depth (and each ``XLA_FLAGS`` variant, one process each): the time to trace and
lower, then compile, the supernet's initialisation and its first-order search step; the
lowered StableHLO's size and its most frequent ops; the optimised HLO's instruction and
fusion counts; and the step's median time after compiling.  Issue 16's goal is a compile
time that does not grow with depth: the table's "vs 1 cell" column is the ratio that says
whether it does (linear growth gives the number of cells; more means superlinear).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

_MARK = "COMPILE_SCALING_RESULT "


def measure(args, layers: int) -> dict:
    import jax
    import jax.numpy as jnp

    from benchmarks import search_step
    from rkdsc_jax.nas import search as search_lib
    from rkdsc_jax.nas.search_space import SearchNetwork

    model = SearchNetwork(10, channels=args.channels, layers=layers, impl=args.impl)
    schedule = search_lib.epoch_cosine_schedule(0.025, 0.001, 50, 1000)
    w_tx, a_tx = search_lib.make_weight_optimizer(schedule), search_lib.make_arch_optimizer()
    sample = jnp.zeros((1, args.image_size, args.image_size, args.in_channels))
    init = jax.jit(lambda x: search_lib.create_search_state(model, w_tx, a_tx, x, 0))
    start = time.perf_counter()
    lowered = init.lower(sample)
    init_lower_s = time.perf_counter() - start
    init_compiled = lowered.compile()
    init_compile_s = time.perf_counter() - start - init_lower_s

    step = jax.jit(functools.partial(search_lib.search_step, hp=search_lib.SearchHParams(order="first"),
                                     complexity=None, lr_schedule=schedule), donate_argnums=0)
    batch = search_step.search_batch(args, np.random.default_rng(0))
    state = init_compiled(sample)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    step_lower_s = time.perf_counter() - start
    stablehlo = lowered.as_text()
    compiled = lowered.compile()
    step_compile_s = time.perf_counter() - start - step_lower_s
    hlo = compiled.as_text()
    stablehlo_ops = collections.Counter(re.findall(r"\bstablehlo\.(\w+)", stablehlo))
    hlo_ops = collections.Counter(re.findall(r"^\s+%?\S+ = \S+ ([\w-]+)\(", hlo, re.M))

    holder = {"state": state}

    def one():
        holder["state"], out = compiled(holder["state"], batch)
        jax.block_until_ready(out)

    one()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    return {"layers": layers, "xla_flags": os.environ.get("XLA_FLAGS", ""), "init_lower_s": init_lower_s,
            "init_compile_s": init_compile_s, "step_lower_s": step_lower_s, "step_compile_s": step_compile_s,
            "stablehlo_ops": sum(stablehlo_ops.values()), "stablehlo_top": stablehlo_ops.most_common(6),
            "hlo_instructions": sum(hlo_ops.values()), "hlo_fusions": hlo_ops.get("fusion", 0),
            "median_step_s": float(np.median(times)) if times else None, "platform": jax.default_backend(),
            "version": jax.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8, help="Compile time barely depends on it.")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--in_channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="Timed steps after compiling (0: none).")
    parser.add_argument("--impl", default="auto", help="auto | taps | lax")
    parser.add_argument("--xla_flags", type=lambda s: s.split(","), default=[""],
                        help="XLA_FLAGS variants, comma-separated ('': none).")
    parser.add_argument("--out", default="benchmarks/results/compile_scaling.json")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(_MARK + json.dumps(measure(args, args.worker)), flush=True)
        return

    from rkdsc_jax import files

    setting = {k: getattr(args, k) for k in ("channels", "batch_size", "image_size", "in_channels", "impl")}
    print(f"Supernet compile scaling, {setting}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores.",
          flush=True)
    rows = []
    for xla_flags in args.xla_flags:
        for layers in args.layers:
            command = [sys.executable, "-m", "benchmarks.compile_scaling", f"--worker={layers}",
                       f"--channels={args.channels}", f"--batch_size={args.batch_size}",
                       f"--image_size={args.image_size}", f"--in_channels={args.in_channels}",
                       f"--steps={args.steps}", f"--impl={args.impl}"]
            env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, (os.environ.get("XLA_FLAGS", ""), xla_flags))))
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
            if done.returncode or not lines:
                raise RuntimeError(f"{layers} cells ({xla_flags or 'default flags'}) failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len(_MARK):]) | {"variant": xla_flags})
            r = rows[-1]
            print(f"  {layers} cell(s) {xla_flags or ''}: step compiles in {r['step_compile_s']:.1f} s", flush=True)
            files.atomic_write_json(args.out, {"benchmark": "compile_scaling", "setting": setting, "rows": rows})
    print(f"\n{'cells':>5} {'XLA flags':>36} {'init s':>7} {'lower s':>7} {'compile s':>9} {'vs 1 cell':>9} "
          f"{'StableHLO ops':>13} {'HLO instr':>9} {'fusions':>7} {'step s':>7}")
    for r in rows:
        base = next((b for b in rows if b["variant"] == r["variant"] and b["layers"] == min(args.layers)), r)
        ratio = r["step_compile_s"] / base["step_compile_s"]
        step = f"{r['median_step_s']:.2f}" if r["median_step_s"] is not None else "-"
        print(f"{r['layers']:>5} {r['variant'] or 'default':>36} {r['init_compile_s']:>7.1f} "
              f"{r['step_lower_s']:>7.1f} {r['step_compile_s']:>9.1f} {ratio:>8.2f}x {r['stablehlo_ops']:>13} "
              f"{r['hlo_instructions']:>9} {r['hlo_fusions']:>7} {step:>7}")
    top = ", ".join(f"{name} {count}" for name, count in rows[0]["stablehlo_top"])
    print(f"most frequent StableHLO ops at {rows[0]['layers']} cell(s): {top}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
