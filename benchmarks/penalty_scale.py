"""How hard can μ·C(α) pull on α?  Per-element α-gradient of μ·C against the CE's, at init.

    python -m benchmarks.penalty_scale [--layers=1,3] [--channels=4] [--steps=2] [--ops=small|all]
        [--batch_size=16] [--image_size=8] [--mu=0.1] [--seeds=0,1,2]

For each supernet and each ``Complexity`` normalisation: the RMS over α's elements (per cell
type and over both) of ∇_α μ·C(α) divided by that of ∇_α CE(w, α) on a random batch at
initialisation (α ≈ 0, the uniform mixture the search starts from).  A ratio ≪ 0.1 means the
penalty cannot steer the search (issue 19).  The supernets are the small ones of
tests/test_nas.py (never the 8-cell one: it needs ~20 GB to differentiate on CPU).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax.distill import losses
from rkdsc_jax.nas import search, search_space
from rkdsc_jax.nas.search_space import CELL_TYPES

SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def ce_arch_gradient(model, seed: int = 0, batch_size: int = 16, image_size: int = 8):
    """∇_α CE at initialisation on a random batch (BN on batch statistics, as the search)."""
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(batch_size, image_size, image_size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, model.num_classes, batch_size), jnp.int32)

    @jax.jit  # One program for init and gradient: eager init alone compiles dozens of small ops.
    def run(key):
        variables = model.init({"params": key}, images[:1], train=False)

        def ce(arch):
            logits, _ = model.apply(dict(variables) | {"arch": arch}, images, train=True, mutable=["batch_stats"])
            return losses.cross_entropy(logits, labels)
        return variables["arch"], jax.grad(ce)(variables["arch"])

    return run(jax.random.PRNGKey(seed))


def _rms(tree, types):
    values = np.concatenate([np.ravel(tree[t]) for t in types])
    return float(np.sqrt(np.mean(np.square(values))))


def gradient_ratios(model, arch, ce_grad, mu: float, normalizations=search.NORMALIZATIONS) -> dict:
    """{normalisation: {"normal"|"reduce"|"all": rms(∇ μC) / rms(∇ CE), "C_uniform": C(uniform)}}.

    Cell types without cells (a 1-cell supernet has only a reduction cell) are left out.
    """
    present = [t for t in CELL_TYPES if any((s.reduction == (t == "reduce")) for s in model.plan())]
    out = {}
    for norm in normalizations:
        cx = search.Complexity.for_model(model, normalization=norm)
        g = jax.grad(lambda a: mu * cx(a))(arch)
        row = {t: _rms(g, [t]) / _rms(ce_grad, [t]) for t in present}
        row["all"] = _rms(g, present) / _rms(ce_grad, present)
        row["C_uniform"] = cx.uniform_value()
        out[norm] = row
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,3")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ops", choices=("small", "all"), default="small")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=8)
    parser.add_argument("--mu", type=float, default=0.1)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    primitives = SMALL_OPS if args.ops == "small" else search_space.PRIMITIVES
    results = {}
    for layers in [int(x) for x in args.layers.split(",")]:
        model = search_space.SearchNetwork(10, channels=args.channels, layers=layers, steps=args.steps,
                                           multiplier=args.steps, primitives=primitives)
        per_seed = []
        for seed in [int(x) for x in args.seeds.split(",")]:
            arch, ce_grad = ce_arch_gradient(model, seed, args.batch_size, args.image_size)
            per_seed.append(gradient_ratios(model, arch, ce_grad, args.mu))
        name = f"layers={layers} channels={args.channels} steps={args.steps} ops={args.ops}"
        results[name] = {norm: {k: float(np.mean([r[norm][k] for r in per_seed])) for k in per_seed[0][norm]}
                         for norm in per_seed[0]}
        print(f"{name}, mu={args.mu}, mean over {len(per_seed)} seeds: rms(grad mu*C) / rms(grad CE)")
        for norm, row in results[name].items():
            print("  " + f"{norm:14s} " + "  ".join(f"{k}={v:.3g}" for k, v in row.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
