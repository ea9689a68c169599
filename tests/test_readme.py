"""The README's library example runs as written."""

import os
import re

import pytest

from rkdsc_jax.data import sources

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.skipif(not os.path.exists(os.path.join(sources.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="dataset-fashion-mnist is not installed")
def test_readme_python_example_runs(capsys):
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "(8, 28, 28, 1)" in capsys.readouterr().out
