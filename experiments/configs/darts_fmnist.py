"""KDL-DARTS on Fashion-MNIST, a reduced supernet for 2 CPU cores.

    # The KDL teacher: the small CNN on the same 16×16 images (~3 minutes)
    python -m experiments.main --config=experiments/configs/fmnist_classifier.py --workdir=runs/darts_fmnist/teacher \
        --config.train.num_epochs=3 --config.data.image_size=16
    # KDL-DARTS (λ = 0.5, τ = 4, μ = 0.1) and plain DARTS (λ = μ = 0)
    python -m experiments.main --config=experiments/configs/darts_fmnist.py --workdir=runs/darts_fmnist/kdl_s0
    python -m experiments.main --config=experiments/configs/darts_fmnist.py:plain --workdir=runs/darts_fmnist/plain_s0
    # retrain a derived cell
    python -m experiments.main --config=experiments/configs/darts_fmnist.py --workdir=runs/darts_fmnist/kdl_s0_retrain \
        --config.mode=retrain --config.retrain.genotype=runs/darts_fmnist/kdl_s0

``scripts/darts_fmnist.sh`` runs all of it (3 seeds of each, two runs at a time) and
tabulates the results.  Supernet: 3 cells (normal, reduce, reduce) × 8 channels on
Fashion-MNIST resized to 16×16, 4k training examples split 2k/2k, batch 32, 3 epochs (186
steps), first order.  Measured with two runs at a time on 2 cores: a search takes 15–23
minutes (3.7–5.8 s per step; the first of each variant also compiles the step for ~7
minutes, later seeds load it from the compilation cache), a retrain (6 cells × 16 channels,
2 epochs of 20k images, 313 steps) 11–25 minutes; the whole script about two hours.  XLA's
CPU step is dominated by the backward of the depthwise convolutions
(``benchmarks/search_step.py --profile_dir``).
"""

import ml_collections

from experiments.configs import darts_cifar10


def get_config(variant: str = "kdl") -> ml_collections.ConfigDict:
    config = darts_cifar10.get_config(variant)
    config.data.name = "fashion_mnist"
    config.data.normalization = "fashion_mnist"
    config.data.augment = "crop"
    config.data.crop_padding = 2
    config.data.image_size = 16  # Even down to the last reduction (16 → 8 → 4); ~3× cheaper than 28.
    config.data.num_train_examples = 4_000

    s = config.search
    s.layers = 3
    s.channels = 8
    s.batch_size = 32
    s.epochs = 3
    s.order = "first"  # Second order triples the CPU step; darts_cifar10 keeps DARTS's second order.
    s.max_skip = 2
    # 186 steps instead of DARTS's 39k: a 10× α learning rate lets α leave its 1e-3 start.
    s.a_lr = 3e-3

    config.teacher.kind = "none" if variant == "plain" else "classifier"
    config.teacher.workdir = "runs/darts_fmnist/teacher"

    r = config.retrain
    r.layers = 6
    r.channels = 16
    r.epochs = 2.0
    r.batch_size = 128
    r.auxiliary = False
    r.drop_path_prob = 0.0
    r.num_train_examples = 20_000
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.mesh.host_devices = 1  # One run per core (scripts/darts_fmnist.sh runs two at a time).
    return config
