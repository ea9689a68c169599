"""Config pieces every experiment composes from (the same field means the same thing in every
config).  A study's config file calls these and sets only what differs.

- ``data``: the dataset (``experiments.common.inputs`` reads it).  ``normalization`` is the
  model input's mean/std (``rkdsc_jax.data.NORMALIZATIONS``): the classifier and the search
  standardise in the pipeline, the communication systems inside the model (so that a
  deployed transmitter takes raw images); the statistics are the same either way.
- ``train``: one training run's length (``num_steps``, else ``num_epochs``), optimiser and
  loop intervals; also each stage of paper A.
- ``teacher``: the pretrained teacher and its fine-tuning (``experiments.common.teacher``).
- ``channel``, ``channel_eval``: the receiver's channel knowledge; accuracy-vs-SNR curves.
- ``export``: mode ``export``.  ``mesh``: devices and processes.
"""

from __future__ import annotations

import ml_collections


def field(value, field_type):
    """A field that may be None but has a type (so ``--config.x=3`` parses)."""
    return ml_collections.FieldReference(value, field_type=field_type)


def data(name: str, *, normalization: str, augment: str = "crop_flip", crop_padding: int = 2,
         num_train_examples: int | None = None, subset: str = "first") -> ml_collections.ConfigDict:
    """``num_train_examples``: how many training examples (None: all); ``subset``: which ones,
    ``"first"`` (the classifier, the search) or ``"random"`` (the studies: a reproducible random
    subset drawn with ``subset_seed``, which those configs add)."""
    d = ml_collections.ConfigDict()
    d.name = name
    d.data_dir = field(None, str)
    d.train_split = "train"
    d.eval_split = "test"
    d.num_train_examples = field(num_train_examples, int)
    d.subset = subset
    d.augment = augment
    d.crop_padding = crop_padding
    d.image_size = field(None, int)
    d.channels = field(None, int)
    d.normalization = normalization
    d.worker_count = 0
    return d


def train(*, batch_size: int, num_epochs: float, learning_rate: float, warmup_steps: int, weight_decay: float,
          grad_clip_norm: float | None = None, log_every: int = 50, checkpoint_every: int = 500,
          keep_checkpoints: int = 2, optimizer: str = "adamw", momentum: float = 0.9) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.batch_size = batch_size
    t.num_epochs = num_epochs
    t.num_steps = field(None, int)  # Overrides num_epochs (experiments.common.inputs.steps).
    t.optimizer = optimizer
    t.learning_rate = learning_rate
    t.warmup_steps = warmup_steps
    t.weight_decay = weight_decay
    t.momentum = momentum
    t.grad_clip_norm = field(grad_clip_norm, float)
    t.log_every = log_every
    t.checkpoint_every = checkpoint_every
    t.keep_checkpoints = keep_checkpoints
    t.skip_nonfinite = False  # Skip and count non-finite steps (optax.apply_if_finite) instead of stopping.
    return t


def teacher() -> ml_collections.ConfigDict:
    """The offline ImageNet EfficientNet-Lite0 at 32 px, fine-tuned on the task for one epoch."""
    t = ml_collections.ConfigDict()
    t.kind = "efficientnet_lite0"
    t.hub_id = field(None, str)
    t.prompt = "a photo of a {}."
    t.image_size = field(32, int)  # None: the teacher's own resolution.
    t.cache_dir = field(None, str)
    t.finetuned_dir = field(None, str)  # Default: the run layout's teacher/teacher.
    t.finetune = ml_collections.ConfigDict()
    t.finetune.enabled = True
    t.finetune.num_epochs = 1.0
    t.finetune.num_steps = field(None, int)
    t.finetune.num_train_examples = field(None, int)
    t.finetune.batch_size = 64
    t.finetune.learning_rate = 5e-4
    t.finetune.head_learning_rate = 3e-3
    t.finetune.weight_decay = 0.01
    t.finetune.warmup_steps = 100
    t.finetune.log_every = 50
    t.finetune.checkpoint_every = 200
    return t


def channel() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.csi = "perfect"
    c.equalizer = "mmse"
    return c


def channel_eval(snrs_db) -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.batch_size = 512
    e.snrs_db = tuple(snrs_db)
    e.channels = ("awgn", "rayleigh")
    e.seed = 1234
    return e


def export(method: str) -> ml_collections.ConfigDict:
    """Mode ``export`` (and the pipelines' last stage): the deployable transmitter and receiver."""
    e = ml_collections.ConfigDict()
    e.method = method
    e.seed = field(None, int)  # None: the pipeline's first seed.
    e.directory = field(None, str)  # None: <workdir>/export/<method>_seed<seed>.
    e.overwrite = False
    e.latency_repeats = 100
    return e


def mesh(host_devices: int = 8) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.num_devices = field(None, int)
    m.distributed = False
    m.host_devices = field(host_devices, int)  # None: leave the platform's devices alone.
    return m
