"""KDL-DARTS on CIFAR-10 at the DARTS paper's settings (for accelerators).

    python -m experiments.main --config=experiments/configs/darts_cifar10.py --workdir=runs/darts_cifar10/kdl
    python -m experiments.main --config=experiments/configs/darts_cifar10.py:plain --workdir=runs/darts_cifar10/plain
    python -m experiments.main --config=experiments/configs/darts_cifar10.py --workdir=runs/darts_cifar10/retrain \
        --config.mode=retrain --config.retrain.genotype=runs/darts_cifar10/kdl

Search (SPEC §4.1 / DARTS): 8 cells, 16 channels, batch 64, 50 epochs, 25k/25k split of the
training set; weights SGD lr 0.025 → 0.001 (cosine per epoch), momentum 0.9, wd 3e-4,
clip 5; α Adam 3e-4, betas (0.5, 0.999), wd 1e-3.  Retrain: 20 cells, 36 channels,
600 epochs, batch 96, SGD 0.025 cosine, wd 3e-4, auxiliary weight 0.4, drop-path 0.2,
cutout not implemented.  Variants: "kdl" (λ = 0.5, τ = 4, μ = 0.1, teacher logits needed)
and "plain" (λ = μ = 0: DARTS).
"""

import ml_collections

from experiments.configs import common
from experiments.configs.common import field


def get_config(variant: str = "kdl") -> ml_collections.ConfigDict:
    if variant not in ("kdl", "kdl_pc", "plain"):
        raise ValueError(f"variant must be 'kdl', 'kdl_pc' (C(α) normalised per cell type, μ = 1) or 'plain', "
                         f"got {variant!r}.")
    config = ml_collections.ConfigDict()
    config.mode = "search"
    config.seed = 0

    config.data = common.data("cifar10", normalization="unit", crop_padding=4)
    config.data.split_seed = 0  # The search's train/validation halves.

    s = config.search = ml_collections.ConfigDict()
    s.layers = 8
    s.channels = 16
    s.steps = 4
    s.batch_size = 64
    s.epochs = 50
    s.order = "second"
    s.second_order_method = "unrolled"  # unrolled | hvp | finite_difference
    s.unroll_momentum = True
    s.lam = 0.0 if variant == "plain" else 0.5
    s.temperature = 4.0
    s.mu = {"kdl": 0.1, "kdl_pc": 1.0, "plain": 0.0}[variant]
    s.count_bn_affine = True
    # How C(α) is normalised (rkdsc_jax.nas.search.Complexity): "global" is the SPEC's
    # (reduction cells dominate it); "per_cell_type" weighs both cell types equally (μ ≈ 1).
    # kdl_pc: μ·C's α-gradient within ~2× of the CE's in both cell types (benchmarks/penalty_scale.py).
    s.complexity_normalization = "per_cell_type" if variant == "kdl_pc" else "global"
    s.w_lr = 0.025
    s.w_lr_min = 0.001
    s.w_momentum = 0.9
    s.w_weight_decay = 3e-4
    s.w_grad_clip = 5.0
    s.a_lr = 3e-4
    s.a_b1 = 0.5
    s.a_b2 = 0.999
    s.a_weight_decay = 1e-3
    s.max_skip = field(None, int)
    s.cap_cells = ("normal",)
    s.impl = "auto"

    config.teacher = ml_collections.ConfigDict()
    config.teacher.kind = "none" if variant == "plain" else "classifier"  # none | classifier | store
    config.teacher.workdir = "runs/cifar10_teacher"
    config.teacher.model = ml_collections.ConfigDict({"name": "small_cnn", "features": (32, 64),
                                                      "convs_per_stage": 1, "hidden": 128, "dropout": 0.25})

    r = config.retrain = ml_collections.ConfigDict()
    r.genotype = "DARTS_V2"  # The package's copy of the published cell; or a JSON path / search workdir.
    r.layers = 20
    r.channels = 36
    r.epochs = 600.0
    r.batch_size = 96
    r.learning_rate = 0.025
    r.momentum = 0.9
    r.weight_decay = 3e-4
    r.grad_clip = 5.0
    r.auxiliary = True
    r.aux_weight = 0.4
    r.drop_path_prob = 0.2
    r.num_train_examples = field(None, int)
    r.num_eval_examples = field(None, int)

    config.train = ml_collections.ConfigDict()
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.eval_batch_size = 500
    config.train.keep_checkpoints = 2

    config.mesh = common.mesh()
    return config
