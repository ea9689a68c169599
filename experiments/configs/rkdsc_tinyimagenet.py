"""Paper A's setting on Tiny-ImageNet (200 classes, 64×64), for accelerators.

    python -m experiments.main --config=experiments/configs/rkdsc_tinyimagenet.py \
        --workdir=runs/rkdsc_tinyimagenet --config.data.data_dir=/data/tiny-imagenet-200

Tiny-ImageNet is not in TFDS's catalogue.  Download ``tiny-imagenet-200.zip``
(http://cs231n.stanford.edu/tiny-imagenet-200.zip), unzip it, and point
``config.data.data_dir`` at the folder holding ``wnids.txt``, ``words.txt``, ``train/`` and
``val/``: the ``tiny_imagenet`` source (``rkdsc_jax.data.image_folder``) reads the training
folders and labels ``val/images`` from ``val_annotations.txt`` (the test split has no
labels); CLIP's zero-shot prompts use the first name of each class in ``words.txt``.  The
110k images (1.35 GB as uint8) are read into memory once per run.  Otherwise as
``rkdsc_cifar10``: 2 reductions take 64 px to 16×16 tokens (1024 symbols at
4 per token, bandwidth ratio 1/12).
"""

from experiments.configs import rkdsc_cifar10


def get_config():
    config = rkdsc_cifar10.get_config("tiny_imagenet")
    config.data.eval_split = "val"
    config.data.normalization = "tiny_imagenet"
    config.data.crop_padding = 8
    config.data.worker_count = 8
    config.search.num_train_examples = None  # All 100k, split 50k / 50k (the folders are sorted by class).
    config.codec.budgets = (128, 256, 512, 1024)
    config.baselines.cnn = dict(features=(64, 128, 256, 256))
    return config
