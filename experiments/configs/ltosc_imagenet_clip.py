"""Paper B's setting: ImageNet-1k, CLIP ViT-L/14 zero-shot teacher, K = 10 (for accelerators).

    python -m experiments.main --config=experiments/configs/ltosc_imagenet_clip.py \
        --workdir=gs://BUCKET/ltosc_imagenet --config.data.data_dir=/path/to/tfds

Needs ImageNet-1k prepared for TFDS in array_record format (``imagenet2012``; see
BUILD.md) and the ``openai/clip-vit-large-patch14`` checkpoint (hub id or local
directory).  The student is TinyViT-11M at 224 px with paper B's Dense(512) receiver;
training SNR U(−5, 15) dB, test −4…12 dB (SPEC §3.5).  Sizes (epochs, batch) follow
TinyViT's distillation recipe scaled to one accelerator host; adjust to your slice.
Accelerator-only: the CPU would need weeks.
"""

from experiments.configs import ltosc_fmnist


def get_config():
    config = ltosc_fmnist.get_config()
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.data.resize_to = 256  # ImageNet images vary in size: shorter side 256, centre crop.
    config.data.image_size = 224
    config.data.channels = 3
    config.data.augment = "crop_flip"
    config.data.crop_padding = 16
    config.data.normalization = "imagenet"
    config.data.worker_count = 16

    config.teacher.kind = "clip"
    config.teacher.hub_id = "openai/clip-vit-large-patch14"
    config.teacher.image_size = None  # CLIP's own 224 px.
    config.teacher.finetune.enabled = False  # Zero-shot from "a photo of a {class}." prompts.

    config.store.top_k = 10
    config.store.num_epochs = 30
    config.store.batch_size = 512
    config.store.shard_size = 65536

    config.model.student = "tinyvit"
    config.model.encoders.tinyvit = {}  # TinyViT-11M defaults.
    config.model.encoders.resnet = {"conv_bias": True}  # ResNet-50 as paper B counts it (Keras).
    config.model.encoders.efficientnet = {"variant": "b3", "image_size": 224}
    config.model.num_symbols = 224  # 448 reals from the 448-d pooled features.

    config.train.batch_size = 1024
    config.train.num_epochs = 30.0
    config.train.learning_rate = 2.5e-3
    config.train.warmup_steps = 5000
    config.train.log_every = 100
    config.train.checkpoint_every = 2000

    config.eval.batch_size = 1000
    config.eval.snrs_db = (-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
    config.eval.report_snrs_db = (-4.0, 0.0, 4.0, 8.0, 12.0)

    config.study.methods = ("l_tosc_kd", "l_tosc", "res_tosc", "eff_tosc")
    config.study.seeds = (0,)
    config.study.train_sizes = (600_000, 1_281_167)
    config.study.size_seeds = (0,)
    config.study.ablation_seeds = (0,)
    config.mesh.host_devices = None
    return config
