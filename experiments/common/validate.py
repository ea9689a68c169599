"""Config validation at launch: every field of every config, checked on the host before any data
is read or anything is compiled, with ONE error listing every problem.

``validate(config)`` is called by ``experiments.main.run_mode`` (so tests and notebooks that call
``run_mode`` are protected as well as the command line).  Each problem names the field path, the
bad value and what is allowed, e.g. ``train.batch_size=0: must be an integer >= 1``.  Fields a
config does not have are skipped, so one checker serves every config of ``experiments/configs``.

``coerce_tuple`` gives command-line tuple overrides the element type of the config's own tuple:
ml_collections parses ``--config.eval.channels=awgn,rician`` as the one string ``'awgn,rician'``
and ``--config.eval.snrs_db=-10,0,10`` as ints (``experiments.main`` calls it).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from absl import logging

# Classes and native image side of the datasets the data layer reads by name (rkdsc_jax.data:
# Fashion-MNIST and the synthetic set are 10-class 28 px; TFDS / image-folder sets as published).
NUM_CLASSES = {"fashion_mnist": 10, "synthetic": 10, "mnist": 10, "cifar10": 10, "cifar100": 100,
               "imagenet2012": 1000, "tiny_imagenet": 200}
IMAGE_SIZES = {"fashion_mnist": 28, "synthetic": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "tiny_imagenet": 64}
IMAGE_CHANNELS = {"fashion_mnist": 1, "synthetic": 1, "mnist": 1, "cifar10": 3, "cifar100": 3, "tiny_imagenet": 3,
                  "imagenet2012": 3}
TRAIN_EXAMPLES = {"fashion_mnist": 60000, "synthetic": 512, "mnist": 60000, "cifar10": 50000, "cifar100": 50000,
                  "tiny_imagenet": 100000, "imagenet2012": 1281167}
# Names get_source reads itself (anything else goes to TFDS).
SOURCE_NAMES = ("fashion_mnist", "synthetic", "image_folder", "tiny_imagenet")

# Paper A's runs (experiments.rkdsc.modes.pipeline) and the ones with a channel codec to export;
# paper B's methods (experiments.ltosc.methods.METHODS: the shared core imports no study, a test
# keeps the copies equal); the classifier registry of rkdsc_jax.models.get_classifier.
PIPELINE_METHODS = ("stage1", "rkdsc", "no_kd", "cnn")
EXPORTABLE_PIPELINE_METHODS = ("rkdsc", "no_kd", "cnn")
STUDY_METHODS = ("eff_tosc", "l_tosc", "l_tosc_kd", "l_tosc_kd_kl", "l_tosc_kd_online", "res_tosc")
CLASSIFIERS = ("efficientnet_b", "efficientnet_lite", "resnet", "small_cnn", "tinyvit")
OPTIMIZERS = ("adamw", "sgd")  # rkdsc_jax.train.make_optimizer
SUBSETS = ("first", "random")  # experiments.common.inputs.train_source

# Modes per kind of config (which sections it has).
FAMILY_MODES = {
    "pipeline": ("rkdsc", "rkd_stage1", "rkd_stage2", "export", "finetune_teacher"),
    "study": ("ltosc_study", "ltosc", "precompute_logits", "verify_logits", "evaluate", "export", "finetune_teacher"),
    "darts": ("search", "retrain"),
    "classifier": ("train_classifier",),
}
MODES = tuple(sorted({m for modes in FAMILY_MODES.values() for m in modes}))  # = experiments.main.MODES
FAMILY_NAMES = {"pipeline": "paper A's RKD-SC pipeline", "study": "paper B's L-TOSC study",
                "darts": "a KDL-DARTS search", "classifier": "a classifier"}


class ConfigError(ValueError):
    """Every problem found in a config, one per line."""

    def __init__(self, problems: Sequence[str], source: str = "the config"):
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} invalid field(s) in {source} (fix them with "
                         f"--config.FIELD=VALUE or in the config file):\n{lines}")


_MISSING = object()
_WARNED: set[str] = set()


def _warn(message: str) -> None:
    """A suspicious but legal value, said once per process (the CLI validates at parse and at run)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logging.warning(message)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _family(config) -> str | None:
    if "pipeline" in config:
        return "pipeline"
    if "study" in config:
        return "study"
    if "search" in config and "retrain" in config:
        return "darts"
    if "model" in config and "train" in config:
        return "classifier"
    return None


class _Checker:
    """Collects problems; every check skips a field the config does not have."""

    def __init__(self, config):
        self.config = config
        self.problems: list[str] = []

    # --- access ---------------------------------------------------------------------------

    def get(self, path: str, default=_MISSING):
        node = self.config
        for part in path.split("."):
            try:
                if part not in node:
                    return default
                node = node[part]
            except TypeError:  # A scalar where a section was expected.
                return default
        return node

    def has(self, path: str) -> bool:
        return self.get(path) is not _MISSING

    def bad(self, path: str, value, rule: str) -> None:
        self.problems.append(f"{path}={value!r}: {rule}")

    # --- scalars --------------------------------------------------------------------------

    def integer(self, path: str, minimum: int = 1, *, optional: bool = False, maximum: int | None = None,
                what: str = "") -> Any:
        value = self.get(path)
        if value is _MISSING or (optional and value is None):
            return None
        within = f" and <= {maximum}" if maximum is not None else ""
        rule = f"must be an integer >= {minimum}{within}{what}" + (" (or None)" if optional else "")
        if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
            self.bad(path, value, rule)
            return None
        return int(value)

    def number(self, path: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, optional: bool = False, what: str = "") -> Any:
        """A finite real number in [low, high] (``*_open``: the bound excluded)."""
        value = self.get(path)
        if value is _MISSING or (optional and value is None):
            return None
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        rule = "must be a finite number" + (" " + " and ".join(parts) if parts else "") + what
        if optional:
            rule += " (or None)"
        ok = _is_number(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            self.bad(path, value, rule)
            return None
        return float(value)

    def positive(self, path: str, **kwargs):
        return self.number(path, low=0.0, low_open=True, **kwargs)

    def non_negative(self, path: str, **kwargs):
        return self.number(path, low=0.0, **kwargs)

    def fraction(self, path: str, **kwargs):
        """In [0, 1): momenta, Adam betas, dropout, label smoothing."""
        return self.number(path, low=0.0, high=1.0, high_open=True, **kwargs)

    def choice(self, path: str, options: Sequence[str], *, optional: bool = False) -> Any:
        value = self.get(path)
        if value is _MISSING or (optional and value is None):
            return None
        if not isinstance(value, str) or value not in options:
            self.bad(path, value, f"must be one of {', '.join(repr(o) for o in options)}")
            return None
        return value

    def boolean(self, path: str) -> None:
        value = self.get(path)
        if value is not _MISSING and not isinstance(value, bool):
            self.bad(path, value, "must be True or False")

    def text(self, path: str, *, optional: bool = False) -> Any:
        value = self.get(path)
        if value is _MISSING or (optional and value is None):
            return None
        if not isinstance(value, str) or not value.strip():
            self.bad(path, value, "must be a non-empty string" + (" (or None)" if optional else ""))
            return None
        return value

    # --- sequences ------------------------------------------------------------------------

    def _sequence(self, path: str, *, empty_ok: bool = False):
        value = self.get(path)
        if value is _MISSING:
            return None
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            self.bad(path, value, f"must be a tuple (on the command line a comma list: --config.{path}=a,b)")
            return None
        if not value and not empty_ok:
            self.bad(path, value, "must not be empty")
            return None
        return tuple(value)

    def _unique(self, path: str, values) -> None:
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            self.bad(path, values, f"has duplicates {', '.join(map(repr, repeated))}; list each value once")

    def floats(self, path: str, *, low: float | None = None, high: float | None = None,
               unique: bool = True, empty_ok: bool = False, what: str = "") -> tuple[float, ...] | None:
        values = self._sequence(path, empty_ok=empty_ok)
        if values is None:
            return None
        for i, v in enumerate(values):
            if not _is_number(v) or not math.isfinite(v) or (low is not None and v < low) or (
                    high is not None and v > high):
                bounds = f" in [{low:g}, {high:g}]" if low is not None and high is not None else (
                    f" >= {low:g}" if low is not None else "")
                self.bad(path, values, f"element {i} ({v!r}) must be a finite number{bounds}{what}")
                return None
        if unique:
            self._unique(path, tuple(values))
        return tuple(float(v) for v in values)

    def integers(self, path: str, minimum: int = 1, *, unique: bool = True, empty_ok: bool = False,
                 maximum: int | None = None, what: str = "") -> tuple[int, ...] | None:
        values = self._sequence(path, empty_ok=empty_ok)
        if values is None:
            return None
        for i, v in enumerate(values):
            if not _is_int(v) or v < minimum or (maximum is not None and v > maximum):
                within = f" and <= {maximum}" if maximum is not None else ""
                self.bad(path, values, f"element {i} ({v!r}) must be an integer >= {minimum}{within}{what}")
                return None
        if unique:
            self._unique(path, tuple(values))
        return tuple(int(v) for v in values)

    def names(self, path: str, options: Sequence[str], *, empty_ok: bool = False) -> tuple[str, ...] | None:
        values = self._sequence(path, empty_ok=empty_ok)
        if values is None:
            return None
        unknown = [v for v in values if not isinstance(v, str) or v not in options]
        if unknown:
            self.bad(path, values, f"unknown {', '.join(map(repr, unknown))}; use some of "
                                   f"{', '.join(repr(o) for o in options)}")
            return None
        self._unique(path, tuple(values))
        return values

    def snr_range(self, path: str) -> None:
        values = self.floats(path, unique=False, what=" (dB)")
        if values is None:
            return
        if len(values) != 2 or values[0] > values[1]:
            self.bad(path, self.get(path), "must be (low, high) in dB with low <= high, e.g. -10,25")
            return
        if values[0] < -50 or values[1] > 60:
            _warn(f"{path}={values} reaches beyond -50...60 dB: is it in dB?")


# --- sections ---------------------------------------------------------------------------------


def _train_examples(c: _Checker, section: str) -> int | None:
    """How many training examples a section's run reads, when the config says it."""
    # The teacher's fine-tuning reads the first teacher.finetune.num_train_examples, not data's subset.
    paths = (f"{section}.num_train_examples",) if section == "teacher.finetune" else ("data.num_train_examples",)
    for path in paths:
        n = c.get(path, None)
        if _is_int(n) and n > 0:
            return int(n)
    name = c.get("data.name", None)
    return TRAIN_EXAMPLES.get(name.removeprefix("tfds:")) if isinstance(name, str) else None


def _check_train(c: _Checker, section: str) -> None:
    """A ``common.train`` section (also paper A's stages and the teacher's fine-tuning)."""
    if not c.has(section):
        return
    batch = c.integer(f"{section}.batch_size")
    num_steps = c.integer(f"{section}.num_steps", optional=True)
    epochs = None
    if c.has(f"{section}.num_epochs") and not (num_steps and c.get(f"{section}.num_epochs") is None):
        epochs = c.positive(f"{section}.num_epochs", optional=num_steps is not None,
                            what=" (or set num_steps)" if num_steps is None else "")
    examples = _train_examples(c, section)
    if num_steps is None and epochs and batch and examples:  # As train.steps_from_epochs counts them.
        num_steps = max(1, math.ceil(epochs * examples / batch))
    c.choice(f"{section}.optimizer", OPTIMIZERS)
    c.positive(f"{section}.learning_rate")
    c.positive(f"{section}.head_learning_rate")
    warmup = c.integer(f"{section}.warmup_steps", 0)
    if warmup is not None and num_steps is not None and warmup >= num_steps:
        given = c.get(f"{section}.num_steps", None) == num_steps
        total = f"{section}.num_steps={num_steps}" if given else f"the run's {num_steps} steps"
        c.bad(f"{section}.warmup_steps", warmup, f"must be < {total} (the learning rate would never reach its "
                                                  "peak)")
    c.non_negative(f"{section}.weight_decay")
    if c.get(f"{section}.optimizer") == "sgd" or c.has(f"{section}.momentum"):
        c.fraction(f"{section}.momentum")
    c.positive(f"{section}.grad_clip_norm", optional=True)
    c.fraction(f"{section}.label_smoothing")
    log_every = c.integer(f"{section}.log_every")
    checkpoint_every = c.integer(f"{section}.checkpoint_every")
    if log_every and checkpoint_every and checkpoint_every % log_every:
        c.bad(f"{section}.checkpoint_every", checkpoint_every,
              f"must be a multiple of {section}.log_every={log_every} (checkpoints on logging boundaries keep "
              "a resumed run's metrics exact)")
    c.integer(f"{section}.keep_checkpoints")
    c.integer(f"{section}.eval_every", optional=True)
    c.integer(f"{section}.eval_batch_size")


def _check_data(c: _Checker) -> None:
    from rkdsc_jax import data

    c.text("data.name")
    c.text("data.data_dir", optional=True)
    c.text("data.train_split")
    c.text("data.eval_split")
    c.integer("data.num_train_examples", optional=True)
    c.integer("data.num_eval_examples", optional=True)
    c.choice("data.subset", SUBSETS)
    c.integer("data.subset_seed", 0)
    c.integer("data.split_seed", 0)
    c.choice("data.augment", data.AUGMENT_POLICIES)
    c.integer("data.crop_padding", 0)
    c.integer("data.image_size", optional=True)
    c.integer("data.resize_to", optional=True)
    channels = c.get("data.channels")
    if channels not in (_MISSING, None, 1, 3):
        c.bad("data.channels", channels, "must be None (the dataset's), 1 or 3")
    normalization = c.choice("data.normalization", sorted(data.NORMALIZATIONS))
    c.integer("data.worker_count", 0)
    name = c.get("data.name")
    if isinstance(name, str) and name and not name.startswith("tfds:") and name not in (*SOURCE_NAMES,
                                                                                         *NUM_CLASSES):
        import difflib

        close = difflib.get_close_matches(name, [*SOURCE_NAMES, *NUM_CLASSES], n=1, cutoff=0.75)
        if close:
            c.bad("data.name", name, f"is not a dataset name the library knows; did you mean {close[0]!r}? "
                                     f"(write tfds:{name} to read that TFDS dataset)")
    native = IMAGE_CHANNELS.get(name.removeprefix("tfds:")) if isinstance(name, str) else None
    channels = channels if channels in (1, 3) else native
    if normalization and channels and len(data.NORMALIZATIONS[normalization][0]) not in (1, channels):
        c.bad("data.normalization", normalization,
              f"has {len(data.NORMALIZATIONS[normalization][0])}-channel statistics but the model sees {channels}-"
              f"channel images; use a {channels}-channel or single-value normalization (e.g. 'unit') or set "
              "data.channels")


def num_classes(config) -> int | None:
    """The number of classes of ``config.data.name``, when the name says it."""
    name = config.data.name if "data" in config and "name" in config.data else None
    if not isinstance(name, str):
        return None
    return NUM_CLASSES.get(name.removeprefix("tfds:"))


def _image_size(config) -> int | None:
    c = _Checker(config)
    size = c.get("data.image_size")
    if _is_int(size) and size > 0:
        return int(size)
    name = c.get("data.name")
    return IMAGE_SIZES.get(name.removeprefix("tfds:")) if isinstance(name, str) else None


def _check_teacher(c: _Checker, extra_kinds: Sequence[str] = ()) -> None:
    if not c.has("teacher"):
        return
    from experiments.common.teacher import TEACHER_KINDS

    kind = c.choice("teacher.kind", (*extra_kinds, *TEACHER_KINDS))
    if kind in ("clip", "vit"):
        c.text("teacher.hub_id")
        prompt = c.get("teacher.prompt")
        if kind == "clip" and prompt is not _MISSING and (not isinstance(prompt, str) or "{}" not in prompt):
            c.bad("teacher.prompt", prompt, "must contain '{}' where CLIP's prompts put the class name")
    if kind == "classifier":
        c.text("teacher.workdir")
    c.integer("teacher.image_size", optional=True)
    c.boolean("teacher.finetune.enabled")
    if c.get("teacher.finetune.enabled") is True:
        _check_train(c, "teacher.finetune")
        c.integer("teacher.finetune.num_train_examples", optional=True)


def _check_channel_eval(c: _Checker) -> None:
    from rkdsc_jax import channels

    c.choice("channel.csi", channels.CSI_MODES)
    c.choice("channel.equalizer", channels.EQUALIZERS)
    c.integer("eval.batch_size")
    snrs = c.floats("eval.snrs_db", what=" (SNR in dB)")
    c.names("eval.channels", channels.CHANNEL_KINDS)
    c.integer("eval.seed", 0)
    report = c.floats("eval.report_snrs_db", what=" (SNR in dB)")
    if snrs and report:
        missing = [s for s in report if s not in snrs]
        if missing:
            c.bad("eval.report_snrs_db", c.get("eval.report_snrs_db"),
                  f"{', '.join(f'{s:g}' for s in missing)} dB not in eval.snrs_db: the report would show '—'; "
                  "report SNRs must be evaluated ones")
    c.floats("eval.bandwidth_snrs_db", what=" (SNR in dB)")
    c.integer("eval.latency_repeats")
    c.integer("eval.codec_fit_examples", 2, what=" (training images the equal-bandwidth PCA codec is fitted on)")
    c.integer("eval.linear_codec_steps", 0, what=" (steps of the trained linear codec; 0: none)")


def _check_mesh(c: _Checker) -> None:
    devices = c.integer("mesh.num_devices", optional=True)
    c.integer("mesh.host_devices", optional=True)
    c.boolean("mesh.distributed")
    if devices:
        for path in ("train.batch_size", "stage1.batch_size", "stage2.batch_size", "eval.batch_size",
                     "search.batch_size", "retrain.batch_size", "teacher.finetune.batch_size"):
            size = c.get(path)
            if _is_int(size) and size > 0 and size % devices:
                c.bad(path, size, f"must be a multiple of mesh.num_devices={devices} (the batch is split over "
                                  "the devices)")


def _check_export(c: _Checker, methods: Sequence[str], seeds, training: bool, trained_methods) -> None:
    if not c.has("export"):
        return
    method = c.choice("export.method", methods)
    seed = c.integer("export.seed", 0, optional=True)
    c.text("export.directory", optional=True)
    c.boolean("export.overwrite")
    c.integer("export.latency_repeats")
    if training:  # The export stage of a whole run: it must name one of the runs it trains.
        if method and trained_methods is not None and method not in trained_methods:
            c.bad("export.method", method, f"is not trained by this run ({', '.join(trained_methods)}); "
                                           "export one of them")
        if seed is not None and seeds is not None and seed not in seeds:
            c.bad("export.seed", seed, f"is not one of the run's seeds {seeds}; export one of them (or None: "
                                       "the first)")


def _check_search(c: _Checker) -> None:
    """A KDL-DARTS search section (``rkdsc_jax.nas``)."""
    if not c.has("search"):
        return
    from rkdsc_jax import data
    from rkdsc_jax.nas import ops, search, search_space

    c.boolean("search.enabled")
    if c.get("search.enabled") is False:
        return
    c.integer("search.layers")
    c.integer("search.channels")
    c.integer("search.steps")
    batch = c.integer("search.batch_size")
    c.integer("search.epochs")
    c.choice("search.order", search.ORDERS)
    c.choice("search.second_order_method", search.SECOND_ORDER_METHODS)
    c.boolean("search.unroll_momentum")
    c.non_negative("search.lam", high=1.0, what=" (the KD share of the loss)")
    c.positive("search.temperature")
    c.non_negative("search.mu", what=" (the weight of the complexity term)")
    c.boolean("search.count_bn_affine")
    c.choice("search.complexity_normalization", search.NORMALIZATIONS)
    w_lr = c.positive("search.w_lr")
    w_lr_min = c.non_negative("search.w_lr_min")
    if w_lr is not None and w_lr_min is not None and w_lr_min > w_lr:
        c.bad("search.w_lr_min", w_lr_min, f"must be <= search.w_lr={w_lr:g}")
    c.fraction("search.w_momentum")
    c.non_negative("search.w_weight_decay")
    c.positive("search.w_grad_clip")
    c.positive("search.a_lr")
    c.fraction("search.a_b1")
    c.fraction("search.a_b2")
    c.non_negative("search.a_weight_decay")
    c.integer("search.max_skip", 0, optional=True)
    c.names("search.cap_cells", search_space.CELL_TYPES, empty_ok=True)
    c.choice("search.impl", ops.IMPLS)
    c.choice("search.augment", data.AUGMENT_POLICIES)
    log_every = c.integer("search.log_every")
    checkpoint_every = c.integer("search.checkpoint_every")
    if log_every and checkpoint_every and checkpoint_every % log_every:
        c.bad("search.checkpoint_every", checkpoint_every, f"must be a multiple of search.log_every={log_every}")
    # The search splits its examples in a training and a validation half of whole batches.
    path = "search.num_train_examples" if c.has("search.num_train_examples") else "data.num_train_examples"
    examples = c.integer(path, 2, optional=True)
    if examples and batch and examples // 2 < batch:
        c.bad(path, examples, f"gives halves of {examples // 2} examples, fewer than one "
                              f"search.batch_size={batch}; use >= {2 * batch}")


def _check_model_sizes(c: _Checker, section: str) -> None:
    """Every size-like field of an encoder/model kwargs section: positive integers."""
    value = c.get(section)
    if value is _MISSING or value is None:
        return
    if not hasattr(value, "items"):
        c.bad(section, value, "must be a dict of the encoder's settings")
        return
    for key, item in value.items():
        path = f"{section}.{key}"
        if key in ("features", "widths", "dims", "depths", "num_heads", "windows", "stage_sizes"):
            c.integers(path, unique=False)
        elif key in ("channels", "layers", "hidden", "convs_per_stage", "image_size"):
            c.integer(path, optional=key == "image_size")
        elif key in ("dropout", "drop_path_prob", "drop_connect_rate"):
            c.fraction(path)


def _check_genotype(c: _Checker, path: str, *, optional: bool = False) -> None:
    """A shipped genotype's name, a genotype JSON or a finished search workdir: one that loads now."""
    from rkdsc_jax import genotype_data
    from rkdsc_jax.nas import genotypes

    spec = c.text(path, optional=optional)
    if not spec:
        return
    try:
        genotypes.load(spec)
    except FileNotFoundError:
        c.bad(path, spec, f"no genotype there: pass a genotype JSON, a finished search workdir or a shipped "
                          f"genotype's name {list(genotype_data.NAMES)}")
    except ValueError as e:  # Not JSON, or not a valid cell.
        c.bad(path, spec, str(e))


# --- families ---------------------------------------------------------------------------------


def _check_pipeline(c: _Checker, mode: str, classes: int | None) -> None:
    from rkdsc_jax.distill import losses, rkd_steps
    from rkdsc_jax.models import tosc

    c.text("pipeline_dir", optional=True)
    _check_search(c)
    encoder = c.choice("student.encoder", sorted(tosc.ENCODERS))
    _check_genotype(c, "student.genotype", optional=True)
    if encoder:
        _check_model_sizes(c, f"student.encoders.{encoder}")
    c.integer("codec.width")
    heads = c.integer("codec.heads")
    width = c.get("codec.width")
    if heads and _is_int(width) and width > 0 and width % heads:
        c.bad("codec.width", width, f"must be a multiple of codec.heads={heads} (attention splits the width)")
    c.integer("codec.depth")
    per_token = c.integer("codec.symbols_per_token")
    max_symbols = _max_symbols(c, encoder, per_token)
    what = f" (the codec sends at most {max_symbols} symbols)" if max_symbols else ""
    c.integers("codec.budgets", maximum=max_symbols, empty_ok=True, what=what)
    c.choice("objective.feature_loss", losses.FEATURE_LOSS_KINDS)
    weights = [c.non_negative(f"objective.{w}") for w in ("feature_weight", "kd_weight", "ce_weight")]
    if all(w == 0 for w in weights):
        c.bad("objective.ce_weight", c.get("objective.ce_weight"),
              "objective.feature_weight, kd_weight and ce_weight are all 0: nothing to learn; make one > 0")
    c.positive("objective.temperature")
    for stage in ("stage1", "stage2"):
        _check_train(c, stage)
    c.snr_range("stage2.snr_range")
    c.names("stage2.channels", rkd_steps.TRAIN_CHANNELS)
    c.boolean("stage2.freeze_encoder")
    c.text("stage2.init_from", optional=True)
    _check_model_sizes(c, "baselines.cnn")
    c.integer("baselines.cnn_decoder_hidden")
    c.integer("baselines.num_steps", optional=True)
    seeds = c.integers("pipeline.seeds", 0)
    methods = c.names("pipeline.methods", PIPELINE_METHODS)
    _check_export(c, EXPORTABLE_PIPELINE_METHODS, seeds, mode == "rkdsc", methods)
    if mode == "rkdsc" and encoder == "genotype" and not c.get("student.genotype") and c.get(
            "search.enabled") is False:
        c.bad("search.enabled", False, "the student is the pipeline's searched genotype: enable the search or set "
                                       "--config.student.genotype to a genotype JSON or search workdir")


def _max_symbols(c: _Checker, encoder: str | None, per_token: int | None) -> int | None:
    """The CAT codec's full budget (tokens × symbols per token), when the encoder's token grid
    follows from the config: a genotype network (its reduction cells halve the image) or a CNN
    (2×2 pooling per stage)."""
    size = _image_size(c.config)
    if not per_token or not size or encoder not in ("genotype", "cnn"):
        return None
    kwargs = c.get(f"student.encoders.{encoder}", None)
    if kwargs is None:
        return None
    if encoder == "genotype":
        from rkdsc_jax.nas import search_space

        layers = kwargs.get("layers", 0) if hasattr(kwargs, "get") else 0
        if not _is_int(layers) or layers < 1:
            return None
        side = size
        for _ in range(sum(spec.reduction for spec in search_space.cell_plan(layers, 1))):
            side = math.ceil(side / 2)
    else:
        features = kwargs.get("features", ()) if hasattr(kwargs, "get") else ()
        side = size // 2 ** len(features)
    return side * side * per_token if side > 0 else None


def _check_study(c: _Checker, mode: str, classes: int | None) -> None:
    from rkdsc_jax.distill import losses, tosc_steps
    from rkdsc_jax.models import tosc

    methods_all = STUDY_METHODS
    c.choice("method", methods_all)
    c.text("study_dir", optional=True)
    bound = f" (data.name={c.get('data.name')!r} has {classes} classes)" if classes else ""
    top_k = c.integer("store.top_k", maximum=classes, what=bound)
    if top_k and classes and top_k == classes:
        _warn(f"store.top_k={top_k} keeps all {classes} classes: the store saves nothing over full logits.")
    c.text("store.directory", optional=True)
    c.positive("store.temperature")
    c.integer("store.num_epochs")
    c.integer("store.batch_size")
    c.integer("store.shard_size")
    c.integer("store.verify_samples")
    c.integer("store.seed", minimum=0)
    c.boolean("store.shared_views")
    c.choice("model.student", sorted(tosc.ENCODERS))
    encoders = c.get("model.encoders")
    if encoders is not _MISSING and hasattr(encoders, "keys"):
        unknown = [k for k in encoders.keys() if k not in tosc.ENCODERS]
        if unknown:
            c.bad("model.encoders", tuple(encoders.keys()), f"unknown encoder(s) {unknown}; use names of "
                                                            f"{sorted(tosc.ENCODERS)}")
        for name in encoders.keys():
            if name in tosc.ENCODERS:
                _check_model_sizes(c, f"model.encoders.{name}")
    c.integer("model.num_symbols")
    c.boolean("model.channel_adaptive")
    c.integer("model.cam_hidden", optional=True)
    c.integer("model.decoder_hidden")
    c.non_negative("objective.beta", what=" (β weighs the soft cross-entropy against the rate)")
    c.positive("objective.temperature")
    c.fraction("objective.label_smoothing")
    c.snr_range("objective.snr_range")
    c.names("objective.channels", tosc_steps.TRAIN_CHANNELS)
    c.choice("objective.rate_estimator", losses.IB_ESTIMATORS)
    _check_train(c, "train")
    methods = c.names("study.methods", methods_all)
    seeds = c.integers("study.seeds", 0)
    c.integers("study.train_sizes")
    c.names("study.size_methods", methods_all, empty_ok=True)
    size_snrs, snrs = c.floats("study.size_snrs_db", what=" (SNR in dB)"), c.get("eval.snrs_db", None)
    if size_snrs and isinstance(snrs, (tuple, list)):
        missing = [s for s in size_snrs if s not in snrs]
        if missing:  # The full-size point is the main run, evaluated at eval.snrs_db only.
            c.bad("study.size_snrs_db", c.get("study.size_snrs_db"),
                  f"{', '.join(f'{s:g}' for s in missing)} dB not in eval.snrs_db: the size sweep reuses the main "
                  "runs, so its SNRs must be evaluated ones")
    c.integer("study.size_steps", optional=True)
    c.integers("study.size_seeds", 0)
    c.integer("study.ablation_steps")
    c.names("study.loss_ablation", ("l_tosc_kd_kl", "l_tosc_kd_online"), empty_ok=True)
    c.floats("study.betas", low=0.0, empty_ok=True, what=" (β of eq. 13)")
    c.integers("study.ablation_seeds", 0, empty_ok=True)
    c.integer("study.long_factor", 2, optional=True, what=" (times the main runs' steps)")
    c.names("study.long_methods", methods_all, empty_ok=True)
    _check_export(c, methods_all, seeds, mode == "ltosc_study", methods)


def _check_darts(c: _Checker, mode: str, classes: int | None) -> None:
    _check_search(c)
    kind = c.get("teacher.kind")
    _check_teacher(c, extra_kinds=("none", "classifier", "store"))
    lam = c.get("search.lam")
    if mode == "search" and kind == "none" and _is_number(lam) and lam > 0:
        c.bad("teacher.kind", kind, f"search.lam={lam:g} distils from a teacher: set teacher.kind (e.g. "
                                    "'classifier') or --config.search.lam=0 --config.search.mu=0 (plain DARTS)")
    if mode == "search" and kind == "store":
        c.bad("teacher.kind", kind, "the logit store is not wired into the search; use 'classifier', a "
                                    "pretrained teacher or 'none'")
    if kind == "classifier":
        c.choice("teacher.model.name", CLASSIFIERS)
        _check_model_sizes(c, "teacher.model")
    if mode == "retrain":  # A search's retrain.genotype may name a workdir the search has yet to write.
        _check_genotype(c, "retrain.genotype")
    else:
        c.text("retrain.genotype")
    c.integer("retrain.layers")
    c.integer("retrain.channels")
    c.positive("retrain.epochs")
    c.integer("retrain.batch_size")
    c.positive("retrain.learning_rate")
    c.fraction("retrain.momentum")
    c.non_negative("retrain.weight_decay")
    c.positive("retrain.grad_clip")
    c.boolean("retrain.auxiliary")
    c.non_negative("retrain.aux_weight")
    c.fraction("retrain.drop_path_prob")
    c.integer("retrain.num_train_examples", optional=True)
    c.integer("retrain.num_eval_examples", optional=True)
    _check_train(c, "train")


def _check_classifier(c: _Checker, mode: str, classes: int | None) -> None:
    c.choice("model.name", CLASSIFIERS)
    _check_model_sizes(c, "model")
    _check_train(c, "train")


_FAMILY_CHECKS = {"pipeline": _check_pipeline, "study": _check_study, "darts": _check_darts,
                  "classifier": _check_classifier}


def problems(config) -> list[str]:
    """Every problem of ``config`` for its ``mode`` (empty when it is valid)."""
    c = _Checker(config)
    mode = c.get("mode")
    family = _family(config)
    if mode not in MODES:
        c.bad("mode", mode, f"must be one of {', '.join(MODES)}")
        mode = None
    elif family and mode not in FAMILY_MODES[family]:
        c.bad("mode", mode, f"is not a mode of {FAMILY_NAMES[family]}; use one of "
                            f"{', '.join(FAMILY_MODES[family])}")
    c.integer("seed", 0)
    classes = num_classes(config)
    if c.has("data"):
        _check_data(c)
    if family != "darts":
        _check_teacher(c)
    if c.has("eval") or c.has("channel"):
        _check_channel_eval(c)
    if c.has("mesh"):
        _check_mesh(c)
    if family:
        _FAMILY_CHECKS[family](c, mode, classes)
    return c.problems


def validate(config, source: str = "the config") -> None:
    """Raises :class:`ConfigError` listing every invalid field of ``config``; returns when valid."""
    found = problems(config)
    if found:
        raise ConfigError(found, source)


# --- command-line tuples ----------------------------------------------------------------------


def list_example(like) -> str:
    """A command-line example of a tuple like ``like``: itself when it has several elements."""
    if isinstance(like, (tuple, list)) and len(like) > 1:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in like)
    kind = type(like[0]) if isinstance(like, (tuple, list)) and like else int
    return {str: "awgn,rayleigh", float: "-10,0,10"}.get(kind, "0,1,2")


def coerce_tuple(path: str, value, like: tuple) -> tuple:
    """``value`` (a tuple override as ml_collections parsed it) with the element type of the config's
    own tuple ``like``: strings split at commas, ints made floats for float tuples.  Raises
    :class:`ConfigError` naming the field for a list that is not of that type ("a,b" for seeds, "0,,1")."""
    kinds = {type(v) for v in like}
    if len(kinds) != 1 or not isinstance(value, (tuple, list)):
        return value  # Empty or mixed default: nothing to go by.
    kind = kinds.pop()
    if kind not in (int, float, str):
        return value
    pieces = []
    for item in value:
        if isinstance(item, str) and "," in item:
            pieces.extend(p.strip().strip("'\"") for p in item.split(","))
        else:
            pieces.append(item.strip().strip("'\"") if isinstance(item, str) else item)
    example = list_example(like)
    out = []
    for piece in pieces:
        try:
            if kind is str:
                if not isinstance(piece, str) or not piece:
                    raise ValueError
                out.append(piece)
            elif kind is int:
                if isinstance(piece, bool) or (isinstance(piece, float) and not piece.is_integer()):
                    raise ValueError
                out.append(int(piece) if not isinstance(piece, str) else int(piece.strip()))
            else:
                if isinstance(piece, bool) or piece == "":
                    raise ValueError
                out.append(float(piece))
        except (TypeError, ValueError):
            noun = {str: "names", int: "integers", float: "numbers"}[kind]
            raise ConfigError([f"{path}={','.join(map(str, value))!s}: must be a comma-separated list of {noun}, "
                               f"e.g. --config.{path}={example}"], "the command line") from None
    return tuple(out)
