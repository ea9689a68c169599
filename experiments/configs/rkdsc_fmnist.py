"""Paper A's RKD-SC pipeline on Fashion-MNIST with the offline teacher: the README's main job.

    python -m experiments.main --config=experiments/configs/rkdsc_fmnist.py --workdir=runs/rkdsc_fmnist

runs (mode ``rkdsc``) every stage in one resumable workdir: fine-tune the ImageNet
EfficientNet-Lite0 teacher at 32 px briefly (120 steps), search a cell with KDL-DARTS
(20 steps of a 3-cell, 4-channel supernet on a 1,280-image subset), distil the cell network into the teacher's feature space
(stage 1), train it with the CAT codec over random AWGN/Rayleigh channels and symbol
budgets (stage 2), train the baselines (the same network without KD, a CNN semantic
communication system), send the teacher's features over the channel, time the
encoders, export the deployable transmitter and receiver (``export/rkdsc_seed0/``), and
write ``report.md``.  Measured: 34 minutes on 2 CPU cores with one seed
(the search 9.4 of them, mostly XLA compiling the supernet), ~15 more per extra seed;
``--config.pipeline.seeds=0,1,2`` for the spread (the teacher and the search are shared
by the seeds).  Single stages: ``--config.mode=rkd_stage1`` / ``rkd_stage2`` with
``--config.pipeline_dir`` pointing at a pipeline workdir.

Variant ``capacity`` (``--config=experiments/configs/rkdsc_fmnist.py:capacity``): the README's
capacity study, a teacher fine-tuned for a full epoch (938 steps), no search but the cell
that ``scripts/darts_fmnist.sh`` found (``kdl_pc`` seed 0, shipped as the named genotype
``KDL_FMNIST``) at 16 channels × 5 cells, 500 + 700 steps for RKD-SC (1,200 for each baseline) and all 10k test images;
about 40 minutes per seed on 2 cores after a 20-minute teacher.
"""

import ml_collections

from experiments.configs import common, darts_cifar10
from experiments.configs.common import field


def _stage(batch_size: int, num_epochs: float, learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
    return common.train(batch_size=batch_size, num_epochs=num_epochs, learning_rate=learning_rate,
                        warmup_steps=warmup_steps, weight_decay=1e-4, grad_clip_norm=5.0, checkpoint_every=200)


VARIANTS = ("default", "capacity")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown rkdsc_fmnist variant {variant!r}; use one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.mode = "rkdsc"
    config.seed = 0
    config.pipeline_dir = field(None, str)  # Modes rkd_stage1/2: where teacher/ and search/ live.

    # The student's (and the supernet's) input normalisation.
    config.data = common.data("fashion_mnist", normalization="fashion_mnist", subset="random")
    config.data.subset_seed = 0  # num_train_examples: a random subset.
    config.data.split_seed = 0  # The search's train/validation halves.
    config.data.num_eval_examples = field(2000, int)  # ±1 % standard error; None: all 10k.
    config.data.resize_to = field(None, int)

    # The offline teacher as paper B's study uses it, fine-tuned for fewer steps (~4 minutes).
    config.teacher = common.teacher()
    config.teacher.finetune.num_steps = 120
    config.teacher.finetune.warmup_steps = 50
    config.teacher.finetune.log_every = 25
    config.teacher.finetune.checkpoint_every = 100

    # KDL-DARTS (SPEC §4.1) with the teacher online, DARTS's optimiser defaults except a 10×
    # α learning rate for a 20-step search: on 2 cores the supernet step costs seconds and its
    # compilation ~6 minutes, so this search is a demonstration, not a converged one
    # (darts_fmnist searches properly).
    config.search = darts_cifar10.get_config("kdl").search
    s = config.search
    s.enabled = True
    s.num_train_examples = field(1280, int)  # Split 640 / 640.
    s.augment = "crop"
    s.layers = 3
    s.channels = 4
    s.batch_size = 32
    s.epochs = 1
    s.order = "first"
    s.a_lr = 3e-3
    s.max_skip = 2
    s.log_every = 5
    s.checkpoint_every = 10

    config.student = ml_collections.ConfigDict()
    config.student.encoder = "genotype"  # Or any encoder of rkdsc_jax.models.tosc.ENCODERS.
    config.student.genotype = field(None, str)  # JSON path or search workdir; None: the pipeline's search.
    config.student.encoders = ml_collections.ConfigDict({
        "genotype": dict(channels=8, layers=3),
        "tinyvit": dict(dims=(32, 64), depths=(1, 2), num_heads=(2, 4), windows=(7, 7)),
        "cnn": dict(features=(32, 64)),
    })

    # The CAT codec (SPEC §4.3): 49 tokens × 2 symbols = 98 complex symbols at most.
    config.codec = ml_collections.ConfigDict()
    config.codec.width = 64
    config.codec.depth = 2
    config.codec.heads = 4
    config.codec.symbols_per_token = 2
    config.codec.budgets = (12, 24, 49, 98)

    config.objective = ml_collections.ConfigDict()
    config.objective.feature_loss = "cosine"
    config.objective.feature_weight = 1.0
    config.objective.kd_weight = 1.0
    config.objective.ce_weight = 0.5
    config.objective.temperature = 4.0

    config.stage1 = _stage(64, 1.0, 2e-3, 50)
    config.stage1.num_steps = 300
    config.stage2 = _stage(64, 1.0, 1e-3, 50)
    config.stage2.num_steps = 400
    config.stage2.snr_range = (-10.0, 25.0)
    config.stage2.channels = ("awgn", "rayleigh")
    config.stage2.freeze_encoder = False
    config.stage2.init_from = field(None, str)  # Mode rkd_stage2: a stage-1 workdir.

    config.baselines = ml_collections.ConfigDict()
    config.baselines.cnn = dict(features=(32, 64))
    config.baselines.cnn_decoder_hidden = 256
    # None: stage 1 + stage 2's steps (RKD-SC's whole training), with stage 2's schedule and batch.
    config.baselines.num_steps = field(None, int)

    config.channel = common.channel()

    config.eval = common.channel_eval((-10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 25.0))
    config.eval.bandwidth_snrs_db = (0.0, 10.0)
    config.eval.latency_repeats = 100
    # The teacher at the students' symbol count (issue 19): a PCA codec fitted on the teacher's
    # features of the first 4,096 training images (enough for a 1280-D covariance's leading
    # directions), and that codec trained with channel noise through the frozen head (0: off).
    config.eval.codec_fit_examples = 4096
    config.eval.linear_codec_steps = 300

    config.pipeline = ml_collections.ConfigDict()
    config.pipeline.seeds = (0,)
    config.pipeline.methods = ("stage1", "rkdsc", "no_kd", "cnn")

    config.export = common.export("rkdsc")  # rkdsc | no_kd | cnn
    config.mesh = common.mesh()
    if variant == "capacity":
        config.data.num_eval_examples = 10_000
        config.teacher.finetune.num_steps = 938  # One epoch of the 60k training images at batch 64.
        config.teacher.finetune.warmup_steps = 100
        config.search.enabled = False
        config.student.genotype = "KDL_FMNIST"  # runs/darts_fmnist/kdl_pc_s0, shipped with the package.
        config.student.encoders.genotype = dict(channels=16, layers=5)
        config.stage1.num_steps = 500
        config.stage2.num_steps = 700
    return config
