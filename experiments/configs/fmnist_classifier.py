"""Supervised small-CNN classifier on Fashion-MNIST: the README's main command.

    python -m experiments.main --config=experiments/configs/fmnist_classifier.py \
        --workdir=runs/fmnist_classifier

Override any field on the command line, e.g. ``--config.train.num_epochs=2``.  Sized to
reach >= 90 % test accuracy in under 10 minutes on 2 CPU cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train_classifier"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.num_train_examples = ml_collections.FieldReference(None, field_type=int)
    config.data.num_eval_examples = ml_collections.FieldReference(None, field_type=int)
    config.data.augment = "crop_flip"
    config.data.crop_padding = 2
    config.data.image_size = ml_collections.FieldReference(None, field_type=int)
    config.data.channels = ml_collections.FieldReference(None, field_type=int)
    config.data.normalization = "fashion_mnist"
    config.data.worker_count = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "small_cnn"
    config.model.features = (32, 64)
    config.model.convs_per_stage = 1
    config.model.hidden = 128
    config.model.dropout = 0.25

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128
    config.train.num_epochs = 6.0
    config.train.optimizer = "adamw"
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 200
    config.train.weight_decay = 1e-4
    config.train.momentum = 0.9
    config.train.grad_clip_norm = ml_collections.FieldReference(None, field_type=float)
    config.train.label_smoothing = 0.0
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.eval_every = ml_collections.FieldReference(None, field_type=int)
    config.train.eval_batch_size = 512
    config.train.keep_checkpoints = 2

    config.mesh = ml_collections.ConfigDict()
    config.mesh.num_devices = ml_collections.FieldReference(None, field_type=int)
    config.mesh.distributed = False
    # Virtual CPU devices (ignored on accelerators): faster convolutions on CPU.
    config.mesh.host_devices = 8
    return config
