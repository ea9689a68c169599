"""Entry point for every experiment: parses flags, then runs the config's mode.

    python -m experiments.main --config=experiments/configs/fmnist_classifier.py \
        --workdir=runs/fmnist_classifier [--config.FIELD=VALUE ...]

Running it again with the same workdir resumes from the last checkpoint.
"""

import logging as py_logging
import os
import re
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib
from ml_collections.config_flags import config_path

from experiments.common import validate as validate_lib

# jax is imported when a run starts, so that a wrong command line is refused in a fraction of a second.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, sys_argv=None):
    """The entry point's flags on ``flag_values`` (a fresh ``FlagValues`` and its ``sys_argv`` parse a
    command line in-process, as the tests do)."""
    config = config_flags.DEFINE_config_file("config", None, "Experiment config file.", flag_values=flag_values,
                                             lock_config=True, sys_argv=sys_argv)
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.",
                                  flag_values=flag_values)
    cache = flags.DEFINE_string(
        "compilation_cache", os.environ.get("RKDSC_COMPILATION_CACHE", "~/.cache/rkdsc_jax/xla"),
        "Directory of JAX's persistent compilation cache ('' turns it off). Reruns, resumed runs and "
        "other seeds of the same model skip XLA compilation, which dominates short CPU runs.",
        flag_values=flag_values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    return config, workdir, cache


_CONFIG, _WORKDIR, _COMPILATION_CACHE = define_flags()


def enable_compilation_cache(directory: str) -> None:
    """Caches every compiled program that took over a second to compile, in ``directory``."""
    if not directory:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class QuietLibraries(py_logging.Filter):
    """Keeps the progress lines readable: drops INFO chatter from orbax, grain and jax."""

    _NOISY = ("/orbax/", "/grain/", "/jax/_src/", "/tensorflow_datasets/")

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(p in record.pathname for p in self._NOISY)


def show_progress() -> None:
    """The experiments' progress lines (absl INFO) without the libraries' chatter, for code that
    runs them without ``main`` (notebooks, scripts)."""
    logging.set_verbosity(logging.INFO)
    py_logging.getLogger("absl").addFilter(QuietLibraries())


# mode -> (module, function); imported only when run, so one mode's imports never slow another.
MODES = {
    "train_classifier": ("experiments.common.classifier", "train_classifier"),
    "finetune_teacher": ("experiments.common.teacher", "finetune"),
    "precompute_logits": ("experiments.ltosc.store", "precompute_logits"),
    "verify_logits": ("experiments.ltosc.store", "verify_logits"),
    "ltosc": ("experiments.ltosc.methods", "run_method"),
    "evaluate": ("experiments.ltosc.modes", "evaluate"),
    "ltosc_study": ("experiments.ltosc.modes", "study"),
    "search": ("experiments.darts.search", "search"),
    "retrain": ("experiments.darts.search", "retrain"),
    "rkd_stage1": ("experiments.rkdsc.modes", "rkd_stage1"),
    "rkd_stage2": ("experiments.rkdsc.modes", "rkd_stage2"),
    "rkdsc": ("experiments.rkdsc.modes", "pipeline"),
    # Each study exports its own systems: paper A's configs have a pipeline, paper B's a study.
    "export": lambda config: ("experiments.rkdsc.modes" if "pipeline" in config else "experiments.ltosc.modes",
                              "export"),
}


def run_mode(config, workdir: str):
    """Runs ``config.mode`` (also the entry point for tests and notebooks)."""
    import importlib

    validate_lib.validate(config)  # Every field, before any data, work or compilation.
    target = MODES[config.mode]
    module, function = target(config) if callable(target) else target
    return getattr(importlib.import_module(module), function)(config, workdir)


class CommandLineError(ValueError):
    """A command line this entry point refuses, said in one line."""


_CONFIG_EXAMPLE = "--config=experiments/configs/rkdsc_fmnist.py"


def _config_file(argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


_OVERRIDE = re.compile(r"^-{1,2}(no)?config\.")  # --config.FIELD (or --noconfig.FIELD for booleans).


def _override_names(argv) -> list[str]:
    """The FIELD of every --config.FIELD on the command line, in order, once each."""
    names = [_OVERRIDE.sub("", arg.split("=", 1)[0]) for arg in argv if _OVERRIDE.match(arg)]
    return list(dict.fromkeys(names))


def _explain_flag_error(error: Exception, flag_values: flags.FlagValues) -> str:
    """absl's and ml_collections' flag errors as one line that says what to do."""
    text = str(error)
    if "Flag --workdir must have a value" in text:
        return "--workdir is required: the run's directory, e.g. --workdir=runs/NAME (the same one resumes a run)."
    if "Flag --config must have a value" in text:
        return f"--config is required: a config file of experiments/configs/, e.g. {_CONFIG_EXAMPLE}."
    match = re.match(r"flag --(config\.[\w.]+)=(.*?): (.*)", text, re.S)
    if match:
        name, value, reason = match.groups()
        default = flag_values[name].default if name in flag_values else None
        if isinstance(default, (tuple, list)):
            default = validate_lib.list_example(default)
        example = f", e.g. --{name}={default}" if default is not None else ""
        if "as tuple" in reason:
            return f"--{name}={value}: not a comma-separated list{example or ', e.g. --' + name + '=0,1,2'}."
        if "for int()" in reason:
            return f"--{name}={value}: must be an integer{example}."
        if "to float" in reason:
            return f"--{name}={value}: must be a number{example}."
        if "boolean" in reason.lower():
            return f"--{name}={value}: must be true or false."
        return f"--{name}={value}: {reason.strip()}"
    match = re.match(r"flag --config=(.*?): (.*)", text, re.S)
    if match:  # get_config() of the file raised: its own message is the last line of the trace.
        lines = [line for line in match.group(2).strip().splitlines() if line.strip()]
        last = re.sub(r"^\w+Error: ", "", lines[-1].strip()) if lines else "the config file failed"
        return f"--config={match.group(1)}: {last}"
    if "is not supported for overriding" in text:
        field = re.search(r"field (config\.[\w.]+)", text)
        return (f"--{field.group(1) if field else 'config.FIELD'} cannot be set from the command line (its "
                "default is None without a type): give it a type in the config file "
                "(experiments.configs.common.field(None, int)).")
    return text.splitlines()[0]


def _unknown_field(argv, error: Exception) -> str:
    """--config.FIELD that the config does not have, as one line (ml_collections raises a KeyError
    whose text nests quotes; the config file itself says which name is missing)."""
    import difflib

    path = _config_file(argv)
    try:
        config = config_flags_lib.ConfigFileFlagParser("config", lock_config=False).parse(path)
    except Exception:  # noqa: BLE001 - fall back to ml_collections' own words.
        return f"{str(error).splitlines()[0]}: not a field of the config ({path})."
    for name in _override_names(argv):
        node = config
        for depth, part in enumerate(name.split(".")):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part in keys:
                node = node[part]
                continue
            close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = ".".join(name.split(".")[:depth]) or "the config"
            return (f"--config.{name}: the config ({path}) has no field {part!r} in {where}{hint}; the config "
                    "file lists its fields.")
    return f"{str(error).splitlines()[0]}: not a field of the config ({path})."


def parse_command_line(argv, flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parses ``argv`` into ``flag_values`` (defined by :func:`define_flags`), types the tuple overrides
    and validates the config.  Raises :class:`CommandLineError` or ``validate.ConfigError`` with one
    clear message for every cause it can name; returns the remaining arguments."""
    path = _config_file(argv)
    if path is not None:
        file = path.split(":", 1)[0]
        if not os.path.isfile(file):
            raise CommandLineError(f"--config={path}: no such config file ({os.path.abspath(file)}); pass one of "
                                   f"experiments/configs/, e.g. {_CONFIG_EXAMPLE}.")
    given, (argv, nulled) = argv, _split_none_overrides(argv)
    try:
        rest = flag_values(argv)
    except flags.Error as error:
        raise CommandLineError(_explain_flag_error(error, flag_values)) from None
    except SyntaxError as error:  # In the config file itself.
        raise CommandLineError(f"--config={path}: the file is not valid Python ({error.msg}, line {error.lineno}); "
                               "fix it or pass another config.") from None
    except (KeyError, AttributeError) as error:  # An override of a field the config lacks.
        if "get_config" in str(error):
            raise CommandLineError(f"--config={path}: the file has no get_config(); a config file defines "
                                   "get_config() returning an ml_collections.ConfigDict.") from None
        raise CommandLineError(_unknown_field(given, error)) from None
    except ValueError as error:  # ml_collections' "Could not parse 'a.1000'": not a field path.
        match = re.search(r"Could not parse '([^']+)'", str(error))
        if not match:
            raise
        raise CommandLineError(f"--config.{match.group(1)}: not a field path (field names joined by dots; "
                               "dict keys that are numbers cannot be set from the command line, set the "
                               "whole dict instead).") from None
    if len(rest) > 1:
        raise CommandLineError(f"Unexpected arguments {rest[1:]}: every setting is a flag, e.g. "
                               "--config.train.batch_size=64 (quote a value that holds spaces).")
    config = flag_values["config"].value
    _set_none_overrides(config, nulled, flag_values["config"].config_filename)
    _type_tuple_overrides(config, flag_values["config"].config_filename, _override_names(argv))
    validate_lib.validate(config, source=flag_values["config"].config_filename)
    return rest


_NONE = ("None", "none", "null")


def _split_none_overrides(argv) -> tuple[list[str], list[str]]:
    """``--config.FIELD=None`` taken out of ``argv`` (absl would parse 'None' with the field's type)."""
    kept, nulled = [], []
    for arg in argv:
        name, _, value = arg.partition("=")
        if _OVERRIDE.match(name) and value in _NONE:
            nulled.append(_OVERRIDE.sub("", name))
        else:
            kept.append(arg)
    return kept, list(dict.fromkeys(nulled))


def _set_none_overrides(config, names, filename: str) -> None:
    """Sets each ``--config.FIELD=None``; only fields the config file declares nullable
    (``common.field(None | value, type)``, or a default of None) take it."""
    for name in names:
        parent_path, _, leaf = name.rpartition(".")
        try:
            parent = config_path.get_value(parent_path, config) if parent_path else config
            value = parent[leaf]
        except (KeyError, AttributeError, IndexError, ValueError, TypeError) as error:
            raise CommandLineError(_unknown_field([f"--config={filename}", f"--config.{name}=None"], error)) from None
        # ml_collections keeps a typed-but-nullable field as a FieldReference (no public accessor).
        nullable = value is None or isinstance(getattr(parent, "_fields", {}).get(leaf), ml_collections.FieldReference)
        if not nullable:
            raise CommandLineError(f"--config.{name}=None: this field cannot be None; give it a value, e.g. "
                                   f"--config.{name}={value}.")
        setattr(parent, leaf, None)


def _type_tuple_overrides(config, filename: str, overrides) -> None:
    """Each tuple override with the element type of the config file's own tuple (ml_collections
    keeps 'awgn,rician' as one string and -10,0,10 as ints)."""
    tuples = []
    for name in overrides:
        try:
            value = config_path.get_value(name, config)
        except (KeyError, AttributeError, IndexError, ValueError):
            continue
        if isinstance(value, tuple):
            tuples.append((name, value))
    if not tuples:
        return
    defaults = config_flags_lib.ConfigFileFlagParser("config", lock_config=False).parse(filename)
    problems = []
    for name, value in tuples:
        try:
            like = config_path.get_value(name, defaults)
        except (KeyError, AttributeError, IndexError, ValueError):
            continue
        if not isinstance(like, tuple):
            continue
        try:
            typed = validate_lib.coerce_tuple(name, value, like)
        except validate_lib.ConfigError as error:
            problems.extend(error.problems)
            continue
        if typed != value or any(type(a) is not type(b) for a, b in zip(typed, value)):
            config_path.set_value(name, config, typed)
    if problems:
        raise validate_lib.ConfigError(problems, "the command line")


def _parse_or_exit(argv) -> list[str]:
    """``app.run``'s flags parser: one line on stderr and exit status 1 instead of a traceback."""
    try:
        return parse_command_line(argv)
    except (CommandLineError, validate_lib.ConfigError) as error:
        sys.stderr.write(f"FATAL: {error}\n")
        sys.exit(1)


def main(argv):
    from rkdsc_jax.train.mesh import configure_host_devices

    logging.get_absl_handler().addFilter(QuietLibraries())
    config = _CONFIG.value
    configure_host_devices(config.mesh.get("host_devices"))  # Before jax starts its backend.
    enable_compilation_cache(_COMPILATION_CACHE.value)
    import jax

    if config.get("mesh") and config.mesh.get("distributed"):
        from rkdsc_jax.train import initialize_distributed

        initialize_distributed()
    logging.info("JAX %s on %s; %d device(s).", jax.__version__, jax.devices()[0].platform, jax.device_count())
    from rkdsc_jax import deploy, files, train

    # Causes the library names itself (and says how to fix): one line, not a traceback.
    user_errors = (train.ConfigMismatchError, train.WorkdirLockedError, train.NonFiniteError,
                   train.CheckpointDamagedError, train.CheckpointMismatchError, deploy.DamagedExportError,
                   files.DamagedFileError, validate_lib.ConfigError)
    try:
        run_mode(config, _WORKDIR.value)
    except user_errors as error:
        sys.stderr.write(f"FATAL: {error}\n")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_or_exit)
