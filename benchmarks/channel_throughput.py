"""Channel throughput: jitted ``channels.simulate`` against a plain NumPy implementation.

Both sides do the same computation on complex64 symbols (per-sample SNR, CN(0, σ²) noise,
Rayleigh block fading h ~ CN(0, 1) per sample, perfect-CSI ZF equalisation), in the same
run, and report complex symbols per second (median of several timed repeats, after a
warm-up call that also compiles the JAX version).

On a CPU both sides are bound by random-number generation. JAX's threefry costs more per
sample than NumPy's PCG64 + ziggurat, but XLA spreads it over all cores while NumPy's
generator runs on one, so the ratio depends on the core count and on what else the
machine is running (on a loaded 2-core box JAX drops below NumPy). Compare numbers from
the same run only.

    python -m benchmarks.channel_throughput [--out benchmarks/results/channel_throughput.json]
"""

import argparse
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax import channels, files

# (batch, k): two training-like batches and one long vector (each of the last two is 2^20 symbols).
SIZES = ((256, 256), (256, 4096), (1, 1 << 20))
KINDS = ("awgn", "rayleigh")


def numpy_simulate(rng, z, snr_db, kind):
    """Reference: y = h·z + n with n ~ CN(0, σ²), then ZF y/h (h = 1 for AWGN)."""
    std = np.sqrt(10.0 ** (-snr_db / 10.0) / 2.0)[:, None]  # per real part
    noise = rng.standard_normal(z.shape, np.float32) + 1j * rng.standard_normal(z.shape, np.float32)
    noise *= std
    if kind == "awgn":
        return z + noise
    hshape = (z.shape[0], 1)
    h = (rng.standard_normal(hshape, np.float32)
         + 1j * rng.standard_normal(hshape, np.float32)) * np.float32(np.sqrt(0.5))
    return (h * z + noise) / h


def median_seconds(call, repeats):
    call(0)  # warm-up: compiles the JAX version, touches the memory for both
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        call(r + 1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(batch, k, kind, repeats, prng_impl):
    rng = np.random.default_rng(0)
    z_np = ((rng.standard_normal((batch, k)) + 1j * rng.standard_normal((batch, k)))
            / np.sqrt(2)).astype(np.complex64)
    snr_np = rng.uniform(-5, 15, batch).astype(np.float32)
    z, snr = jnp.asarray(z_np), jnp.asarray(snr_np)
    keys = list(jax.random.split(jax.random.key(0, impl=prng_impl), repeats + 1))

    sim = jax.jit(functools.partial(channels.simulate, kind=kind, csi="perfect", equalizer="zf"))
    out = sim(keys[0], z, snr)
    assert out.dtype == jnp.complex64
    assert numpy_simulate(rng, z_np, snr_np, kind).dtype == np.complex64  # same precision

    t_np = median_seconds(lambda r: numpy_simulate(rng, z_np, snr_np, kind), repeats)
    t_jax = median_seconds(lambda r: sim(keys[r], z, snr).block_until_ready(), repeats)
    n = batch * k
    return dict(batch=batch, k=k, symbols=n, kind=kind, numpy_s=t_np, jax_s=t_jax,
                numpy_symbols_per_s=n / t_np, jax_symbols_per_s=n / t_jax, speedup=t_np / t_jax)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/channel_throughput.json")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median taken)")
    parser.add_argument("--prng-impl", default="threefry2x32",
                        help="JAX PRNG for the keys (threefry2x32 is JAX's default; rbg is "
                             "faster on some backends)")
    args = parser.parse_args()

    device = jax.devices()[0]
    rows = [bench(b, k, kind, args.repeats, args.prng_impl) for b, k in SIZES for kind in KINDS]

    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}), "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, PRNG {args.prng_impl}, "
          f"median of {args.repeats}")
    header = (f"{'size (B x k)':>14} {'kind':>9} {'numpy sym/s':>13} {'jax sym/s':>13} "
              f"{'speed-up':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['batch']:>6} x {r['k']:<7} {r['kind']:>9} {r['numpy_symbols_per_s']:>13.3e} "
              f"{r['jax_symbols_per_s']:>13.3e} {r['speedup']:>8.2f}x")

    files.atomic_write_json(args.out, dict(
        benchmark="channel_throughput",
        computation="simulate(csi='perfect', equalizer='zf'), complex64, per-sample SNR",
        jax_version=jax.__version__, numpy_version=np.__version__,
        device=str(device), platform=device.platform, device_kind=device.device_kind,
        machine=platform.machine(), cpu_count=os.cpu_count(), prng_impl=args.prng_impl,
        repeats=args.repeats, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"), results=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
