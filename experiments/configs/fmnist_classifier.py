"""Supervised small-CNN classifier on Fashion-MNIST: the README's main command.

    python -m experiments.main --config=experiments/configs/fmnist_classifier.py \
        --workdir=runs/fmnist_classifier

Override any field on the command line, e.g. ``--config.train.num_epochs=2``.  Sized to
reach >= 90 % test accuracy in under 10 minutes on 2 CPU cores.
"""

import ml_collections

from experiments.configs import common
from experiments.configs.common import field


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train_classifier"
    config.seed = 0

    config.data = common.data("fashion_mnist", normalization="fashion_mnist")
    config.data.num_eval_examples = field(None, int)

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.features = (32, 64)
    config.model.convs_per_stage = 1
    config.model.hidden = 128
    config.model.dropout = 0.25

    config.train = common.train(batch_size=128, num_epochs=6.0, learning_rate=3e-3, warmup_steps=200,
                                weight_decay=1e-4)
    config.train.label_smoothing = 0.0
    config.train.eval_every = field(None, int)
    config.train.eval_batch_size = 512

    config.mesh = common.mesh()
    return config
