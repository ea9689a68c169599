"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, tx, opt_state) plus batch statistics and an RNG.

    ``rng`` is a raw uint32 key (``jax.random.PRNGKey``) so checkpoints hold plain arrays;
    steps fold the step number into it, which makes every step's randomness a function of
    (seed, step) alone — exactly reproducible after a resume.
    """

    batch_stats: Any = flax.core.FrozenDict()
    rng: jax.Array = None

    def step_rng(self, *names: str) -> dict[str, jax.Array] | jax.Array:
        """The per-step key (or a dict of named streams) for this step."""
        key = jax.random.fold_in(self.rng, self.step)
        if not names:
            return key
        return {name: jax.random.fold_in(key, i) for i, name in enumerate(names)}


def create_train_state(
    model: flax.linen.Module,
    tx: optax.GradientTransformation,
    sample_input: jax.Array,
    seed: int,
    **init_kwargs,
) -> TrainState:
    """Initialises ``model`` on ``sample_input`` (only its shape and dtype matter)."""
    init_rng, dropout_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    variables = model.init({"params": init_rng, "dropout": dropout_rng}, sample_input, **init_kwargs)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", flax.core.FrozenDict()),
        tx=tx,
        rng=state_rng,
    )


def param_count(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
    """optax optimiser from a config with fields ``optimizer`` (adamw | sgd), ``learning_rate``,
    ``warmup_steps``, ``weight_decay``, ``momentum`` and ``grad_clip_norm``.

    The learning rate follows linear warm-up then cosine decay to zero.  With ``skip_nonfinite``
    (optional field, off by default) a step with non-finite gradients leaves the parameters and
    optimiser state unchanged and is counted (``optax.apply_if_finite``; see ``LoopConfig``).
    """
    for name in ("learning_rate", "weight_decay"):
        value = config.get(name) if hasattr(config, "get") else getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}; pass e.g. "
                             f"--config.train.{name}={'1e-3' if name == 'learning_rate' else '1e-4'}.")
    warmup = config.warmup_steps
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup_steps must be a whole number >= 0, got {warmup!r}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(num_steps, config.warmup_steps + 1)
    )
    if config.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(schedule, momentum=config.momentum, nesterov=True),
        )
    else:
        raise ValueError(f"Unknown optimizer {config.optimizer!r}; use 'adamw' or 'sgd'.")
    if config.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    if config.get("skip_nonfinite"):
        # Never applies a non-finite update; the loop gives up after max_nonfinite_in_a_row.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
    return tx
