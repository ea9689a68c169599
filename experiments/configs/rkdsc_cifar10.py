"""Paper A's setting on CIFAR-10 (SPEC §4.4) with a HuggingFace CLIP teacher, for accelerators.

    python -m experiments.main --config=experiments/configs/rkdsc_cifar10.py \
        --workdir=gs://BUCKET/rkdsc_cifar10 --config.data.data_dir=/path/to/tfds

The whole RKD-SC pipeline (mode ``rkdsc``): the ``openai/clip-vit-large-patch14`` teacher
classifies zero-shot from "a photo of a {class}." prompts (no fine-tuning; its 768-d image
embedding is the feature target), KDL-DARTS searches at DARTS's CIFAR-10 settings (8
cells, 16 channels, 50 epochs, second order, a 25k/25k split, the teacher online), the
derived cell network (8 cells, 36 channels, no head) is distilled in stage 1 and trained
with the CAT codec over AWGN/Rayleigh at U(−10, 25) dB in stage 2, for 3 seeds.  Needs
CIFAR-10 prepared for TFDS (``tfds build cifar10``, see BUILD.md) and the CLIP checkpoint
(hub id or a local directory).  A ViT teacher instead: ``--config.teacher.kind=vit
--config.teacher.hub_id=<a ViT fine-tuned on CIFAR-10>``.  Accelerator-only (days on CPU).
"""

import ml_collections

from experiments.configs import darts_cifar10, rkdsc_fmnist
from experiments.configs.common import field


def get_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
    config = rkdsc_fmnist.get_config()
    config.data.name = dataset
    config.data.augment = "crop_flip"
    config.data.crop_padding = 4
    config.data.normalization = "cifar10"
    config.data.worker_count = 8

    config.teacher.kind = "clip"
    config.teacher.hub_id = "openai/clip-vit-large-patch14"
    config.teacher.image_size = None  # CLIP's own 224 px; the teacher resizes the 32 px images.
    config.teacher.finetune.enabled = False

    search = darts_cifar10.get_config("kdl").search  # DARTS's settings: 8 cells, 16 channels, 50 epochs, 2nd order.
    search.enabled = True
    search.num_train_examples = field(None, int)  # The whole training set, split 25k / 25k.
    search.augment = "crop_flip"
    search.max_skip = 2
    config.search = search

    config.student.encoders.genotype = dict(channels=36, layers=8)
    config.codec.width = 256
    config.codec.depth = 2
    config.codec.heads = 8
    config.codec.symbols_per_token = 4  # 8×8 tokens × 4 = 256 complex symbols at most (ratio 1/12).
    config.codec.budgets = (32, 64, 128, 256)

    for stage in (config.stage1, config.stage2):
        stage.batch_size = 256
        stage.num_steps = None  # rkdsc_fmnist's 300/400 steps would override the 100 epochs.
        stage.num_epochs = 100.0
        stage.warmup_steps = 1000
        stage.weight_decay = 5e-4
        stage.log_every = 100
        stage.checkpoint_every = 2000
    config.stage1.learning_rate = 2e-3
    config.stage2.learning_rate = 1e-3
    config.baselines.cnn = dict(features=(64, 128, 256))

    config.eval.batch_size = 1000
    config.eval.bandwidth_snrs_db = (0.0, 10.0, 25.0)
    config.eval.latency_repeats = 200
    config.pipeline.seeds = (0, 1, 2)
    config.mesh.host_devices = None
    return config
