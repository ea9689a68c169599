"""Entry point for every experiment: parses flags, then runs the config's mode.

    python -m experiments.main --config=experiments/configs/fmnist_classifier.py \
        --workdir=runs/fmnist_classifier [--config.FIELD=VALUE ...]

Running it again with the same workdir resumes from the last checkpoint.
"""

import logging as py_logging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rkdsc_jax.train.mesh import configure_host_devices

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", os.environ.get("RKDSC_COMPILATION_CACHE", "~/.cache/rkdsc_jax/xla"),
    "Directory of JAX's persistent compilation cache ('' turns it off). Reruns, resumed runs and "
    "other seeds of the same model skip XLA compilation, which dominates short CPU runs.")
flags.mark_flags_as_required(["config", "workdir"])


def enable_compilation_cache(directory: str) -> None:
    """Caches every compiled program that took over a second to compile, in ``directory``."""
    if not directory:
        return
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

    if config.mode not in MODES:
        raise app.UsageError(f"Unknown mode {config.mode!r}; available: {sorted(MODES)}.")
    target = MODES[config.mode]
    module, function = target(config) if callable(target) else target
    return getattr(importlib.import_module(module), function)(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(QuietLibraries())
    config = _CONFIG.value
    configure_host_devices(config.mesh.get("host_devices"))
    enable_compilation_cache(_COMPILATION_CACHE.value)
    if config.get("mesh") and config.mesh.get("distributed"):
        from rkdsc_jax.train import initialize_distributed

        initialize_distributed()
    if config.mode not in MODES:
        raise app.UsageError(f"Unknown mode {config.mode!r}; available: {sorted(MODES)}.")
    logging.info("JAX %s on %s; %d device(s).", jax.__version__, jax.devices()[0].platform, jax.device_count())
    run_mode(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
