"""The one train loop (resume, log, evaluate, checkpoint, periodic actions) and the
supervised steps.

``fit`` knows nothing about the model: it drives any jitted ``step(state, batch) ->
(state, metrics)`` over a checkpointable iterator.  The classifier, teacher fine-tuning,
both papers' stages and the bi-level search all run on it; what differs between them is
their step and their :class:`PeriodicAction` hooks (the search's per-epoch α snapshot).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh

from rkdsc_jax.train import mesh as mesh_lib
from rkdsc_jax.train.checkpoint import Checkpointer
from rkdsc_jax.train.metrics import MetricWriter, Progress, mean_metrics

StepFn = Callable[[Any, Mapping[str, jax.Array]], tuple[Any, Mapping[str, jax.Array]]]
EvalFn = Callable[[Any], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    num_steps: int
    batch_size: int
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int | None = None
    keep_checkpoints: int = 3
    # Also log and checkpoint every ``epoch_steps`` steps (the search's epoch boundaries).
    epoch_steps: int | None = None

    def __post_init__(self):
        if self.num_steps < 1 or self.log_every < 1:
            raise ValueError(f"num_steps and log_every must be >= 1, got {self.num_steps}, {self.log_every}.")
        # Logged metrics average over whole intervals; checkpoints on interval boundaries
        # keep a resumed run's metrics identical to an uninterrupted run's.
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every "
                f"({self.log_every})."
            )


def steps_from_epochs(num_examples: int, batch_size: int, num_epochs: float | None = None,
                      num_steps: int | None = None, *, whole_batches: bool = False) -> int:
    """The one conversion of a run's length to steps: ``num_steps`` when given, else
    ``ceil(num_epochs * num_examples / batch_size)`` (at least 1); ``whole_batches`` counts
    only full batches per epoch, ``floor(num_examples / batch_size) * num_epochs`` (DARTS's search)."""
    if num_steps:
        return int(num_steps)
    if num_epochs is None:
        raise ValueError("Give num_steps or num_epochs.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if whole_batches:
        per_epoch = num_examples // batch_size
        if per_epoch < 1:
            raise ValueError(f"{num_examples} examples are fewer than one batch of {batch_size}.")
        return per_epoch * int(num_epochs)
    return max(1, math.ceil(num_epochs * num_examples / batch_size))


class PeriodicAction:
    """``fn(step, state)`` every ``every_steps`` steps (and on the last step with ``at_end``), the
    shape of CLU's ``periodic_actions.PeriodicCallback``.  Metrics it returns are written under
    ``split``.  ``on_start(first_step)`` runs once before the first step (after a resume)."""

    def __init__(self, every_steps: int | None, fn: Callable[[int, Any], Mapping[str, float] | None], *,
                 split: str | None = None, at_end: bool = True,
                 on_start: Callable[[int], None] | None = None):
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 or None, got {every_steps}.")
        self.every_steps, self.fn, self.split, self.at_end, self.on_start = every_steps, fn, split, at_end, on_start

    def due(self, step: int, num_steps: int) -> bool:
        return bool(self.every_steps and step % self.every_steps == 0) or (self.at_end and step == num_steps)


def jit_train_step(step: StepFn, mesh: Mesh) -> StepFn:
    """Jits ``step`` with a replicated state, a data-sharded batch, and the state donated."""
    return jax.jit(
        step,
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
        out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(step: Callable, mesh: Mesh) -> Callable:
    return jax.jit(
        step,
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


def evaluate(eval_step: Callable, state: Any, batches: Iterable[Mapping[str, np.ndarray]],
             mesh: Mesh, keys: tuple[str, ...] = ("image", "label", "mask")) -> dict[str, float]:
    """Sums ``eval_step``'s per-batch sums (one of them ``count``) and divides by the count."""
    totals = None
    for batch in batches:
        sums = eval_step(state, mesh_lib.shard_batch(batch, mesh, keys))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("The evaluation set is empty.")
    totals = jax.device_get(totals)
    count = totals.pop("count")
    return {k: float(v / count) for k, v in totals.items()} | {"count": int(count)}


def fit(
    *,
    state: Any,
    train_step: StepFn,
    train_iter,
    mesh: Mesh,
    workdir: epath.PathLike,
    config: LoopConfig,
    eval_fn: EvalFn | None = None,
    batch_keys: tuple[str, ...] = ("image", "label"),
    hooks: Sequence[PeriodicAction] = (),
    name: str = "train",
) -> tuple[Any, dict[str, Any]]:
    """Runs ``train_step`` to ``config.num_steps``, resuming from ``workdir`` if possible.

    After each step, in order: log (every ``log_every``), evaluate (``eval_fn`` every
    ``eval_every`` and at the end), the ``hooks`` that are due, checkpoint.  Returns the
    final state and a summary (throughput, wall time, last metrics).
    """
    mesh_lib.check_batch_size(config.batch_size, mesh)
    checkpointer = Checkpointer(epath.Path(workdir) / "checkpoints", config.keep_checkpoints)
    writer = MetricWriter(workdir)
    first_step = 0
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, train_iter)
        first_step = int(jax.device_get(state.step))
        writer.truncate(first_step)
        logging.info("Resuming at step %d of %d.", first_step, config.num_steps)

    for hook in hooks:
        if hook.on_start is not None:
            hook.on_start(first_step)
    progress = Progress(config.num_steps, config.batch_size, first_step, name=name)
    epoch_end = lambda step: bool(config.epoch_steps) and step % config.epoch_steps == 0  # noqa: E731
    history, last_train, last_eval = [], {}, {}
    throughputs = []
    start = time.perf_counter()
    for step in range(first_step + 1, config.num_steps + 1):
        try:
            batch = next(train_iter)
        except StopIteration:
            raise ValueError(f"The training iterator ran out at step {step} of {config.num_steps}.")
        state, metrics = train_step(state, mesh_lib.shard_batch(batch, mesh, batch_keys))
        history.append(metrics)
        if step % config.log_every == 0 or step == config.num_steps or epoch_end(step):
            last_train = mean_metrics(history)
            history = []
            throughput = progress.log(step, last_train)
            if step > first_step + config.log_every:  # The first interval includes compilation.
                throughputs.append(throughput)
            writer.write(step, last_train | {"examples_per_second": throughput}, "train")
        if eval_fn is not None and (
            step == config.num_steps or (config.eval_every and step % config.eval_every == 0)
        ):
            last_eval = eval_fn(state)
            writer.write(step, last_eval, "eval")
            logging.info("eval step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in last_eval.items()))
        for hook in hooks:
            if hook.due(step, config.num_steps):
                written = hook.fn(step, state)
                if written and hook.split:
                    writer.write(step, written, hook.split)
        if step % config.checkpoint_every == 0 or step == config.num_steps or epoch_end(step):
            checkpointer.save(step, state, train_iter)
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    if first_step == config.num_steps and eval_fn is not None:
        last_eval = eval_fn(state)  # Already finished: report the final evaluation again.
    summary = {
        "steps": config.num_steps,
        "resumed_from_step": first_step,
        "wall_time_s": time.perf_counter() - start,
        "examples_per_second": float(np.median(throughputs)) if throughputs else None,
        "train": last_train,
        "eval": last_eval,
    }
    return state, summary


# --- Supervised classification ---------------------------------------------------------


def classifier_train_step(state, batch, *, label_smoothing: float = 0.0):
    """One step of cross-entropy training; model signature ``apply(vars, x, train=...)``."""
    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs=state.step_rng("dropout"), mutable=["batch_stats"],
        )
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
    }
    return state, metrics


def classifier_eval_step(state, batch):
    """Masked sums of loss and correct predictions (padding rows have mask 0)."""
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"], train=False)
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(loss * mask), "accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}
