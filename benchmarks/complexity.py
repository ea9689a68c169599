"""Model complexity, as paper B's Table I: parameters, size, encode latency per image.

    python -m benchmarks.complexity [--batch_sizes=1,64] [--budget_s=60] [--out=...]

All models run in the same process on the same device.  Weights are random (timing does
not depend on them).  "Size" is float32 parameters in MiB, which is how paper B's sizes
relate to its parameter counts (10,996,972 params → 41.9 MB).  Latency is the median
wall time of a jitted forward pass (teachers: to their features; classifiers: to
logits) divided by the batch size.  A batch whose estimated run time exceeds
``--budget_s`` is skipped and reported as such rather than extrapolated.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax import files
from rkdsc_jax.models import codecs, efficientnet, hf_vision, resnet, tinyvit
from rkdsc_jax.train import param_count

CLIP_VIT_L14 = hf_vision.CLIPVisionConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768)
VIT_B16 = hf_vision.ViTConfig(id2label={i: str(i) for i in range(1000)})


def _models() -> list[tuple[str, str, Callable, tuple[int, ...], dict]]:
    """(name, paper-B row it corresponds to, module, input shape, apply kwargs)."""
    small_tinyvit = tinyvit.TinyViTClassifier(
        10, tinyvit.TinyViTEncoder(**tinyvit.TINYVIT_SMALL_INPUT), decoder_hidden=512)
    return [
        ("CLIP ViT-L/14 image tower", "LA-TOSC (305,311,208)",
         hf_vision.CLIPImageEncoder(CLIP_VIT_L14), (224, 224, 3), {}),
        ("ViT-B/16 classifier", "-", hf_vision.ViTClassifier(VIT_B16), (224, 224, 3), {}),
        ("EfficientNet-Lite0 (offline teacher)", "-", efficientnet.efficientnet_lite("lite0"), (224, 224, 3),
         {"train": False}),
        ("TinyViT-11M student", "L-TOSC-KD (10,996,972)", tinyvit.TinyViTClassifier(1000), (224, 224, 3),
         {"train": False}),
        ("ResNet-50 (Keras-style)", "Res-TOSC (25,636,712)",
         resnet.ResNetClassifier(1000, resnet.ResNetEncoder(conv_bias=True)), (224, 224, 3), {"train": False}),
        ("EfficientNet-B3 + Dense(512)", "Eff-TOSC (12,036,884)",
         efficientnet.EfficientNetB(1000, **efficientnet.EFF_TOSC), (224, 224, 3), {"train": False}),
        ("TinyViT small (28 px) + Dense(512)", "-", small_tinyvit, (28, 28, 1), {"train": False}),
        ("EfficientNet-B0 small (28 px) + Dense(512)", "-",
         efficientnet.EfficientNetB(10, **efficientnet.EFFICIENTNET_SMALL_INPUT, decoder_hidden=512), (28, 28, 1),
         {"train": False}),
        ("ResNet small (28 px)", "-", resnet.ResNetClassifier(10, resnet.ResNetEncoder(**resnet.RESNET_SMALL_INPUT)),
         (28, 28, 1), {"train": False}),
        ("EfficientNet-Lite0 (28 px, 10 classes)", "-",
         efficientnet.efficientnet_lite("lite0", num_classes=10, image_size=None), (28, 28, 1), {"train": False}),
        ("CAT encoder (49 tokens × 448)", "-", _CATOnly(), (49, 448), {}),
    ]


class _CATOnly(codecs.CATEncoder):
    """The CAT encoder with SNR 10 dB, as a one-input module for timing."""

    def __call__(self, tokens):  # noqa: D401 - same module, fixed channel state.
        return super().__call__(tokens, 10.0)


def _time(fn, x, repeats: int) -> float:
    jax.block_until_ready(fn(x))  # Compile.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget_s", type=float, default=60.0, help="skip batches estimated to take longer")
    parser.add_argument("--out", default="benchmarks/results/complexity.json")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = jax.devices()[0]
    rows = []
    for name, paper_row, module, shape, kwargs in _models():
        variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape)), **kwargs))
        params = param_count(variables["params"])
        buffers = param_count(variables.get("batch_stats", {}))
        variables = jax.jit(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape)), **kwargs))()
        forward = jax.jit(lambda x: module.apply(variables, x, **kwargs))
        row = {"model": name, "paper_b_row": paper_row, "params": params, "batch_norm_buffers": buffers,
               "size_mib": params * 4 / 2**20, "input_shape": list(shape), "latency_ms_per_image": {}}
        per_image = None
        for batch in sorted(batch_sizes):
            if per_image is not None and per_image * batch * (args.repeats + 2) > args.budget_s:
                row["latency_ms_per_image"][str(batch)] = None
                continue
            x = jax.random.normal(jax.random.key(1), (batch, *shape))
            per_image = _time(forward, x, args.repeats) / batch
            row["latency_ms_per_image"][str(batch)] = 1e3 * per_image
        rows.append(row)
        latency = "  ".join(
            f"b{b}: {'skipped' if v is None else f'{v:8.2f} ms'}" for b, v in row["latency_ms_per_image"].items())
        print(f"{name:40s} {params:>12,d} {row['size_mib']:8.1f} MiB  {latency}", flush=True)

    print(f"\nJAX {jax.__version__} on {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores")
    header = "| model | params | size (MiB) | " + " | ".join(f"ms/img @ batch {b}" for b in batch_sizes) + " | paper B row |"
    print(header)
    print("|" + "---|" * (4 + len(batch_sizes) - 1) + "---|")
    for r in rows:
        cells = [("skipped" if r["latency_ms_per_image"].get(str(b)) is None else f"{r['latency_ms_per_image'][str(b)]:.2f}")
                 for b in batch_sizes]
        print(f"| {r['model']} | {r['params']:,} | {r['size_mib']:.1f} | " + " | ".join(cells) + f" | {r['paper_b_row']} |")
    files.atomic_write_json(args.out, {
        "benchmark": "complexity", "jax": jax.__version__, "platform": device.platform,
        "device_kind": device.device_kind, "cpu_count": os.cpu_count(), "batch_sizes": batch_sizes,
        "budget_s": args.budget_s, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
