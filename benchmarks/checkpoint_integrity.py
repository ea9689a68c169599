"""The cost of checksums: checkpoint save/restore and export load, with and without them.

For train states of a few MB and of ~50 MB (parameters plus Adam's two moments), in one run:

- save: ``train.Checkpointer`` (SHA-256 of every file, written before Orbax commits the
  step) against a plain Orbax ``CheckpointManager`` with the same options (the old
  Checkpointer). "blocking" is the time until ``save`` returns (what the train loop waits
  for with async saves), "total" until the step is committed.
- restore: ``Checkpointer.restore`` with verification against ``verify=False``, each time
  from a fresh Checkpointer (verification results are cached per instance).
- export: ``deploy.export`` (which hashes both halves) and loading both halves (which
  verifies them), with the time of the verification alone measured separately.

Files are read back from the page cache right after being written, so the hashing figures
are SHA-256's CPU cost, not disk reads.

    python -m benchmarks.checkpoint_integrity [--repeats=5] [--out=benchmarks/results/checkpoint_integrity.json]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rkdsc_jax import deploy, files, train

SIZES_MB = (4, 50)


def make_state(total_mb: float) -> train.TrainState:
    """A train state of ``total_mb`` MB: float32 parameters in a few layers, and Adam's mu and nu."""
    count = int(total_mb * 2**20 / 4 / 3)
    rng = np.random.default_rng(0)
    shapes = {"conv": count // 2, "dense": count // 3, "head": count - count // 2 - count // 3}
    params = {name: {"kernel": jnp.asarray(rng.normal(size=(n // 64, 64)), jnp.float32)} for name, n in shapes.items()}
    state = train.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3), rng=jax.random.PRNGKey(0))
    # Random moments, as after training: constant ones would compress away on disk.
    moments = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype) if x.ndim else x, state.opt_state)
    return state.replace(opt_state=moments)


def nbytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def plain_manager(directory):
    """The old Checkpointer's manager: no checksums."""
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=100, create=True, enable_async_checkpointing=True), item_names=("state", "data"))


def time_saves(make_saver, state, repeats: int) -> tuple[list[float], list[float]]:
    blocking, total = [], []
    saver = make_saver()
    for step in range(1, repeats + 2):
        start = time.perf_counter()
        if isinstance(saver, train.Checkpointer):
            saver.save(step, state)
            returned = time.perf_counter()
            saver.wait()
        else:
            saver.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
            returned = time.perf_counter()
            saver.wait_until_finished()
        if step > 1:  # The first save includes one-off set-up.
            blocking.append(returned - start)
            total.append(time.perf_counter() - start)
    saver.close()
    return blocking, total


def time_restores(directory, state, verify: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):
        checkpointer = train.Checkpointer(directory, verify=verify, read_only=True)
        start = time.perf_counter()
        restored = checkpointer.restore(state)
        jax.block_until_ready(restored)
        times.append(time.perf_counter() - start)
        checkpointer.close()
    return times[1:]


def checkpoint_rows(root: str, repeats: int) -> list[dict]:
    rows = []
    for size in SIZES_MB:
        state = make_state(size)
        mb = nbytes(state) / 2**20
        with_dir, plain_dir = os.path.join(root, f"with_{size}"), os.path.join(root, f"plain_{size}")
        with_blocking, with_total = time_saves(lambda: train.Checkpointer(with_dir, max_to_keep=100), state, repeats)
        plain_blocking, plain_total = time_saves(lambda: plain_manager(plain_dir), state, repeats)
        step_dir = os.path.join(with_dir, str(repeats + 1))
        hash_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            files.sha256_tree(step_dir)
            hash_times.append(time.perf_counter() - start)
        verified = time_restores(with_dir, state, True, repeats)
        unverified = time_restores(with_dir, state, False, repeats)
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir) for f in fs) / 2**20
        rows.append({
            "state_mb": mb, "on_disk_mb": on_disk,
            "save_blocking_s": {"checksums": statistics.median(with_blocking), "plain": statistics.median(plain_blocking)},
            "save_total_s": {"checksums": statistics.median(with_total), "plain": statistics.median(plain_total)},
            "restore_s": {"verified": statistics.median(verified), "unverified": statistics.median(unverified)},
            "sha256_step_s": statistics.median(hash_times),
            "sha256_mb_per_s": on_disk / statistics.median(hash_times),
        })
    return rows


def export_row(root: str, repeats: int) -> dict:
    spec = deploy.SystemSpec(kind="tosc", encoder="cnn", encoder_kwargs={"features": (64, 128), "convs_per_stage": 2},
                             system_kwargs=dict(num_classes=10, num_symbols=64, channel_adaptive=True,
                                                decoder_hidden=512, input_mean=(0.3,), input_std=(0.4,)),
                             input_shape=(28, 28, 1))
    model = spec.build()
    shapes = jax.eval_shape(lambda k, x: model.init(k, x, 0.0, lambda y: y), jax.random.PRNGKey(0),
                            jnp.zeros((1, 28, 28, 1)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)
    directory = os.path.join(root, "export")
    export_times, load_times, verify_times = [], [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        info = deploy.export(directory, spec, variables, overwrite=True)
        exported = time.perf_counter()
        deploy.load_transmitter(directory), deploy.load_receiver(directory)
        loaded = time.perf_counter()
        for half in ("transmitter", "receiver"):
            files.verify_sha256_tree(os.path.join(directory, half), info["checksums"][half])
        if i:
            export_times.append(exported - start)
            load_times.append(loaded - exported)
            verify_times.append(time.perf_counter() - loaded)
    return {"variables_mb": nbytes(variables) / 2**20, "export_s": statistics.median(export_times),
            "load_both_halves_s": statistics.median(load_times), "verify_s": statistics.median(verify_times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/checkpoint_integrity.json")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="checkpoint_integrity_")
    try:
        rows = checkpoint_rows(root, args.repeats)
        export = export_row(root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nCheckpoint integrity on {jax.devices()[0].platform}, {os.cpu_count()} cores, JAX {jax.__version__}, "
          f"Orbax {ocp.__version__}; medians of {args.repeats}")
    print(f"{'state MB':>9} {'save blocking ms':>22} {'save total ms':>20} {'restore ms':>20} {'sha256 step':>12}")
    print(f"{'':>9} {'checksums':>11} {'plain':>10} {'checksums':>11} {'plain':>8} {'verified':>10} {'no verify':>9}")
    for r in rows:
        print(f"{r['state_mb']:>9.1f} {1e3 * r['save_blocking_s']['checksums']:>11.1f} "
              f"{1e3 * r['save_blocking_s']['plain']:>10.1f} {1e3 * r['save_total_s']['checksums']:>11.1f} "
              f"{1e3 * r['save_total_s']['plain']:>8.1f} {1e3 * r['restore_s']['verified']:>10.1f} "
              f"{1e3 * r['restore_s']['unverified']:>9.1f} {1e3 * r['sha256_step_s']:>6.1f} ms "
              f"({r['on_disk_mb']:.0f} MB on disk, {r['sha256_mb_per_s']:.0f} MB/s)")
    print(f"export of {export['variables_mb']:.1f} MB: write {1e3 * export['export_s']:.1f} ms, load both halves "
          f"{1e3 * export['load_both_halves_s']:.1f} ms (verifying their checksums alone: "
          f"{1e3 * export['verify_s']:.1f} ms)")
    result = {"benchmark": "checkpoint_integrity", "jax": jax.__version__, "orbax": ocp.__version__,
              "platform": jax.devices()[0].platform, "cpu_count": os.cpu_count(), "repeats": args.repeats,
              "checkpoints": rows, "export": export}
    files.atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
