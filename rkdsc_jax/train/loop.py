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
from rkdsc_jax.train import workdir as workdir_lib
from rkdsc_jax.train.checkpoint import Checkpointer
from rkdsc_jax.train.metrics import MetricWriter, Progress

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
    # Steps with a non-finite metric stop the run (the default), or, with ``skip_nonfinite``
    # and an optimizer wrapped in ``optax.apply_if_finite`` (``make_optimizer`` with
    # ``skip_nonfinite``), are skipped and counted (metric ``nonfinite_steps``) until
    # ``max_nonfinite_in_a_row`` come in a row.
    skip_nonfinite: bool = False
    max_nonfinite_in_a_row: int = 10

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "max_nonfinite_in_a_row"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LoopConfig.{name} must be an integer >= 1, got {value!r}; set the run's "
                                 f"{name} (e.g. --config.train.{name}) to a positive whole number.")
        for name in ("eval_every", "epoch_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ValueError(f"LoopConfig.{name} must be None or an integer >= 1, got {value!r}.")
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
    if num_steps is not None:
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a whole number >= 1 (or None to use num_epochs), got {num_steps!r}.")
        return int(num_steps)
    if num_epochs is None:
        raise ValueError("Give num_steps or num_epochs.")
    if not math.isfinite(num_epochs) or num_epochs <= 0:
        raise ValueError(f"num_epochs must be a finite number > 0, got {num_epochs!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}; pass a positive batch size.")
    if num_examples < 1:
        raise ValueError(f"The training set has {num_examples} examples; pass num_train_examples >= 1 (or None "
                         "for all).")
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
    if not isinstance(config, LoopConfig):
        raise TypeError(f"fit's config must be a train.LoopConfig, got {type(config).__name__}.")
    mesh_lib.check_batch_size(config.batch_size, mesh)
    with workdir_lib.WorkdirLock(workdir):  # One run per workdir: no interleaved checkpoints or metrics rows.
        return _fit(state, train_step, train_iter, mesh, epath.Path(workdir), config, eval_fn, batch_keys, hooks,
                    name)


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or infinite."""


def _skip_counter(opt_state) -> Any:
    """The ``total_notfinite`` count of an ``optax.apply_if_finite`` in ``opt_state`` (None: none)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState))
             if isinstance(s, optax.ApplyIfFiniteState)]
    return found[0].total_notfinite if found else None


class _Guard:
    """Finds non-finite metrics in a logging interval's buffered per-step metrics (one host copy
    per interval, none per step) and either stops the run or, in skip mode, counts them."""

    def __init__(self, config: LoopConfig, checkpointer: Checkpointer, workdir: epath.Path, state):
        self.config, self.checkpointer, self.workdir = config, checkpointer, workdir
        self.in_a_row = 0
        if config.skip_nonfinite and _skip_counter(state.opt_state) is None:
            raise ValueError("LoopConfig.skip_nonfinite needs an optimizer wrapped in optax.apply_if_finite (so that "
                             "a skipped step leaves the state unchanged); build it with train.make_optimizer and "
                             "skip_nonfinite=True in its config, or turn skip_nonfinite off.")

    def _stop(self, step: int, metric: str, value: float, reason: str = "") -> None:
        self.checkpointer.wait()
        last = self.checkpointer.latest_step()
        where = (f"the last good checkpoint is step {last} in {self.checkpointer.directory} (rerunning resumes from "
                 "it)" if last is not None else "no checkpoint was written yet")
        raise NonFiniteError(
            f"Training stopped at step {step}: {metric} is {value}{reason}; no checkpoint of the non-finite state "
            f"was written and {where}. Lower the learning rate, clip gradients (grad_clip_norm) or check the "
            f"inputs for NaNs; to skip such steps instead, set skip_nonfinite (off by default).")

    def interval_mean(self, history: list, last_step: int) -> dict[str, float]:
        stacked = jax.device_get(jax.tree.map(lambda *xs: np.stack(xs), *history))
        # The loss first: it names the cause a reader looks for.
        stacked = {k: np.asarray(stacked[k]).reshape(len(history), -1)
                   for k in sorted(stacked, key=lambda k: ("loss" not in k, k))}
        first = last_step - len(history) + 1
        bad = np.zeros(len(history), bool)
        for values in stacked.values():
            bad |= ~np.all(np.isfinite(values), axis=1)
        if not self.config.skip_nonfinite and bad.any():
            i = int(np.argmax(bad))
            metric = next(k for k, v in stacked.items() if not np.all(np.isfinite(v[i])))
            self._stop(first + i, metric, float(stacked[metric][i][~np.isfinite(stacked[metric][i])][0]))
        for i, b in enumerate(bad):
            self.in_a_row = self.in_a_row + 1 if b else 0
            if self.in_a_row >= self.config.max_nonfinite_in_a_row:
                metric = next(k for k, v in stacked.items() if not np.all(np.isfinite(v[i])))
                self._stop(first + i, metric, float("nan"),
                           f" for {self.in_a_row} steps in a row (skip_nonfinite gives up after "
                           f"max_nonfinite_in_a_row={self.config.max_nonfinite_in_a_row})")
        good = ~bad
        return {k: float(np.mean(v[good])) if good.any() else float("nan") for k, v in stacked.items()}


def _fit(state, train_step, train_iter, mesh, workdir: epath.Path, config: LoopConfig, eval_fn, batch_keys, hooks,
         name):
    # Leaving on an error still commits a save in flight (the rerun resumes from it).
    with Checkpointer(workdir / "checkpoints", config.keep_checkpoints) as checkpointer:
        writer = MetricWriter(workdir)
        first_step = 0
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(state, train_iter)
            first_step = int(jax.device_get(state.step))
            writer.truncate(first_step)
            logging.info("Resuming at step %d of %d.", first_step, config.num_steps)
        guard = _Guard(config, checkpointer, workdir, state)

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
            # Every checkpoint falls on a logging step (LoopConfig), so the guard sees each interval first.
            if step % config.log_every == 0 or step == config.num_steps or epoch_end(step):
                last_train = guard.interval_mean(history, step)
                if config.skip_nonfinite:
                    last_train["nonfinite_steps"] = float(jax.device_get(_skip_counter(state.opt_state)))
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
    if config.skip_nonfinite:
        summary["nonfinite_steps"] = int(jax.device_get(_skip_counter(state.opt_state)))
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
