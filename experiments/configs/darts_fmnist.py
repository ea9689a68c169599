"""KDL-DARTS on Fashion-MNIST, a reduced supernet for 2 CPU cores.

    # KDL-DARTS (needs a teacher: train experiments/configs/fmnist_classifier.py into runs/fmnist_classifier)
    python -m experiments.main --config=experiments/configs/darts_fmnist.py --workdir=runs/darts_fmnist/kdl_s0
    # plain DARTS (λ = μ = 0)
    python -m experiments.main --config=experiments/configs/darts_fmnist.py:plain --workdir=runs/darts_fmnist/plain_s0
    # retrain a derived cell
    python -m experiments.main --config=experiments/configs/darts_fmnist.py --workdir=runs/darts_fmnist/kdl_s0_retrain \
        --config.mode=retrain --config.retrain.genotype=runs/darts_fmnist/kdl_s0

Supernet: 5 cells, 8 channels, 28×28 greyscale, a 10k-example subset split 5k/5k.
NOT YET TIMED end to end (see the NAS report): size epochs/subset to the measured step time.
"""

import ml_collections

from experiments.configs import darts_cifar10


def get_config(variant: str = "kdl") -> ml_collections.ConfigDict:
    config = darts_cifar10.get_config(variant)
    config.data.name = "fashion_mnist"
    config.data.normalization = "fashion_mnist"
    config.data.augment = "crop"
    config.data.crop_padding = 2
    config.data.num_train_examples = 10_000

    s = config.search
    s.layers = 5
    s.channels = 8
    s.batch_size = 64
    s.epochs = 10
    s.order = "first"  # Second order triples the CPU step; darts_cifar10 keeps DARTS's second order.
    s.max_skip = 2

    config.teacher.kind = "classifier" if variant == "kdl" else "none"
    config.teacher.workdir = "runs/fmnist_classifier"

    r = config.retrain
    r.layers = 8
    r.channels = 16
    r.epochs = 3.0
    r.batch_size = 128
    r.auxiliary = False
    r.drop_path_prob = 0.0
    r.num_train_examples = ml_collections.FieldReference(None, field_type=int)
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    return config
