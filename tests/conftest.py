"""Test set-up: 8 virtual CPU devices, so sharded code runs as on an 8-chip host."""

from rkdsc_jax.train.mesh import configure_host_devices

configure_host_devices(8)  # Before JAX initialises its backend.
