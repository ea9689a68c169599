"""Train-step time of the default small CNN on 1, 2 and 8 (virtual) devices, in one run.

    python -m benchmarks.train_step [--batch_size=128] [--steps=20] [--out=benchmarks/results/train_step.json]

On CPU the devices are virtual (``--xla_force_host_platform_device_count=8``): the same
cores, but XLA splits the batch, which changes how the convolutions are scheduled.  On an
accelerator host the real devices are used.
"""

import os

from rkdsc_jax.train.mesh import configure_host_devices

configure_host_devices(8)  # Before JAX initialises its backend.

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import fmnist_classifier  # noqa: E402
from rkdsc_jax import files, models, train  # noqa: E402


def time_step(num_devices: int, batch_size: int, steps: int, config) -> dict:
    mesh = train.make_mesh(num_devices)
    model = models.classifier_from_config(config.model, 10)
    tx = train.make_optimizer(config.train, 1000)
    state = jax.jit(functools.partial(train.create_train_state, model, tx, seed=0, train=False),
                    out_shardings=train.replicated(mesh))(jnp.zeros((1, 28, 28, 1)))
    step = train.jit_train_step(train.classifier_train_step, mesh)
    rng = np.random.default_rng(0)
    batch = train.shard_batch({
        "image": rng.normal(size=(batch_size, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }, mesh)
    compile_start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - compile_start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"devices": num_devices, "batch_size": batch_size, "median_step_s": median,
            "p90_step_s": float(np.percentile(times, 90)), "examples_per_s": batch_size / median,
            "first_step_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    config = fmnist_classifier.get_config()
    counts = [n for n in (1, 2, 8) if n <= jax.device_count()]
    rows = [time_step(n, args.batch_size, args.steps, config) for n in counts]
    base = rows[0]["median_step_s"]
    for row in rows:
        row["speedup_vs_1_device"] = base / row["median_step_s"]
    print(f"\nSmall CNN ({config.model.features}, batch {args.batch_size}) on {jax.devices()[0].platform}, "
          f"{os.cpu_count()} cores, JAX {jax.__version__}")
    print(f"{'devices':>8} {'median ms/step':>15} {'p90 ms':>8} {'examples/s':>11} {'vs 1 device':>12}")
    for r in rows:
        print(f"{r['devices']:>8} {1e3 * r['median_step_s']:>15.1f} {1e3 * r['p90_step_s']:>8.1f} "
              f"{r['examples_per_s']:>11.0f} {r['speedup_vs_1_device']:>11.2f}x")
    result = {"benchmark": "train_step", "jax": jax.__version__, "platform": jax.devices()[0].platform,
              "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "model": dict(config.model), "rows": rows}
    files.atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
