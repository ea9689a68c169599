"""rkdsc_jax: semantic communication with distilled large models, in JAX/Flax.

The package reads in the order data flows: ``data`` (sources and grain pipelines) →
teachers and students (``models``) → ``channels`` (the wireless link) → ``train``
(state, mesh, checkpoints, loops) → evaluation.
"""

__version__ = "0.1.0"
