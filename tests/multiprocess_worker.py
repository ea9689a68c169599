"""One JAX process of tests/test_multiprocess.py (not a test itself).

    python tests/multiprocess_worker.py OUT_DIR NUM_PROCESSES PROCESS_ID PORT LOCAL_DEVICES

With NUM_PROCESSES > 1, joins a ``jax.distributed`` job on localhost (CPU devices, gloo
collectives).  Every process then precomputes its shards of one teacher-logit store in
``OUT_DIR/store`` (process 0 writes the manifest after the barrier) and runs a few
data-parallel training steps of the synthetic classifier in ``OUT_DIR/classifier`` over the
mesh of all processes' devices.
"""

import hashlib
import os
import sys


def main(out_dir: str, num_processes: int, process_id: int, port: int, local_devices: int) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    import jax

    jax.config.update("jax_platforms", "cpu")
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes, process_id,
                                   local_device_ids=list(range(local_devices)))
    import numpy as np

    from experiments.common.classifier import train_classifier
    from experiments.configs import synthetic_classifier
    from rkdsc_jax import data
    from rkdsc_jax.distill import logit_store

    assert jax.process_count() == num_processes and jax.device_count() == 4, jax.devices()
    source = data.synthetic("train", 48, (8, 8, 1), 6, seed=0)
    w = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    identity = {"name": "fake", "params_sha256": hashlib.sha256(w.tobytes()).hexdigest(), "num_classes": 6}
    logit_store.precompute_logits(
        lambda x: (x.reshape(len(x), -1).astype(np.float32) / 255.0) @ w, source, os.path.join(out_dir, "store"),
        teacher_identity=identity, num_epochs=2, top_k=3, augment_config=data.AugmentConfig("crop_flip", 2), seed=1,
        batch_size=8, shard_size=16, process_index=jax.process_index(), process_count=jax.process_count(),
        wait_timeout_s=0.0)

    config = synthetic_classifier.get_config()
    config.data.num_train_examples, config.data.num_eval_examples = 128, 64
    config.train.batch_size, config.train.eval_batch_size = 16, 16
    config.train.num_steps, config.train.log_every, config.train.checkpoint_every = 6, 3, 3
    train_classifier(config, os.path.join(out_dir, "classifier"))
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    out, n, i, port, local = sys.argv[1:6]
    main(out, int(n), int(i), int(port), int(local))
