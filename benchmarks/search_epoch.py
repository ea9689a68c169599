"""Wall time of one DARTS CIFAR-10 search epoch on synthetic CIFAR-shaped data: JAX and PyTorch.

    python -m benchmarks.search_epoch [--images=50000 --batch_size=64 --layers=8 --channels=16]
        [--order=first] [--frameworks=jax,torch] [--torch_device=cuda] [--out=benchmarks/results/search_epoch.json]

DARTS's epoch: the 50k training images split in half, one step per (train, validation) pair
of batches, ``ceil(25000 / 64) = 391`` steps.  The images live on the host as uint8 and each
step's batches are sent to the device and normalised there, as a real input pipeline would.
JAX's compile time is reported apart from the epoch; PyTorch's first step is timed with it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import numpy as np


def _data(args):
    rng = np.random.default_rng(0)
    half = args.images // 2
    shape = (half, args.image_size, args.image_size, 3)
    return {"image": rng.integers(0, 256, shape, dtype=np.uint8), "label": rng.integers(0, 10, half).astype(np.int32),
            "val_image": rng.integers(0, 256, shape, dtype=np.uint8),
            "val_label": rng.integers(0, 10, half).astype(np.int32)}


def _batches(data, batch_size: int):
    half = len(data["label"])
    for start in range(0, half, batch_size):
        yield {k: v[start:start + batch_size] for k, v in data.items()}


def run_jax(args, data) -> dict:
    import jax
    import jax.numpy as jnp

    from rkdsc_jax.nas import search as search_lib
    from rkdsc_jax.nas.search_space import SearchNetwork

    steps = math.ceil(len(data["label"]) / args.batch_size)
    model = SearchNetwork(10, channels=args.channels, layers=args.layers)
    schedule = search_lib.epoch_cosine_schedule(0.025, 0.001, 50, steps)
    w_tx, a_tx = search_lib.make_weight_optimizer(schedule), search_lib.make_arch_optimizer()
    state = jax.jit(lambda x: search_lib.create_search_state(model, w_tx, a_tx, x, 0))(
        jnp.zeros((1, args.image_size, args.image_size, 3)))
    hp = search_lib.SearchHParams(order=args.order)
    search_step = functools.partial(search_lib.search_step, hp=hp, complexity=None, lr_schedule=schedule)

    def step(state, batch):
        batch = dict(batch)
        for key in ("image", "val_image"):
            batch[key] = batch[key].astype(jnp.float32) / 127.5 - 1.0
        return search_step(state, batch)

    step = jax.jit(step, donate_argnums=0)
    compiled = {}
    start = time.perf_counter()
    for batch in _batches(data, args.batch_size):  # One program per batch shape (the last may be short).
        shape = batch["label"].shape
        if shape not in compiled:
            compiled[shape] = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = None
    for batch in _batches(data, args.batch_size):
        state, metrics = compiled[batch["label"].shape](state, jax.device_put(batch))
    jax.block_until_ready((state, metrics))
    epoch_s = time.perf_counter() - start
    return {"framework": "jax", "version": jax.__version__, "platform": jax.default_backend(), "steps": steps,
            "compile_s": compile_s, "epoch_s": epoch_s, "ms_per_step": 1e3 * epoch_s / steps,
            "final_loss": float(metrics["loss"])}


def run_torch(args, data) -> dict:
    import torch

    from benchmarks import torch_darts

    torch.manual_seed(0)
    device = torch.device(args.torch_device)
    layout = args.torch_layout or ("channels_last" if device.type == "cuda" else "nchw")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = torch_darts.Network(args.channels, 10, args.layers).to(device=device, memory_format=fmt)
    search = torch_darts.Search(model, args.order)
    steps = math.ceil(len(data["label"]) / args.batch_size)

    def images(x):
        x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return x.contiguous(memory_format=fmt)

    start = time.perf_counter()
    for batch in _batches(data, args.batch_size):
        search.step(images(batch["image"]), torch.from_numpy(batch["label"]).long().to(device),
                    images(batch["val_image"]), torch.from_numpy(batch["val_label"]).long().to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    epoch_s = time.perf_counter() - start
    return {"framework": "torch", "version": torch.__version__, "platform": f"{args.torch_device} {layout}",
            "steps": steps,
            "compile_s": 0.0, "epoch_s": epoch_s, "ms_per_step": 1e3 * epoch_s / steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--order", default="first", choices=("first", "second"))
    parser.add_argument("--frameworks", type=lambda s: s.split(","), default=["jax", "torch"])
    parser.add_argument("--torch_device", default="cuda")
    parser.add_argument("--torch_layout", default="", help="nchw | channels_last; default: channels_last on CUDA.")
    parser.add_argument("--out", default="benchmarks/results/search_epoch.json")
    args = parser.parse_args()
    data = _data(args)
    rows = []
    for framework in args.frameworks:
        rows.append(run_jax(args, data) if framework == "jax" else run_torch(args, data))
        r = rows[-1]
        print(f"{r['framework']:>6} {r['platform']:>18}: compile {r['compile_s']:6.1f} s, epoch {r['epoch_s']:7.1f} s "
              f"({r['steps']} steps, {r['ms_per_step']:.1f} ms/step)", flush=True)
    jax_rows = [r for r in rows if r["framework"] == "jax"]
    torch_rows = [r for r in rows if r["framework"] == "torch"]
    if jax_rows and torch_rows:
        ratio = jax_rows[0]["epoch_s"] / torch_rows[0]["epoch_s"]
        print(f"JAX epoch / PyTorch epoch: {ratio:.2f}x")
    from rkdsc_jax import files

    setting = {k: getattr(args, k) for k in ("images", "batch_size", "image_size", "layers", "channels", "order")}
    files.atomic_write_json(args.out, {"benchmark": "search_epoch", "setting": setting, "cpu_count": os.cpu_count(),
                                       "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
