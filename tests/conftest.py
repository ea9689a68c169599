"""Test set-up: 8 virtual CPU devices, so sharded code runs as on an 8-chip host."""

from rkdsc_jax.train.mesh import configure_host_devices

configure_host_devices(8)  # Before JAX initialises its backend.


import pytest  # noqa: E402


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
