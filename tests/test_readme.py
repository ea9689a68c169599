"""The README's library example runs as written."""

import os
import re

import pytest

from rkdsc_jax.data import sources

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.skipif(not os.path.exists(os.path.join(sources.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="dataset-fashion-mnist is not installed")
def test_readme_python_examples_run(capsys, tmp_path):
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "README lost its python examples"
    main_export = "runs/rkdsc_fmnist/export/rkdsc_seed0"
    for block in blocks:
        if main_export in block:  # The main command's export: a small one of the same kind stands in.
            block = block.replace(main_export, _small_rkdsc_export(str(tmp_path / "export")))
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(8, 28, 28, 1)" in out and "transmit_ms" in out


def _small_rkdsc_export(directory: str) -> str:
    import jax
    import jax.numpy as jnp

    from rkdsc_jax import deploy

    spec = deploy.SystemSpec(
        kind="rkdsc", encoder="cnn", encoder_kwargs={"features": (4, 8)},
        system_kwargs=dict(num_classes=10, teacher_dim=8, num_tokens=49, cat_width=16, cat_depth=1, cat_heads=2,
                           symbols_per_token=2), input_shape=(28, 28, 1))
    variables = spec.build().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), method="init_all")
    deploy.export(directory, spec, variables)
    return directory
