"""Paper A's setting on CIFAR-100: ``rkdsc_cifar10`` with TFDS ``cifar100`` (for accelerators).

    python -m experiments.main --config=experiments/configs/rkdsc_cifar100.py \
        --workdir=gs://BUCKET/rkdsc_cifar100 --config.data.data_dir=/path/to/tfds

CLIP's zero-shot prompts use TFDS's 100 fine label names.
"""

from experiments.configs import rkdsc_cifar10


def get_config():
    config = rkdsc_cifar10.get_config("cifar100")
    config.data.normalization = "cifar100"
    return config
