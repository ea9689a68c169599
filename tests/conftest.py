"""Test set-up: 8 virtual CPU devices, so sharded code runs as on an 8-chip host."""

import os

# Must happen before JAX initialises its backend.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
