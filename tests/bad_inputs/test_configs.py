"""Config validation at launch (issue 18): every shipped config is valid in each of its modes, and
every invalid field is refused before any work with a message naming the field, the value and
what is allowed (``experiments.common.validate``)."""

import copy
import importlib
import math
import os
import re

import pytest

from experiments import main
from experiments.common import validate
from experiments.common.validate import ConfigError

# Every config file of experiments/configs and its variants (the part after ':' on the command line).
CONFIGS = [("darts_cifar10", None), ("darts_cifar10", "plain"), ("darts_fmnist", None), ("darts_fmnist", "plain"),
           ("fmnist_classifier", None), ("synthetic_classifier", None), ("ltosc_fmnist", None),
           ("ltosc_imagenet_clip", None), ("rkdsc_fmnist", None), ("rkdsc_cifar10", None), ("rkdsc_cifar100", None),
           ("rkdsc_fmnist", "capacity"), ("darts_fmnist", "kdl_pc"), ("rkdsc_tinyimagenet", None)]
NAN, INF = math.nan, math.inf


def _load(name, variant=None):
    module = importlib.import_module(f"experiments.configs.{name}")
    return module.get_config(variant) if variant else module.get_config()


@pytest.fixture(scope="module")
def shipped():
    return {(name, variant): _load(name, variant) for name, variant in CONFIGS}


def _set(config, path, value):
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _with(shipped, name, fields):
    config = copy.deepcopy(shipped[(name, None)])
    for path, value in fields.items():
        _set(config, path, value)
    return config


def test_the_list_covers_every_config_file():
    here = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
    files = {f[:-3] for f in os.listdir(here) if f.endswith(".py") and f not in ("__init__.py", "common.py")}
    assert files == {name for name, _ in CONFIGS}


def test_validate_knows_exactly_the_entry_points_modes_and_the_libraries_names():
    from experiments.ltosc.methods import METHODS
    from rkdsc_jax import models

    assert set(validate.MODES) == set(main.MODES)
    assert set(validate.STUDY_METHODS) == set(METHODS)
    with pytest.raises(ValueError) as unknown:
        models.get_classifier("?", 10)
    assert str(sorted(validate.CLASSIFIERS)) in str(unknown.value)


@pytest.mark.parametrize("name,variant", CONFIGS, ids=[f"{n}:{v}" if v else n for n, v in CONFIGS])
def test_every_shipped_config_is_valid_in_each_of_its_modes(shipped, name, variant):
    config = shipped[(name, variant)]
    family = validate._family(config)
    assert config.mode in validate.FAMILY_MODES[family]
    for mode in validate.FAMILY_MODES[family]:
        child = copy.deepcopy(config)
        child.mode = mode
        assert validate.problems(child) == [], (name, mode)


# (config, {field: bad value}, the message it must give): each a distinct wrong input.
BAD = [
    # Sizes and step counts.
    ("synthetic_classifier", {"train.batch_size": 0}, "train.batch_size=0: must be an integer >= 1"),
    ("synthetic_classifier", {"train.batch_size": -8}, "train.batch_size=-8: must be an integer >= 1"),
    ("synthetic_classifier", {"data.worker_count": -1}, "data.worker_count=-1: must be an integer >= 0"),
    ("synthetic_classifier", {"train.num_steps": 0}, "train.num_steps=0: must be an integer >= 1 (or None)"),
    ("synthetic_classifier", {"train.num_epochs": 0.0}, "train.num_epochs=0.0: must be a finite number > 0"),
    ("synthetic_classifier", {"train.num_epochs": NAN}, "train.num_epochs=nan: must be a finite number > 0"),
    ("synthetic_classifier", {"train.num_steps": 5, "train.warmup_steps": 5},
     "train.warmup_steps=5: must be < train.num_steps=5"),
    ("synthetic_classifier", {"train.warmup_steps": -1}, "train.warmup_steps=-1: must be an integer >= 0"),
    ("synthetic_classifier", {"train.warmup_steps": 32}, "train.warmup_steps=32: must be < the run's 32 steps"),
    ("ltosc_fmnist", {"teacher.finetune.warmup_steps": 938}, "teacher.finetune.warmup_steps=938: must be < the "
                                                             "run's 938 steps"),
    ("synthetic_classifier", {"train.log_every": 0}, "train.log_every=0: must be an integer >= 1"),
    ("synthetic_classifier", {"train.checkpoint_every": 6}, "train.checkpoint_every=6: must be a multiple of "
                                                            "train.log_every=4"),
    ("synthetic_classifier", {"train.keep_checkpoints": 0}, "train.keep_checkpoints=0: must be an integer >= 1"),
    ("synthetic_classifier", {"train.eval_batch_size": 0}, "train.eval_batch_size=0: must be an integer >= 1"),
    ("synthetic_classifier", {"data.num_train_examples": 0}, "data.num_train_examples=0: must be an integer >= 1"),
    ("synthetic_classifier", {"data.num_eval_examples": -5}, "data.num_eval_examples=-5: must be an integer >= 1"),
    ("synthetic_classifier", {"data.image_size": 0}, "data.image_size=0: must be an integer >= 1 (or None)"),
    ("synthetic_classifier", {"data.crop_padding": -2}, "data.crop_padding=-2: must be an integer >= 0"),
    ("synthetic_classifier", {"model.features": (8, 0)}, "model.features=(8, 0): element 1 (0) must be an integer"),
    ("synthetic_classifier", {"model.hidden": 0}, "model.hidden=0: must be an integer >= 1"),
    ("rkdsc_fmnist", {"stage1.num_steps": -3}, "stage1.num_steps=-3: must be an integer >= 1 (or None)"),
    ("rkdsc_fmnist", {"stage2.warmup_steps": 400}, "stage2.warmup_steps=400: must be < stage2.num_steps=400"),
    ("rkdsc_fmnist", {"search.channels": 0}, "search.channels=0: must be an integer >= 1"),
    ("rkdsc_fmnist", {"search.layers": -1}, "search.layers=-1: must be an integer >= 1"),
    ("rkdsc_fmnist", {"search.num_train_examples": 40}, "search.num_train_examples=40: gives halves of 20 examples, "
                                                        "fewer than one search.batch_size=32"),
    ("rkdsc_fmnist", {"student.encoders.genotype.channels": 0},
     "student.encoders.genotype.channels=0: must be an integer >= 1"),
    ("rkdsc_fmnist", {"codec.width": 66}, "codec.width=66: must be a multiple of codec.heads=4"),
    ("rkdsc_fmnist", {"eval.latency_repeats": 0}, "eval.latency_repeats=0: must be an integer >= 1"),
    ("ltosc_fmnist", {"model.num_symbols": 0}, "model.num_symbols=0: must be an integer >= 1"),
    ("ltosc_fmnist", {"store.shard_size": 0}, "store.shard_size=0: must be an integer >= 1"),
    ("ltosc_fmnist", {"study.train_sizes": (0, 1000)}, "study.train_sizes=(0, 1000): element 0 (0) must be an integer"),
    ("ltosc_fmnist", {"study.ablation_steps": 0}, "study.ablation_steps=0: must be an integer >= 1"),
    ("darts_fmnist", {"retrain.epochs": 0.0}, "retrain.epochs=0.0: must be a finite number > 0"),
    ("darts_fmnist", {"data.num_train_examples": 60}, "data.num_train_examples=60: gives halves of 30 examples, "
                                                      "fewer than one search.batch_size=32; use >= 64"),
    ("rkdsc_fmnist", {"search.checkpoint_every": 12}, "search.checkpoint_every=12: must be a multiple of "
                                                      "search.log_every=5"),
    ("darts_fmnist", {"retrain.layers": 0}, "retrain.layers=0: must be an integer >= 1"),
    # Rates, weights, temperatures.
    ("synthetic_classifier", {"train.learning_rate": NAN}, "train.learning_rate=nan: must be a finite number > 0"),
    ("synthetic_classifier", {"train.learning_rate": -1e-3}, "train.learning_rate=-0.001: must be a finite number > 0"),
    ("synthetic_classifier", {"train.learning_rate": INF}, "train.learning_rate=inf: must be a finite number > 0"),
    ("synthetic_classifier", {"train.weight_decay": -0.1}, "train.weight_decay=-0.1: must be a finite number >= 0"),
    ("synthetic_classifier", {"train.momentum": 1.0}, "train.momentum=1.0: must be a finite number >= 0 and < 1"),
    ("synthetic_classifier", {"train.grad_clip_norm": 0.0}, "train.grad_clip_norm=0.0: must be a finite number > 0"),
    ("synthetic_classifier", {"train.label_smoothing": 1.0}, "train.label_smoothing=1.0: must be a finite number"),
    ("synthetic_classifier", {"model.dropout": 1.5}, "model.dropout=1.5: must be a finite number >= 0 and < 1"),
    ("ltosc_fmnist", {"objective.beta": -1.0}, "objective.beta=-1.0: must be a finite number >= 0"),
    ("ltosc_fmnist", {"objective.beta": NAN}, "objective.beta=nan: must be a finite number >= 0"),
    ("ltosc_fmnist", {"objective.temperature": 0.0}, "objective.temperature=0.0: must be a finite number > 0"),
    ("ltosc_fmnist", {"store.temperature": -1.0}, "store.temperature=-1.0: must be a finite number > 0"),
    ("ltosc_fmnist", {"teacher.finetune.head_learning_rate": 0.0},
     "teacher.finetune.head_learning_rate=0.0: must be a finite number > 0"),
    ("rkdsc_fmnist", {"objective.kd_weight": -1.0}, "objective.kd_weight=-1.0: must be a finite number >= 0"),
    ("rkdsc_fmnist", {"objective.feature_weight": 0.0, "objective.kd_weight": 0.0, "objective.ce_weight": 0.0},
     "all 0: nothing to learn"),
    ("rkdsc_fmnist", {"objective.temperature": -4.0}, "objective.temperature=-4.0: must be a finite number > 0"),
    ("rkdsc_fmnist", {"search.mu": NAN}, "search.mu=nan: must be a finite number >= 0"),
    ("rkdsc_fmnist", {"search.lam": 1.5}, "search.lam=1.5: must be a finite number >= 0 and <= 1"),
    ("rkdsc_fmnist", {"search.temperature": 0.0}, "search.temperature=0.0: must be a finite number > 0"),
    ("darts_fmnist", {"search.w_lr_min": 0.5}, "search.w_lr_min=0.5: must be <= search.w_lr=0.025"),
    ("darts_fmnist", {"search.a_b1": 1.0}, "search.a_b1=1.0: must be a finite number >= 0 and < 1"),
    ("darts_fmnist", {"search.w_grad_clip": 0.0}, "search.w_grad_clip=0.0: must be a finite number > 0"),
    ("darts_fmnist", {"retrain.drop_path_prob": 1.0}, "retrain.drop_path_prob=1.0: must be a finite number >= 0 and < 1"),
    ("darts_fmnist", {"retrain.aux_weight": -0.4}, "retrain.aux_weight=-0.4: must be a finite number >= 0"),
    # SNRs.
    ("rkdsc_fmnist", {"stage2.snr_range": (25.0, -10.0)}, "stage2.snr_range=(25.0, -10.0): must be (low, high) in dB "
                                                          "with low <= high"),
    ("rkdsc_fmnist", {"stage2.snr_range": (NAN, 5.0)}, "stage2.snr_range=(nan, 5.0): element 0 (nan) must be a finite"),
    ("rkdsc_fmnist", {"stage2.snr_range": (0.0,)}, "stage2.snr_range=(0.0,): must be (low, high)"),
    ("ltosc_fmnist", {"objective.snr_range": (-5.0, INF)}, "objective.snr_range=(-5.0, inf): element 1 (inf) must be"),
    ("rkdsc_fmnist", {"eval.snrs_db": ()}, "eval.snrs_db=(): must not be empty"),
    ("rkdsc_fmnist", {"eval.snrs_db": (0.0, INF)}, "eval.snrs_db=(0.0, inf): element 1 (inf) must be a finite number"),
    ("rkdsc_fmnist", {"eval.snrs_db": (0.0, 0.0)}, "eval.snrs_db=(0.0, 0.0): has duplicates 0.0"),
    ("ltosc_fmnist", {"store.num_epochs": 0}, "store.num_epochs=0: must be an integer >= 1"),
    ("rkdsc_fmnist", {"eval.bandwidth_snrs_db": (NAN,)}, "eval.bandwidth_snrs_db=(nan,): element 0 (nan)"),
    ("ltosc_fmnist", {"eval.report_snrs_db": (5.0,)}, "eval.report_snrs_db=(5.0,): 5 dB not in eval.snrs_db"),
    ("ltosc_fmnist", {"study.size_snrs_db": ()}, "study.size_snrs_db=(): must not be empty"),
    # K and symbol budgets.
    ("ltosc_fmnist", {"store.top_k": 11}, "store.top_k=11: must be an integer >= 1 and <= 10 (data.name="
                                          "'fashion_mnist' has 10 classes)"),
    ("ltosc_fmnist", {"store.top_k": 0}, "store.top_k=0: must be an integer >= 1"),
    ("ltosc_imagenet_clip", {"store.top_k": 1001}, "store.top_k=1001: must be an integer >= 1 and <= 1000"),
    ("rkdsc_fmnist", {"codec.budgets": (12, 99)}, "codec.budgets=(12, 99): element 1 (99) must be an integer >= 1 "
                                                  "and <= 98 (the codec sends at most 98 symbols)"),
    ("rkdsc_fmnist", {"codec.budgets": (0, 12)}, "codec.budgets=(0, 12): element 0 (0) must be an integer >= 1"),
    ("rkdsc_cifar10", {"codec.budgets": (32, 512)}, "element 1 (512) must be an integer >= 1 and <= 256"),
    ("rkdsc_fmnist", {"codec.symbols_per_token": 0}, "codec.symbols_per_token=0: must be an integer >= 1"),
    # Names.
    ("synthetic_classifier", {"mode": "trian"}, "mode='trian': must be one of evaluate, export"),
    ("synthetic_classifier", {"mode": "search"}, "mode='search': is not a mode of a classifier; use one of "
                                                 "train_classifier"),
    ("rkdsc_fmnist", {"mode": "ltosc_study"}, "mode='ltosc_study': is not a mode of paper A's RKD-SC pipeline"),
    ("rkdsc_fmnist", {"eval.channels": ("awgn", "fading")}, "eval.channels=('awgn', 'fading'): unknown 'fading'"),
    ("rkdsc_fmnist", {"eval.channels": ()}, "eval.channels=(): must not be empty"),
    ("rkdsc_fmnist", {"stage2.channels": ("awgn", "rician")}, "stage2.channels=('awgn', 'rician'): unknown 'rician'; "
                                                              "use some of 'awgn', 'rayleigh'"),
    ("ltosc_fmnist", {"objective.channels": ("awgn,rayleigh",)}, "objective.channels=('awgn,rayleigh',): unknown"),
    ("rkdsc_fmnist", {"channel.csi": "estimated"}, "channel.csi='estimated': must be one of 'perfect', 'none'"),
    ("rkdsc_fmnist", {"channel.equalizer": "lmmse"}, "channel.equalizer='lmmse': must be one of 'zf', 'mmse'"),
    ("synthetic_classifier", {"train.optimizer": "lion"}, "train.optimizer='lion': must be one of 'adamw', 'sgd'"),
    ("synthetic_classifier", {"data.augment": "flip"}, "data.augment='flip': must be one of 'none', 'crop_flip'"),
    ("synthetic_classifier", {"data.normalization": "imagenet1k"}, "data.normalization='imagenet1k': must be one of"),
    ("synthetic_classifier", {"data.subset": "last"}, "data.subset='last': must be one of 'first', 'random'"),
    ("synthetic_classifier", {"data.channels": 2}, "data.channels=2: must be None (the dataset's), 1 or 3"),
    ("fmnist_classifier", {"data.normalization": "cifar10"}, "data.normalization='cifar10': has 3-channel statistics "
                                                             "but the model sees 1-channel images"),
    ("fmnist_classifier", {"data.name": "fashionmnist"}, "data.name='fashionmnist': is not a dataset name the library "
                                                         "knows; did you mean 'fashion_mnist'?"),
    ("rkdsc_cifar10", {"data.name": "cifar-10"}, "data.name='cifar-10': is not a dataset name the library knows; did "
                                                 "you mean 'cifar10'?"),
    ("synthetic_classifier", {"model.name": "vgg"}, "model.name='vgg': must be one of"),
    ("rkdsc_fmnist", {"objective.feature_loss": "l1"}, "objective.feature_loss='l1': must be one of 'mse', 'cosine'"),
    ("rkdsc_fmnist", {"student.encoder": "vgg"}, "student.encoder='vgg': must be one of"),
    ("rkdsc_fmnist", {"search.order": "third"}, "search.order='third': must be one of 'first', 'second'"),
    ("rkdsc_fmnist", {"teacher.kind": "resnet"}, "teacher.kind='resnet': must be one of 'efficientnet_lite0'"),
    ("rkdsc_fmnist", {"teacher.kind": "clip"}, "teacher.hub_id=None: must be a non-empty string"),
    ("rkdsc_fmnist", {"pipeline.methods": ("rkdsc", "foo")}, "pipeline.methods=('rkdsc', 'foo'): unknown 'foo'"),
    ("rkdsc_fmnist", {"export.method": "stage1"}, "export.method='stage1': must be one of 'rkdsc', 'no_kd', 'cnn'"),
    ("rkdsc_fmnist", {"pipeline.methods": ("stage1", "rkdsc"), "export.method": "cnn"},
     "export.method='cnn': is not trained by this run"),
    ("rkdsc_fmnist", {"export.seed": 5}, "export.seed=5: is not one of the run's seeds (0,)"),
    ("rkdsc_fmnist", {"search.enabled": False}, "search.enabled=False: the student is the pipeline's searched genotype"),
    ("ltosc_fmnist", {"method": "l_tosc_kdd"}, "method='l_tosc_kdd': must be one of"),
    ("ltosc_fmnist", {"objective.rate_estimator": "mine"}, "objective.rate_estimator='mine': must be one of"),
    ("ltosc_fmnist", {"study.methods": ("l_tosc_kd", "foo")}, "study.methods=('l_tosc_kd', 'foo'): unknown 'foo'"),
    ("ltosc_fmnist", {"model.student": "vit"}, "model.student='vit': must be one of"),
    ("ltosc_fmnist", {"export.method": "la_tosc"}, "export.method='la_tosc': must be one of"),
    ("ltosc_fmnist", {"study.size_snrs_db": (0.0, 6.0)}, "study.size_snrs_db=(0.0, 6.0): 6 dB not in eval.snrs_db"),
    ("ltosc_fmnist", {"study.size_steps": 0}, "study.size_steps=0: must be an integer >= 1"),
    ("ltosc_fmnist", {"study.size_seeds": (0, 0)}, "study.size_seeds"),
    ("ltosc_fmnist", {"store.seed": -1}, "store.seed=-1: must be an integer >= 0"),
    ("ltosc_fmnist", {"study.long_factor": 1}, "study.long_factor=1: must be an integer >= 2 (times the main "
                                               "runs' steps) (or None)"),
    ("ltosc_fmnist", {"study.long_methods": ("l_tosc", "lt")}, "study.long_methods=('l_tosc', 'lt'): unknown 'lt'"),
    ("rkdsc_fmnist", {"baselines.num_steps": 0}, "baselines.num_steps=0: must be an integer >= 1"),
    ("darts_fmnist", {"teacher.kind": "none"}, "teacher.kind='none': search.lam=0.5 distils from a teacher"),
    ("darts_fmnist", {"teacher.kind": "store"}, "teacher.kind='store': the logit store is not wired into the search"),
    ("darts_fmnist", {"search.cap_cells": ("normal", "middle")}, "search.cap_cells=('normal', 'middle'): unknown "
                                                                 "'middle'"),
    ("darts_fmnist", {"search.impl": "cuda"}, "search.impl='cuda': must be one of 'auto', 'taps', 'lax'"),
    ("darts_fmnist", {"retrain.genotype": ""}, "retrain.genotype='': must be a non-empty string"),
    ("rkdsc_fmnist", {"student.genotype": "runs/nowhere/search"},
     "student.genotype='runs/nowhere/search': no genotype there: pass a genotype JSON, a finished search workdir"),
    ("darts_fmnist", {"mode": "retrain", "retrain.genotype": "DARTS_V3"},
     "retrain.genotype='DARTS_V3': no genotype there: pass a genotype JSON, a finished search workdir or a "
     "shipped genotype's name ['DARTS_V1', 'DARTS_V2', 'KDL_FMNIST']"),
    # Seeds.
    ("synthetic_classifier", {"seed": -1}, "seed=-1: must be an integer >= 0"),
    ("rkdsc_fmnist", {"pipeline.seeds": (0, 0)}, "pipeline.seeds=(0, 0): has duplicates 0; list each value once"),
    ("rkdsc_fmnist", {"pipeline.seeds": (-1,)}, "pipeline.seeds=(-1,): element 0 (-1) must be an integer >= 0"),
    ("rkdsc_fmnist", {"pipeline.seeds": ()}, "pipeline.seeds=(): must not be empty"),
    ("ltosc_fmnist", {"study.seeds": ("0,1",)}, "study.seeds=('0,1',): element 0 ('0,1') must be an integer >= 0"),
    ("rkdsc_fmnist", {"eval.seed": -3}, "eval.seed=-3: must be an integer >= 0"),
    # Devices.
    ("synthetic_classifier", {"mesh.num_devices": 3}, "train.batch_size=32: must be a multiple of mesh.num_devices=3"),
    ("synthetic_classifier", {"mesh.num_devices": 0}, "mesh.num_devices=0: must be an integer >= 1 (or None)"),
]


def _id(case):
    name, fields, _ = case
    return f"{name}-" + ",".join(f"{k}={v!r}" for k, v in fields.items())


@pytest.mark.parametrize("name,fields,message", BAD, ids=[_id(c) for c in BAD])
def test_an_invalid_field_is_refused_with_its_name_value_and_rule(shipped, name, fields, message):
    config = _with(shipped, name, fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate.validate(config)


def test_the_bad_inputs_are_distinct():
    keys = [(name, tuple(sorted((k, repr(v)) for k, v in fields.items()))) for name, fields, _ in BAD]
    assert len(set(keys)) == len(keys) >= 100


def test_every_problem_is_listed_in_one_error(shipped):
    config = _with(shipped, "rkdsc_fmnist", {"stage1.batch_size": 0, "stage2.learning_rate": NAN,
                                              "eval.channels": ("fading",)})
    with pytest.raises(ConfigError) as error:
        validate.validate(config)
    assert len(error.value.problems) == 3
    for field in ("stage1.batch_size=0", "stage2.learning_rate=nan", "eval.channels=('fading',)"):
        assert field in str(error.value)


def test_the_same_check_passes_a_valid_change(shipped):
    config = _with(shipped, "rkdsc_fmnist", {"codec.budgets": (98,), "pipeline.seeds": (0, 1, 2),
                                              "eval.channels": ("awgn", "rician"), "stage2.snr_range": (5.0, 5.0),
                                              "export.seed": 2})
    validate.validate(config)
    study = _with(shipped, "ltosc_fmnist", {"store.top_k": 10, "mode": "ltosc", "method": "l_tosc_kd_kl"})
    validate.validate(study)


def test_suspicious_but_legal_values_warn_once(shipped, caplog, monkeypatch):
    monkeypatch.setattr(validate, "_WARNED", set())  # Earlier tests may have said them already.
    config = _with(shipped, "ltosc_fmnist", {"store.top_k": 10, "objective.snr_range": (-5.0, 90.0)})
    validate.validate(config)
    validate.validate(config)
    assert caplog.text.count("store.top_k=10 keeps all 10 classes") == 1
    assert "objective.snr_range=(-5.0, 90.0) reaches beyond -50...60 dB" in caplog.text


def test_run_mode_refuses_before_any_work(shipped, tmp_path):
    config = _with(shipped, "synthetic_classifier", {"train.num_steps": 0})
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.num_steps=0"):
        main.run_mode(config, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize("path,value,like,expected", [
    ("eval.channels", ("awgn,rician",), ("awgn", "rayleigh"), ("awgn", "rician")),
    ("eval.snrs_db", (-10, 0, 10), (0.0, 5.0), (-10.0, 0.0, 10.0)),
    ("eval.snrs_db", ("nan,1",), (0.0,), None),  # Parsed, then refused by validate (not finite).
    ("pipeline.seeds", (0, 1, 2), (0,), (0, 1, 2)),
    ("pipeline.seeds", (3,), (0,), (3,)),
    ("pipeline.methods", ("rkdsc, cnn",), ("stage1", "rkdsc"), ("rkdsc", "cnn")),
], ids=["str-split", "int-to-float", "nan-kept", "ints", "one", "spaces"])
def test_tuple_overrides_take_the_configs_element_type(path, value, like, expected):
    typed = validate.coerce_tuple(path, value, like)
    if expected is None:
        assert math.isnan(typed[0]) and typed[1] == 1.0
    else:
        assert typed == expected and all(type(a) is type(b) for a, b in zip(typed, expected))


@pytest.mark.parametrize("path,value,like,message", [
    ("pipeline.seeds", ("a,b",), (0,), "pipeline.seeds=a,b: must be a comma-separated list of integers, e.g. "
                                       "--config.pipeline.seeds=0,1,2"),
    ("pipeline.seeds", (1.5,), (0,), "pipeline.seeds=1.5: must be a comma-separated list of integers"),
    ("eval.snrs_db", ("x,1",), (0.0, 5.0), "eval.snrs_db=x,1: must be a comma-separated list of numbers, e.g. "
                                           "--config.eval.snrs_db=0,5"),
    ("eval.snrs_db", ("",), (0.0,), "eval.snrs_db=: must be a comma-separated list of numbers"),
    ("eval.channels", ("awgn,,rayleigh",), ("awgn",), "eval.channels=awgn,,rayleigh: must be a comma-separated list "
                                                      "of names"),
    ("codec.budgets", (True,), (12, 24), "codec.budgets=True: must be a comma-separated list of integers"),
], ids=["letters-for-ints", "float-for-int", "letters-for-floats", "empty", "empty-name", "bool"])
def test_a_malformed_tuple_override_names_the_field(path, value, like, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate.coerce_tuple(path, value, like)
