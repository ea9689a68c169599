"""Training core: state, mesh, checkpoints, metrics, and the generic loop."""

from rkdsc_jax.train.checkpoint import (
    CheckpointDamagedError,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointRestoreError,
)
from rkdsc_jax.train.loop import (
    LoopConfig,
    NonFiniteError,
    PeriodicAction,
    classifier_eval_step,
    classifier_train_step,
    evaluate,
    fit,
    jit_eval_step,
    jit_train_step,
    steps_from_epochs,
)
from rkdsc_jax.train.mesh import (
    DATA_AXIS,
    batch_sharding,
    configure_host_devices,
    initialize_distributed,
    make_mesh,
    replicate,
    replicated,
    shard_batch,
)
from rkdsc_jax.train.metrics import MetricWriter, Progress, read_metrics
from rkdsc_jax.train.state import TrainState, create_train_state, make_optimizer, param_count
from rkdsc_jax.train.workdir import ConfigMismatchError, WorkdirLock, WorkdirLockedError
