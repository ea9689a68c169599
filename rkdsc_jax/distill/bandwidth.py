"""The teacher over the channel at equal bandwidth (issue 19, item 1).

``tosc_steps.teacher_over_channel_eval_step`` sends all D of the teacher's features (D/2
complex symbols: 640 for D = 1280) against 16 to 98 symbols for the students, so it is a
labelled reference, never the comparison.  Here the teacher gets the student's budget: its
feature vector f ∈ R^D goes through a fixed-rate linear encoder to exactly 2k reals = k
complex symbols (``channels.real_to_complex``: first half real parts, second half imaginary
parts), power-normalised to unit average symbol power per image, over the channel
(``channels.ChannelSpec``, the students' receiver), then a linear decoder maps the k
received symbols back to R^D and into the teacher's own head.

Two encoders, one parameter layout (``{"encoder": {"kernel" (D, 2k), "bias"}, "decoder":
{"kernel" (2k, D), "bias"}}``, the layout of :class:`LinearCodec`):

- ``fit_pca_codec``: the top 2k principal directions of the training set's features
  (encoder Vᵀ(f − mean), decoder V z + mean): the best rank-2k linear reconstruction,
  untrained for the channel;
- ``train_linear_codec``: :class:`LinearCodec` trained through the frozen head with labels
  (cross-entropy) under random SNR and AWGN/Rayleigh, starting from the PCA codec: the
  upper bound of what a linear fixed-rate scheme gets from the teacher.

Power normalisation removes the encoding's scale.  ``side_info="norm"`` (default) tells the
receiver each image's pre-normalisation RMS symbol amplitude, one real per image (a header,
not counted in k), the same generous assumption as ``teacher_over_channel_eval_step``;
``side_info="none"`` uses the training set's mean amplitude instead (``codec["scale"]``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rkdsc_jax import channels as channels_lib
from rkdsc_jax.distill import losses

SIDE_INFO = ("norm", "none")


def check_num_symbols(num_symbols, feature_dim: int) -> int:
    """``num_symbols`` as an int, refused unless 1 ≤ num_symbols and 2·num_symbols ≤ D."""
    if isinstance(num_symbols, bool) or not isinstance(num_symbols, (int, np.integer)):
        raise ValueError(f"num_symbols must be a whole number of complex symbols per image, got "
                         f"{num_symbols!r}; pass e.g. 16.")
    k = int(num_symbols)
    if k < 1:
        raise ValueError(f"num_symbols must be >= 1 complex symbol per image, got {k}.")
    if 2 * k > feature_dim:
        raise ValueError(
            f"num_symbols={k} needs 2·{k} = {2 * k} reals but the teacher has only D = {feature_dim} "
            f"features: a linear projection cannot add information. Use num_symbols <= {feature_dim // 2} "
            f"(D/2 sends the features as they are: tosc_steps.teacher_over_channel_eval_step).")
    return k


def _check_features(features, name="features") -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), one teacher feature vector per row, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be real floating features, got dtype {x.dtype}.")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{name} contains {x[tuple(bad[0])]} at row {bad[0][0]}; pass finite teacher features.")
    return x.astype(np.float64)


def codec_num_symbols(codec: Mapping[str, Any]) -> int:
    """k, from the encoder's (D, 2k) kernel."""
    return int(jnp.shape(codec["encoder"]["kernel"])[1]) // 2


def fit_pca_codec(features, num_symbols: int, *, return_eigenvalues: bool = False):
    """The PCA codec of ``features`` (N, D) at ``num_symbols`` complex symbols.

    Encoder z = Vᵀ(f − mean) with V the top-2k eigenvectors of the features' covariance
    (population, 1/N); decoder f̂ = V z + mean.  Without noise, E‖f − f̂‖² is the sum of the
    discarded eigenvalues.  ``codec["scale"]`` is the mean RMS amplitude per real of z over
    the set (used by ``side_info="none"``).  With ``return_eigenvalues``, also all D
    eigenvalues, largest first.
    """
    x = _check_features(features)
    n, d = x.shape
    k = check_num_symbols(num_symbols, d)
    if n < 2:
        raise ValueError(f"fit_pca_codec needs at least 2 feature vectors to estimate a covariance, got {n}.")
    mean = x.mean(axis=0)
    centred = x - mean
    # Eigenvectors of the D×D covariance: memory O(D²) whatever N (60k × 1280 features is fine).
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / n)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.maximum(eigenvalues[order], 0.0), vectors[:, order]
    basis = vectors[:, :2 * k]
    z = centred @ basis
    scale = float(np.mean(np.sqrt(np.mean(z ** 2, axis=1))))
    codec = {"encoder": {"kernel": jnp.asarray(basis, jnp.float32), "bias": jnp.asarray(-mean @ basis, jnp.float32)},
             "decoder": {"kernel": jnp.asarray(basis.T, jnp.float32), "bias": jnp.asarray(mean, jnp.float32)},
             "scale": jnp.asarray(scale, jnp.float32)}
    return (codec, eigenvalues) if return_eigenvalues else codec


class LinearCodec(nn.Module):
    """Dense(2k) encoder and Dense(D) decoder (parameters as ``fit_pca_codec``'s)."""

    num_symbols: int
    feature_dim: int

    def setup(self):
        check_num_symbols(self.num_symbols, self.feature_dim)
        self.encoder = nn.Dense(2 * self.num_symbols)
        self.decoder = nn.Dense(self.feature_dim)

    def __call__(self, features):
        return self.decoder(self.encoder(features))


def with_scale(codec, features):
    """``codec`` with ``"scale"``, the mean RMS amplitude per real of its encoding of
    ``features`` (N, D): what ``side_info="none"`` decodes with."""
    z = np.asarray(encode(codec, jnp.asarray(_check_features(features), jnp.float32)), np.float64)
    return dict(codec, scale=jnp.asarray(np.mean(np.sqrt(np.mean(z ** 2, axis=1))), jnp.float32))


def encode(codec, features):
    """f (B, D) → z (B, 2k) reals, before power normalisation."""
    return features @ codec["encoder"]["kernel"] + codec["encoder"]["bias"]


def channel_symbols(codec, features):
    """The transmitted symbols: (B, k) complex, unit average power per image."""
    return channels_lib.normalize_power(channels_lib.real_to_complex(encode(codec, features)))


def over_channel(codec, features, key, snr_db, *, kind: str, channel: channels_lib.ChannelSpec,
                 side_info: str = "norm"):
    """f → encoder → k unit-power symbols → channel → decoder → f̂ (B, D).

    ``kind`` is a channel kind of ``channels.transmit`` or ``"none"`` (no channel, no noise).
    """
    if side_info not in SIDE_INFO:
        raise ValueError(f"side_info must be one of {SIDE_INFO}, got {side_info!r}.")
    z = encode(codec, features)
    k = z.shape[-1] // 2
    if side_info == "norm":
        amplitude = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) / k)
    else:
        amplitude = jnp.broadcast_to(codec["scale"], z.shape[:-1] + (1,))
    if kind == "none":  # Power-normalised, noiseless: z·√k/‖z‖.
        norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) / k)
        received = z / jnp.where(norm > 0, norm, 1.0)
    else:
        received = channel.transmit(key, z, snr_db, kind)  # Unit power per image, as transmit does.
    # The normalised symbols are z/amplitude (amplitude = ‖z‖/√k): scale back before decoding.
    z_hat = received * amplitude
    return z_hat @ codec["decoder"]["kernel"] + codec["decoder"]["bias"]


def codec_logits(params, features, snr_db, key, *, head_fn: Callable, kind: str,
                 channel: channels_lib.ChannelSpec, side_info: str = "norm"):
    """The teacher's head on features sent at the codec's rate: ``params`` = {"codec", "head"}."""
    received = over_channel(params["codec"], features, key, snr_db, kind=kind, channel=channel, side_info=side_info)
    return head_fn(params["head"], received)


def equal_bandwidth_eval_step(params, batch, snr_db, key, *, feature_fn, head_fn, kind: str,
                              csi: str = "perfect", equalizer: str = "mmse", rician_k: float = 1.0,
                              side_info: str = "norm"):
    """Masked sums of correct predictions of the teacher sent at ``codec_num_symbols`` symbols.

    Drop-in for ``tosc_steps.teacher_over_channel_eval_step`` in
    ``evaluation.accuracy_vs_snr``: ``params`` = teacher params ``{"network", "head"}`` plus
    ``"codec"`` (``fit_pca_codec`` or ``train_linear_codec``).  Same noise per (key, batch).
    """
    key = jax.random.fold_in(key, batch["index"][0])
    features = feature_fn(params["network"], batch["image"])
    channel = channels_lib.ChannelSpec(csi=csi, equalizer=equalizer, rician_k=rician_k)
    logits = codec_logits(params, features, snr_db, key, head_fn=head_fn, kind=kind, channel=channel,
                          side_info=side_info)
    mask = batch["mask"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"accuracy": jnp.sum(correct * mask), "count": jnp.sum(mask)}


# --- The trained linear codec (upper bound) ----------------------------------------------


def make_codec_train_step(head_fn: Callable, tx: optax.GradientTransformation, *,
                          snr_range=(-10.0, 25.0), kinds=("awgn", "rayleigh"),
                          channel: channels_lib.ChannelSpec = channels_lib.ChannelSpec(),
                          side_info: str = "norm"):
    """A jitted ``step(codec, opt_state, head_params, features, labels, key) → (codec, opt_state, loss)``.

    Cross-entropy of the frozen head on the decoded features, per example SNR uniform in dB
    over ``snr_range`` and a channel drawn from ``kinds`` (``ChannelSpec.mixed``: the
    receiver of evaluation).
    """
    if not kinds or any(k not in ("awgn", "rayleigh") for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of ('awgn', 'rayleigh'), got {kinds}.")
    low, high = snr_range
    if not low <= high:
        raise ValueError(f"snr_range must be (low, high) with low <= high, got {snr_range}.")

    def loss_fn(trainable, scale, head_params, features, labels, key):
        snr_key, pick_key, channel_key = jax.random.split(key, 3)
        b = features.shape[0]
        snr = jax.random.uniform(snr_key, (b,), minval=low, maxval=high)
        use_rayleigh = (jax.random.bernoulli(pick_key, 0.5, (b,)) if len(kinds) == 2
                        else jnp.full((b,), kinds[0] == "rayleigh"))
        codec = dict(trainable, scale=scale)
        z = encode(codec, features)
        k = z.shape[-1] // 2
        amplitude = (jnp.sqrt(jnp.sum(jnp.square(z), -1, keepdims=True) / k) if side_info == "norm"
                     else jnp.broadcast_to(scale, (b, 1)))
        received = channel.mixed(channel_key, z, snr, use_rayleigh) * amplitude
        decoded = received @ codec["decoder"]["kernel"] + codec["decoder"]["bias"]
        return losses.cross_entropy(head_fn(head_params, decoded), labels)

    @jax.jit
    def step(codec, opt_state, head_params, features, labels, key):
        trainable = {"encoder": codec["encoder"], "decoder": codec["decoder"]}
        loss, grads = jax.value_and_grad(loss_fn)(trainable, codec["scale"], head_params, features, labels, key)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return dict(trainable, scale=codec["scale"]), opt_state, loss

    return step


def train_linear_codec(features, labels, head_fn: Callable, head_params, num_symbols: int, *,
                       steps: int = 500, batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0,
                       snr_range=(-10.0, 25.0), kinds=("awgn", "rayleigh"),
                       channel: channels_lib.ChannelSpec = channels_lib.ChannelSpec(), side_info: str = "norm",
                       init: Mapping | None = None):
    """The linear codec trained with channel noise (Adam), from the PCA codec unless ``init``.

    ``features`` (N, D) are the teacher's training-set features, ``labels`` (N,) integers.
    Returns (codec, per-step losses).
    """
    x = _check_features(features)
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be (N,) = ({x.shape[0]},) integers, one per feature row, "
                         f"got {y.dtype} {y.shape}.")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")
    codec = dict(init) if init is not None else fit_pca_codec(x, num_symbols)
    if codec_num_symbols(codec) != check_num_symbols(num_symbols, x.shape[1]):
        raise ValueError(f"init has {codec_num_symbols(codec)} symbols, not num_symbols={num_symbols}.")
    if "scale" not in codec:  # E.g. LinearCodec(...).init(...)["params"]: side_info="none" needs it.
        codec = with_scale(codec, x)
    tx = optax.adam(learning_rate)
    opt_state = tx.init({"encoder": codec["encoder"], "decoder": codec["decoder"]})
    step = make_codec_train_step(head_fn, tx, snr_range=snr_range, kinds=kinds, channel=channel,
                                 side_info=side_info)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    xf, history = jnp.asarray(x, jnp.float32), []
    for i in range(steps):
        idx = rng.integers(0, x.shape[0], min(batch_size, x.shape[0]))
        codec, opt_state, loss = step(codec, opt_state, head_params, xf[idx], jnp.asarray(y[idx]),
                                      jax.random.fold_in(key, i))
        history.append(loss)
    return codec, [float(v) for v in jax.device_get(history)]


def collect_features(feature_fn: Callable, network_params, batches, *, max_examples: int | None = None):
    """(features (N, D) float32, labels (N,) int32) of a dataset, for ``fit_pca_codec`` and
    ``train_linear_codec``: ``feature_fn(network_params, images)`` jitted over ``batches``
    (dicts with "image", "label" and optionally "mask"; masked-out rows are dropped)."""
    jitted = jax.jit(feature_fn)
    features, labels, total = [], [], 0
    for batch in batches:
        f = np.asarray(jitted(network_params, batch["image"]), np.float32)
        keep = np.asarray(batch["mask"], bool) if "mask" in batch else np.ones(len(f), bool)
        features.append(f[keep])
        labels.append(np.asarray(batch["label"], np.int32)[keep])
        total += int(keep.sum())
        if max_examples is not None and total >= max_examples:
            break
    if not features:
        raise ValueError("collect_features got no batches; pass the training set's batches.")
    features, labels = np.concatenate(features), np.concatenate(labels)
    return (features, labels) if max_examples is None else (features[:max_examples], labels[:max_examples])
