"""Test set-up: 8 virtual CPU devices, so sharded code runs as on an 8-chip host, and one XLA
compilation cache on disk shared by every test, worker and subprocess of the run."""

import os

from rkdsc_jax.train.mesh import configure_host_devices

configure_host_devices(8)  # Before JAX initialises its backend.

import jax  # noqa: E402
import pytest  # noqa: E402


def _share_compilations() -> None:
    """Many tests compile the same steps from their own jits (every arm of a study, both notebooks);
    JAX's persistent cache turns the repeats into disk reads (the paper-B study test: 327 s → 201 s).
    It is keyed by the program, the compile options and the jax version, so it never changes a result.
    Set via the environment too, so that notebook kernels and worker processes share it.
    RKDSC_TEST_XLA_CACHE='' turns it off."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "rkdsc_jax", "xla_test_cache")
    path = os.environ.get("RKDSC_TEST_XLA_CACHE", default)
    if not path:
        return
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": 0.2,
                # A bounded LRU cache; eviction also makes JAX lock the directory (filelock), so that
                # concurrent workers never read a half-written entry.
                "jax_compilation_cache_max_size": 4 << 30}
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)


_share_compilations()


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A tiny random ViT classifier (3 labels, 28 px greyscale-compatible) saved by transformers."""
    import torch
    import transformers

    torch.manual_seed(0)
    vit = transformers.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                 image_size=28, patch_size=7, num_labels=3)
    transformers.ViTForImageClassification(vit).eval().save_pretrained(tmp_path / "vit")
    return str(tmp_path / "vit")
