"""The command line (``python -m experiments.main``): each wrong invocation ends in one line that
names the problem and the fix, never a traceback; tuple overrides get their field's element type;
the documented commands parse.  Parsed in-process on a fresh ``FlagValues`` (a few subprocess
cases check what a user sees)."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from experiments import main
from experiments.common.validate import ConfigError
from rkdsc_jax import genotype_data

# ml_collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "experiments", "configs")
RKDSC = os.path.join(CONFIGS, "rkdsc_fmnist.py")
SYNTHETIC = os.path.join(CONFIGS, "synthetic_classifier.py")


def parse(*args, config=RKDSC, workdir="runs/x"):
    """``python -m experiments.main [--config] [--workdir] ARGS`` as the entry point parses it."""
    argv = ["experiments.main", *([f"--config={config}"] if config else []),
            *([f"--workdir={workdir}"] if workdir else []), *args]
    # ml_collections loads every config file as module "config_config" with the deprecated
    # load_module(), which re-executes into the previous file's module: start from none.
    sys.modules.pop("config_config", None)
    flag_values = flags.FlagValues()
    main.define_flags(flag_values, sys_argv=argv)
    main.parse_command_line(argv, flag_values)
    return flag_values["config"].value


# (arguments, config file, the error type, the message it must give)
BAD = [
    ((), os.path.join(CONFIGS, "nope.py"), main.CommandLineError, "nope.py: no such config file"),
    ((), os.path.join(CONFIGS, "darts_fmnist.py:foo"), main.CommandLineError,
     "darts_fmnist.py:foo: variant must be 'kdl', 'kdl_pc' (C(α) normalised per cell type, μ = 1) or 'plain', "
     "got 'foo'."),
    (("--config.trian.batch_size=3",), SYNTHETIC, main.CommandLineError,
     "--config.trian.batch_size: the config (%s) has no field 'trian' in the config (did you mean 'train'?)" % SYNTHETIC),
    (("--config.trian=3",), SYNTHETIC, main.CommandLineError, "--config.trian: the config"),
    (("--config.train.batchsize=3",), SYNTHETIC, main.CommandLineError,
     "has no field 'batchsize' in train (did you mean 'batch_size'?)"),
    (("--config.train.batch_size=3",), RKDSC, main.CommandLineError,  # Paper A's stages have no `train`.
     "--config.train.batch_size: the config (%s) has no field 'train'" % RKDSC),
    (("--config.study.size_seeds.1000=2",), os.path.join(CONFIGS, "ltosc_fmnist.py"), main.CommandLineError,
     "--config.study.size_seeds.1000: not a field path"),
    (("--config.train.batch_size=abc",), SYNTHETIC, main.CommandLineError,
     "--config.train.batch_size=abc: must be an integer, e.g. --config.train.batch_size=32."),
    (("--config.train.learning_rate=fast",), SYNTHETIC, main.CommandLineError,
     "--config.train.learning_rate=fast: must be a number, e.g. --config.train.learning_rate=0.003."),
    (("--config.stage2.freeze_encoder=maybe",), RKDSC, main.CommandLineError,
     "--config.stage2.freeze_encoder=maybe: must be true or false."),
    (("--config.pipeline.seeds=0,,1",), RKDSC, main.CommandLineError,
     "--config.pipeline.seeds=0,,1: not a comma-separated list, e.g. --config.pipeline.seeds=0,1,2."),
    (("--config.pipeline.seeds=a,b",), RKDSC, ConfigError,
     "pipeline.seeds=a,b: must be a comma-separated list of integers, e.g. --config.pipeline.seeds=0,1,2"),
    (("--config.eval.snrs_db=x,1",), RKDSC, ConfigError, "eval.snrs_db=x,1: must be a comma-separated list of numbers"),
    (("--config.eval.channels=awgn,,rayleigh",), RKDSC, main.CommandLineError,
     "--config.eval.channels=awgn,,rayleigh: not a comma-separated list, e.g. --config.eval.channels=awgn,rayleigh."),
    (("--config.eval.snrs_db=nan,1",), RKDSC, ConfigError, "eval.snrs_db=(nan, 1.0): element 0 (nan) must be a finite"),
    (("--config.eval.channels=awgn,fading",), RKDSC, ConfigError, "eval.channels=('awgn', 'fading'): unknown 'fading'"),
    (("--config.pipeline.seeds=0,0",), RKDSC, ConfigError, "pipeline.seeds=(0, 0): has duplicates 0"),
    (("--config.codec.budgets=12,99",), RKDSC, ConfigError, "element 1 (99) must be an integer >= 1 and <= 98"),
    (("--config.mode=nope",), SYNTHETIC, ConfigError, "mode='nope': must be one of evaluate, export"),
    (("--config.train.num_steps=0", "--config.train.learning_rate=-1"), SYNTHETIC, ConfigError,
     "2 invalid field(s) in %s" % SYNTHETIC),
    (("extra",), SYNTHETIC, main.CommandLineError, "Unexpected arguments ['extra']: every setting is a flag"),
    (("--config.train.batch_size=None",), SYNTHETIC, main.CommandLineError,
     "--config.train.batch_size=None: this field cannot be None; give it a value, e.g. --config.train.batch_size=32."),
    (("--config.data.num_eval_exmples=None",), RKDSC, main.CommandLineError,
     "has no field 'num_eval_exmples' in data (did you mean 'num_eval_examples'?)"),
]


@pytest.mark.parametrize("args,config,error,message", BAD, ids=[
    " ".join(a) or os.path.basename(c) for a, c, _, _ in BAD])
def test_a_wrong_command_line_says_what_and_how_to_fix_it(args, config, error, message):
    with pytest.raises(error, match=re.escape(message)):
        parse(*args, config=config)


def test_a_broken_config_file_is_named(tmp_path):
    (tmp_path / "no_get_config.py").write_text("import ml_collections\n\ndef get_confg():\n    return None\n")
    (tmp_path / "not_python.py").write_text("def get_config(:\n    pass\n")
    with pytest.raises(main.CommandLineError, match=re.escape("no_get_config.py: the file has no get_config()")):
        parse(config=str(tmp_path / "no_get_config.py"))
    with pytest.raises(main.CommandLineError, match=re.escape("not_python.py: the file is not valid Python "
                                                              "(invalid syntax, line 1)")):
        parse(config=str(tmp_path / "not_python.py"))


def test_a_missing_workdir_or_config_is_named():
    with pytest.raises(main.CommandLineError, match=re.escape("--workdir is required: the run's directory, e.g. "
                                                              "--workdir=runs/NAME")):
        parse(workdir=None)
    with pytest.raises(main.CommandLineError, match=re.escape("--config is required: a config file of "
                                                              "experiments/configs/")):
        parse(config=None)


def test_a_nullable_field_takes_none_from_the_command_line():
    assert parse().data.num_eval_examples == 2000
    assert parse("--config.data.num_eval_examples=None").data.num_eval_examples is None
    assert parse("--config.pipeline_dir=none").pipeline_dir is None


def test_tuple_overrides_get_their_fields_element_type():
    config = parse("--config.eval.channels=awgn,rician", "--config.eval.snrs_db=-10,0,10",
                   "--config.pipeline.seeds=0,1,2", "--config.stage2.snr_range=-5,5", "--config.codec.budgets=12,24",
                   "--config.pipeline.methods=rkdsc,cnn", "--config.student.encoders.cnn.features=8,16")
    assert config.eval.channels == ("awgn", "rician")
    assert config.eval.snrs_db == (-10.0, 0.0, 10.0) and all(type(s) is float for s in config.eval.snrs_db)
    assert config.pipeline.seeds == (0, 1, 2) and config.codec.budgets == (12, 24)
    assert config.stage2.snr_range == (-5.0, 5.0) and type(config.stage2.snr_range[0]) is float
    assert config.pipeline.methods == ("rkdsc", "cnn") and config.student.encoders.cnn.features == (8, 16)
    one = parse("--config.eval.channels=rayleigh", "--config.eval.snrs_db=5", "--config.pipeline.seeds=(0, 1)")
    assert one.eval.channels == ("rayleigh",) and one.eval.snrs_db == (5.0,) and one.pipeline.seeds == (0, 1)


def test_every_tuple_field_of_every_config_takes_a_comma_list():
    """Each config's tuples, overridden with their own values written as a plain comma list."""
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
        if os.path.basename(path) in ("__init__.py", "common.py"):
            continue
        reference = parse(config=path)
        overrides = {name: value for name, value in _tuples(reference) if value}
        config = parse(*[f"--config.{n}={','.join(map(str, v))}" for n, v in overrides.items()], config=path)
        for name, value in overrides.items():
            got = _get(config, name)
            assert got == value and [type(x) for x in got] == [type(x) for x in value], (path, name, got)


def test_a_none_field_of_the_accelerator_configs_can_be_set():
    config = parse("--config.mesh.host_devices=4", "--config.teacher.image_size=64",
                   "--config.search.num_train_examples=1000", config=os.path.join(CONFIGS, "rkdsc_cifar10.py"))
    assert (config.mesh.host_devices, config.teacher.image_size, config.search.num_train_examples) == (4, 64, 1000)


def _documented_commands():
    """Every ``python -m experiments.main`` / ``bash scripts/main.sh`` command of the README, BUILD.md
    and the config files' docstrings, as (where, arguments)."""
    sources = ["README.md", "BUILD.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(CONFIGS,
                                                                                                        "*.py")))]
    commands = []
    for source in sources:
        text = open(os.path.join(REPO, source), encoding="utf-8").read().replace("\\\n", " ")
        for match in re.finditer(r"(python -m experiments\.main|bash scripts/main\.sh)([^\n`]*)", text):
            words = match.group(2).split("#")[0].replace('"', "").split()
            if any(w.startswith("[") or "..." in w or "$" in w for w in words):
                continue  # A placeholder, not a command.
            if match.group(1).startswith("bash"):
                words.insert(0, "--config=experiments/configs/rkdsc_fmnist.py")
            commands.append((source, [w for w in words if not w.startswith("--workdir")]))
    return commands


def test_the_documented_commands_parse(tmp_path, monkeypatch):
    commands = _documented_commands()
    assert len(commands) >= 15 and any("--config.pipeline.seeds=0,1,2" in args for _, args in commands)
    for source, args in commands:
        config_arg = next(a for a in args if a.startswith("--config="))
        rest = [a for a in args if a != config_arg]
        _searched_genotypes(rest, tmp_path, monkeypatch)
        config = parse(*rest, config=os.path.join(REPO, config_arg.split("=", 1)[1]))
        if "--config.pipeline.seeds=0,1,2" in rest:
            assert config.pipeline.seeds == (0, 1, 2), source


# Inline overrides of the README and the configs' docstrings: (config, overrides); each must appear there.
INLINE = [
    ("ltosc_fmnist.py", "--config.mode=ltosc --config.method=l_tosc --config.study_dir=runs/ltosc_fmnist"),
    ("ltosc_fmnist.py", "--config.train.num_epochs=3"),
    ("rkdsc_fmnist.py", "--config.student.genotype=runs/rkdsc_fmnist/search"),
    ("rkdsc_cifar10.py", "--config.teacher.kind=vit --config.teacher.hub_id=google/vit-base-patch16-224"),
    ("darts_fmnist.py", "--config.mode=retrain --config.retrain.genotype=runs/darts_fmnist/kdl_s0"),
]


@pytest.mark.parametrize("config,overrides", INLINE, ids=[o.split()[0] for _, o in INLINE])
def test_the_documented_overrides_parse(config, overrides, tmp_path, monkeypatch):
    first = overrides.split()[0].split("=")[0]
    documented = "".join(open(os.path.join(REPO, f), encoding="utf-8").read()
                         for f in ("README.md", "BUILD.md", os.path.join("experiments", "configs", config)))
    assert first in documented
    _searched_genotypes(overrides.split(), tmp_path, monkeypatch)
    parse(*overrides.split(), config=os.path.join(CONFIGS, config))


def _searched_genotypes(args, tmp_path, monkeypatch):
    """A genotype must exist when the run starts: the searches the arguments name ran, in tmp_path."""
    monkeypatch.chdir(tmp_path)
    for arg in args:
        name, _, value = arg.partition("=")
        if name.endswith(".genotype") and value not in genotype_data.NAMES:
            (tmp_path / value).mkdir(parents=True, exist_ok=True)
            (tmp_path / value / "genotype.json").write_text(json.dumps(genotype_data.as_dict("DARTS_V2")))


def test_the_user_sees_one_line_and_no_traceback():
    """Three real invocations at once (each costs seconds of imports)."""
    cases = {
        "missing file": ["--config=experiments/configs/nope.py", "--workdir=/tmp/x"],
        "unknown field": [f"--config={SYNTHETIC}", "--workdir=/tmp/x", "--config.trian.batch_size=3"],
        "invalid value": [f"--config={SYNTHETIC}", "--workdir=/tmp/x", "--config.train.batch_size=0"],
    }
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    running = {name: subprocess.Popen([sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, args in cases.items()}
    expected = {"missing file": "no such config file", "unknown field": "has no field 'trian'",
                "invalid value": "train.batch_size=0: must be an integer >= 1"}
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 1, (name, out, err)
        assert "Traceback" not in err and "Traceback" not in out, (name, err)
        assert err.startswith("FATAL: ") and expected[name] in err, (name, err)


def _tuples(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            if not all(str(k).isidentifier() for k in value.keys()):
                continue  # A dict keyed by non-names: set as a whole dict.
            yield from _tuples(value, f"{prefix}{key}.")
        elif isinstance(value, tuple):
            yield f"{prefix}{key}", value


def _get(config, name):
    for part in name.split("."):
        config = config[part]
    return config
