"""A seconds-long classifier run on synthetic data, for smoke tests and debugging.

    python -m experiments.main --config=experiments/configs/synthetic_classifier.py \
        --workdir=runs/synthetic_classifier
"""

from experiments.configs import fmnist_classifier


def get_config():
    config = fmnist_classifier.get_config()
    config.data.name = "synthetic"
    config.data.normalization = "unit"
    config.data.augment = "none"  # Random templates are not flip-invariant.
    config.data.num_train_examples = 512
    config.data.num_eval_examples = 256
    config.model.features = (8, 16)
    config.model.hidden = 32
    config.train.batch_size = 32
    config.train.num_epochs = 2.0
    config.train.warmup_steps = 5
    config.train.log_every = 4
    config.train.checkpoint_every = 8
    config.train.eval_batch_size = 64
    return config
