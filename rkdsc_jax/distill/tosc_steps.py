"""Train and evaluation steps for TOSC systems (paper B and its baselines).

One step serves every method of SPEC §3.1; :class:`Objective` picks the loss and where
the targets come from:

- ``loss="ib"``: information bottleneck, rate bound + β · soft-CE to the teacher's
  smoothed pseudo-labels (SPEC §3.4, eq. 13).  No ground-truth labels are used.
- ``loss="kd"``: τ²·KL to the teacher's distribution (deterministic encoder).
- ``loss="ce"``: cross-entropy with the labels (L-TOSC, Res-TOSC, Eff-TOSC).
- ``targets="store"``: the batch carries ``teacher_probs``/``teacher_indices`` from the
  pre-stored top-K store, reconstructed by SPEC eq. 6; ``"online"``: the teacher runs in
  the step on the same augmented view, with the same top-K truncation and temperature as
  the store so the two differ only in where the numbers come from; ``"labels"``.

Channel during training: per-example SNR uniform in dB over ``snr_range`` and a
per-example channel drawn uniformly from ``channels`` (AWGN and/or Rayleigh block fading),
so one model serves both channels.  Both rows and the evaluation channel go through one
:class:`~rkdsc_jax.channels.ChannelSpec` (``Objective.channel``: csi and equaliser), so
evaluation sees what training saw.  Batches hold images in [0, 1]; the model normalises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from rkdsc_jax import channels as channels_lib
from rkdsc_jax.distill import losses

LOSSES = ("ib", "kd", "ce")
TARGETS = ("store", "online", "labels")
TRAIN_CHANNELS = ("awgn", "rayleigh")


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: str = "ib"
    targets: str = "store"
    num_classes: int = 10
    beta: float = 1.0  # weight of the distortion (soft-CE) term against the rate, eq. 13
    temperature: float = 1.0  # KD temperature (loss="kd"); online targets use the store's
    top_k: int | None = None  # online targets: top-K truncation as the store does (None: full)
    target_temperature: float = 1.0  # online targets: softmax(t / T) as the store does
    label_smoothing: float = 0.0
    snr_range: tuple[float, float] = (-5.0, 15.0)
    channels: tuple[str, ...] = ("awgn", "rayleigh")
    csi: str = "perfect"
    equalizer: str = "mmse"
    rate_estimator: str = "paper"

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; use one of {LOSSES}.")
        if self.targets not in TARGETS:
            raise ValueError(f"Unknown targets {self.targets!r}; use one of {TARGETS}.")
        if self.loss in ("ib", "kd") and self.targets == "labels":
            raise ValueError(f"loss={self.loss!r} distils from a teacher: use targets='store' or 'online'.")
        if not self.channels or any(c not in TRAIN_CHANNELS for c in self.channels):
            raise ValueError(f"channels must be a non-empty subset of {TRAIN_CHANNELS}, got {self.channels}.")
        low, high = self.snr_range
        if not low <= high:
            raise ValueError(f"snr_range must be (low, high) with low <= high, got {self.snr_range}.")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_classes:
            raise ValueError(f"top_k={self.top_k} must be between 1 and the {self.num_classes} classes.")
        self.channel  # Refuses an unknown csi or equalizer now, not at the first step.

    @property
    def channel(self) -> channels_lib.ChannelSpec:
        """The receiver of training and evaluation alike."""
        return channels_lib.ChannelSpec(csi=self.csi, equalizer=self.equalizer)


def mixed_channel(key, x, snr_db, use_rayleigh, *, csi: str = "perfect", equalizer: str = "mmse"):
    """Per-example AWGN or Rayleigh block fading (``use_rayleigh`` (B,) bool), both rows with
    the same receiver as evaluation (``ChannelSpec.mixed``; AWGN too is equalised)."""
    return channels_lib.ChannelSpec(csi=csi, equalizer=equalizer).mixed(key, x, snr_db, use_rayleigh)


def topk_distribution(logits, *, top_k: int | None, temperature: float):
    """softmax(logits / T), truncated to its top-K and smoothed as the store does (eq. 6)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    if top_k is None or top_k == probs.shape[-1]:
        return probs
    values, indices = jax.lax.top_k(probs, top_k)
    return losses.reconstruct_topk(values, indices, probs.shape[-1])


def teacher_targets(objective: Objective, batch, teacher_logits: Callable | None):
    if objective.targets == "store":
        return losses.reconstruct_topk(batch["teacher_probs"], batch["teacher_indices"], objective.num_classes)
    if objective.targets == "online":
        logits = jax.lax.stop_gradient(teacher_logits(batch["image"]))
        return topk_distribution(logits, top_k=objective.top_k, temperature=objective.target_temperature)
    return optax.smooth_labels(jax.nn.one_hot(batch["label"], objective.num_classes), objective.label_smoothing)


def _objective_loss(objective: Objective, logits, x, mu, sigma, targets):
    if objective.loss == "ib":
        return losses.ib_loss(x, mu, sigma, logits, targets, beta=objective.beta,
                              estimator=objective.rate_estimator)
    if objective.loss == "kd":
        loss = losses.kd_loss(logits, teacher_probs=targets, temperature=objective.temperature)
        return loss, {"kd": loss}
    loss = losses.soft_cross_entropy(logits, targets)
    return loss, {"ce": loss}


def train_step(state, batch, teacher_variables=None, *, objective: Objective,
               teacher_logits_fn: Callable[[Any, jax.Array], jax.Array] | None = None):
    """One optimisation step of a :class:`~rkdsc_jax.models.tosc.TOSC` system.

    ``teacher_logits_fn(teacher_variables, images)`` is needed for online targets only.
    """
    rngs = state.step_rng("snr", "channel", "pick", "sample", "dropout")
    images = batch["image"]
    batch_size = images.shape[0]
    snr_db = channels_lib.sample_snr_db(rngs["snr"], (batch_size,), *objective.snr_range)
    if len(objective.channels) == 2:
        use_rayleigh = jax.random.bernoulli(rngs["pick"], 0.5, (batch_size,))
    else:
        use_rayleigh = jnp.full((batch_size,), objective.channels[0] == "rayleigh")
    teacher_logits = (lambda im: teacher_logits_fn(teacher_variables, im)) if teacher_logits_fn else None
    targets = teacher_targets(objective, batch, teacher_logits)

    def channel_fn(x):
        return mixed_channel(rngs["channel"], x, snr_db, use_rayleigh, csi=objective.csi,
                             equalizer=objective.equalizer)

    def loss_fn(params):
        (logits, (x, mu, sigma)), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, snr_db, channel_fn,
            train=True, sample=objective.loss == "ib", mutable=["batch_stats"],
            rngs={"sample": rngs["sample"], "dropout": rngs["dropout"]},
        )
        loss, parts = _objective_loss(objective, logits, x, mu, sigma, targets)
        return loss, (logits, parts, updates)

    (loss, (logits, parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    predictions = jnp.argmax(logits, -1)
    metrics = {
        "loss": loss,
        **parts,
        "accuracy": jnp.mean(predictions == batch["label"]),
        "teacher_agreement": jnp.mean(predictions == jnp.argmax(targets, -1)),
        "grad_norm": optax.tree.norm(grads),
    }
    return state, metrics


def _eval_channel(key, x, snr_db, kind: str, csi: str, equalizer: str):
    return channels_lib.ChannelSpec(csi=csi, equalizer=equalizer).transmit(key, x, snr_db, kind)


def eval_step(state, batch, snr_db, key, *, kind: str, csi: str = "perfect", equalizer: str = "mmse"):
    """Masked sums of correct predictions at one SNR over one channel (deterministic μ sent).

    ``key`` is folded with the batch's first example index, so every batch gets its own
    noise and the result does not depend on how batches are sharded or ordered.
    """
    key = jax.random.fold_in(key, batch["index"][0])
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], snr_db,
        lambda x: _eval_channel(key, x, snr_db, kind, csi, equalizer), train=False, sample=False,
    )
    mask = batch["mask"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def teacher_over_channel_eval_step(teacher_params, batch, snr_db, key, *, feature_fn, head_fn, kind: str,
                                   csi: str = "perfect", equalizer: str = "mmse"):
    """LA-TOSC: the teacher's features sent as they are (power-normalised) to its own head.

    ``feature_fn(variables, images)`` includes the teacher's preprocessing.  The
    features are sent with one real per symbol half (k = D/2 complex uses); no part of
    the teacher was trained for the channel.
    """
    key = jax.random.fold_in(key, batch["index"][0])
    features = feature_fn(teacher_params["network"], batch["image"])
    received = _eval_channel(key, features, snr_db, kind, csi, equalizer)
    # The head was fitted on features at their natural scale; undo the power normalisation
    # with the transmitted norm (the receiver is told the scale, a generous assumption).
    if kind != "none":
        scale = jnp.linalg.norm(features, axis=-1, keepdims=True) / jnp.sqrt(features.shape[-1] / 2.0)
        received = received * scale
    logits = head_fn(teacher_params["head"], received)
    mask = batch["mask"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}
