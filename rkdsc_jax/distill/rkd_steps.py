"""Train and evaluation steps of paper A's two-stage robust distillation (SPEC §4.2).

Stage 1 (no channel): the student's projected features learn the teacher's features
(MSE or cosine) and its classifier learns the teacher's logits (KD with temperature τ)
and, optionally, the labels:

    L₁ = w_feature · d(P(f_s), f_t) + w_kd · τ² KL(σ(t/τ) ‖ σ(s/τ)) + w_ce · CE(y, s)

Stage 2 (robustness): the CAT codec and the channel are inserted.  Every example draws its
own SNR (uniform in dB), channel (AWGN or Rayleigh block fading) and symbol budget (one
of ``budgets``, so one model learns every bandwidth); the decoded features learn the
teacher's features of the same image, and the classifier on them the labels and the
teacher's logits, with the same weights.  ``freeze_encoder`` keeps the distilled encoder
fixed (run in inference mode, no gradient).

The teacher runs in the step (``teacher_fn(variables, images) -> (features, logits)``,
images in [0, 1]); its outputs are constants for the student.  Stage 2 without a teacher
(``teacher_fn=None``) trains on the labels alone: the no-KD baseline of the same network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from rkdsc_jax import channels as channels_lib
from rkdsc_jax.distill import losses

TRAIN_CHANNELS = ("awgn", "rayleigh")


@dataclasses.dataclass(frozen=True)
class RKDObjective:
    feature_loss: str = "mse"
    feature_weight: float = 1.0
    kd_weight: float = 1.0
    ce_weight: float = 0.5
    temperature: float = 4.0
    # Stage 2 only.
    snr_range: tuple[float, float] = (-10.0, 25.0)
    channels: tuple[str, ...] = TRAIN_CHANNELS
    budgets: tuple[int, ...] | None = None  # Symbol counts; None: the full K only.
    csi: str = "perfect"
    equalizer: str = "mmse"
    freeze_encoder: bool = False

    def __post_init__(self):
        if self.feature_loss not in losses.FEATURE_LOSS_KINDS:
            raise ValueError(f"Unknown feature_loss {self.feature_loss!r}; use one of {losses.FEATURE_LOSS_KINDS}.")
        if not self.channels or any(c not in TRAIN_CHANNELS for c in self.channels):
            raise ValueError(f"channels must be a non-empty subset of {TRAIN_CHANNELS}, got {self.channels}.")
        if min(self.feature_weight, self.kd_weight, self.ce_weight) < 0:
            raise ValueError("Loss weights must be >= 0.")
        if self.budgets is not None and (not self.budgets or min(self.budgets) < 1):
            raise ValueError(f"budgets must be positive symbol counts, got {self.budgets}.")
        self.channel  # Refuses an unknown csi or equalizer now, not at the first step.

    @property
    def channel(self) -> channels_lib.ChannelSpec:
        """The receiver of stage 2's training and evaluation alike."""
        return channels_lib.ChannelSpec(csi=self.csi, equalizer=self.equalizer)


def _distillation_losses(objective: RKDObjective, logits, features, teacher_features, teacher_logits, labels):
    if teacher_logits is None:
        ce = losses.cross_entropy(logits, labels)
        return ce, {"ce": ce}
    feature = losses.feature_loss(features, teacher_features, objective.feature_loss)
    kd = losses.kd_loss(logits, teacher_logits, temperature=objective.temperature)
    ce = losses.cross_entropy(logits, labels)
    total = objective.feature_weight * feature + objective.kd_weight * kd + objective.ce_weight * ce
    return total, {"feature": feature, "kd": kd, "ce": ce}


def _metrics(loss, parts, logits, teacher_logits, labels, grads):
    predictions = jnp.argmax(logits, -1)
    metrics = {"loss": loss, **parts, "accuracy": jnp.mean(predictions == labels), "grad_norm": optax.tree.norm(grads)}
    if teacher_logits is not None:
        metrics["teacher_agreement"] = jnp.mean(predictions == jnp.argmax(teacher_logits, -1))
    return metrics


def stage1_step(state, batch, teacher_variables, *, objective: RKDObjective, teacher_fn: Callable):
    """Semantic distillation without a channel; model method ``stage1``."""
    teacher_features, teacher_logits = jax.lax.stop_gradient(teacher_fn(teacher_variables, batch["image"]))

    def loss_fn(params):
        (logits, projected), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            method="stage1", mutable=["batch_stats"], rngs=state.step_rng("dropout"))
        loss, parts = _distillation_losses(objective, logits, projected, teacher_features, teacher_logits,
                                           batch["label"])
        return loss, (logits, parts, updates)

    (loss, (logits, parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, _metrics(loss, parts, logits, teacher_logits, batch["label"], grads)


def mixed_masked_channel(key, x, mask, snr_db, use_rayleigh, *, csi: str, equalizer: str):
    """Per-example AWGN or Rayleigh block fading of masked symbol vectors, both rows with the
    same receiver as ``stage2_eval_step`` (``ChannelSpec.mixed``; AWGN too is equalised)."""
    return channels_lib.ChannelSpec(csi=csi, equalizer=equalizer).mixed(key, x, snr_db, use_rayleigh, mask=mask)


def channel_type_ids(use_rayleigh):
    """The CAT's channel-type embedding index (``channels.CHANNEL_KINDS``)."""
    return jnp.where(use_rayleigh, channels_lib.CHANNEL_KINDS.index("rayleigh"),
                     channels_lib.CHANNEL_KINDS.index("awgn")).astype(jnp.int32)


def stage2_step(state, batch, teacher_variables, *, objective: RKDObjective, teacher_fn: Callable | None,
                max_symbols: int):
    """Robust distillation through the CAT codec and a random channel per example."""
    rngs = state.step_rng("snr", "pick", "budget", "channel", "dropout")
    images = batch["image"]
    batch_size = images.shape[0]
    teacher_features = teacher_logits = None
    if teacher_fn is not None:
        teacher_features, teacher_logits = jax.lax.stop_gradient(teacher_fn(teacher_variables, images))
    snr_db = channels_lib.sample_snr_db(rngs["snr"], (batch_size,), *objective.snr_range)
    if len(objective.channels) == 2:
        use_rayleigh = jax.random.bernoulli(rngs["pick"], 0.5, (batch_size,))
    else:
        use_rayleigh = jnp.full((batch_size,), objective.channels[0] == "rayleigh")
    budgets = jnp.asarray(objective.budgets or (max_symbols,), jnp.int32)
    num_symbols = budgets[jax.random.randint(rngs["budget"], (batch_size,), 0, len(budgets))]
    channel_type = channel_type_ids(use_rayleigh)

    def channel_fn(x, mask):
        return mixed_masked_channel(rngs["channel"], x, mask, snr_db, use_rayleigh, csi=objective.csi,
                                    equalizer=objective.equalizer)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if objective.freeze_encoder:
            tokens = jax.lax.stop_gradient(state.apply_fn(variables, images, train=False, method="tokens"))
            updates = {"batch_stats": state.batch_stats}

            def forward(module):
                x, mask = module.cat_encoder(tokens, snr_db, channel_type, num_symbols, train=True)
                return module.receive(channel_fn(x, mask), mask, snr_db, channel_type, train=True)

            logits, decoded = state.apply_fn(variables, method=forward, rngs={"dropout": rngs["dropout"]})
        else:
            (logits, decoded, _), updates = state.apply_fn(
                variables, images, snr_db, channel_fn, channel_type, num_symbols, train=True,
                mutable=["batch_stats"], rngs={"dropout": rngs["dropout"]})
        loss, parts = _distillation_losses(objective, logits, decoded, teacher_features, teacher_logits,
                                           batch["label"])
        return loss, (logits, parts, updates)

    (loss, (logits, parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, _metrics(loss, parts, logits, teacher_logits, batch["label"], grads)


def stage2_eval_step(state, batch, snr_db, key, *, kind: str, num_symbols: int | None = None,
                     csi: str = "perfect", equalizer: str = "mmse"):
    """Masked sums of correct predictions through the codec at one SNR, channel and budget."""
    key = jax.random.fold_in(key, batch["index"][0])
    batch_size = batch["image"].shape[0]
    channel_type = jnp.full((batch_size,), channels_lib.CHANNEL_KINDS.index(kind) if kind != "none" else 0,
                            jnp.int32)

    spec = channels_lib.ChannelSpec(csi=csi, equalizer=equalizer)

    def channel_fn(x, mask):
        return spec.transmit(key, x, snr_db, kind, mask=mask)

    logits, _, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
                                  snr_db, channel_fn, channel_type, num_symbols, train=False)
    mask = batch["mask"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def stage1_eval_step(state, batch):
    """Clean accuracy of the stage-1 student (no channel)."""
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
                               train=False, method="stage1")
    mask = batch["mask"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def teacher_features_and_logits(teacher) -> tuple[Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]], Any]:
    """A pure ``(variables, images) -> (features, logits)`` of a :class:`~rkdsc_jax.teachers.Teacher`."""
    def fn(variables, images):
        features = teacher.feature_fn(variables["network"], teacher.preprocess(images))
        return features, teacher.head_fn(variables["head"], features)

    return fn, {"network": teacher.variables, "head": teacher.head_params}
