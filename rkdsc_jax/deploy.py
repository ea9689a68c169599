"""Deployable semantic-communication systems: export, load, transmit, receive.

A trained system splits where the wireless link is:

- the **transmitter** (on the device): the student encoder and the channel encoder, images
  in, channel symbols out;
- the **receiver** (at the edge): the channel decoder and the classifier, received symbols
  in, class logits out.

:func:`export` writes one directory::

    spec.json       how to rebuild both halves (a :class:`SystemSpec`), their parameter
                    counts, and where the weights came from
    transmitter/    Orbax checkpoint of the transmitter's variables only
    receiver/       Orbax checkpoint of the receiver's variables only

:func:`load_transmitter` and :func:`load_receiver` read one half each, with nothing from the
training code (no optimiser state, no teacher, no configs), so a device can ship without the
receiver's weights and the other way round.  The channel between them is the user's — a real
radio, or :func:`over_channel` for the simulated one::

    tx, rx = deploy.load_transmitter(path), deploy.load_receiver(path)
    sent = tx.transmit(images, snr_db=5.0, channel="rayleigh")        # images: (B, H, W, C)
    received = deploy.over_channel(jax.random.key(0), sent, 5.0, "rayleigh")
    labels = rx.predict(received, sent.mask, snr_db=5.0, channel="rayleigh")

Two kinds of system are understood: ``rkdsc`` (:class:`rkdsc_jax.models.rkd.RKDSystem`,
paper A: variable-length CAT codec, SNR- and channel-type-aware on both sides) and ``tosc``
(:class:`rkdsc_jax.models.tosc.TOSC`, paper B and the CNN baseline: a fixed number of
symbols, SNR-aware transmitter).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rkdsc_jax import channels as channels_lib
from rkdsc_jax import files

FORMAT = "rkdsc_jax.deploy/1"
SPEC_FILE = "spec.json"

# Which top-level parameter collections belong to which half; anything else must be listed
# as training-only, so a new submodule can never be dropped from an export silently.
_PARTS = {
    "rkdsc": {"transmitter": ("encoder", "cat_encoder"), "receiver": ("cat_decoder", "classifier"),
              "training_only": ("projection",)},
    "tosc": {"transmitter": ("encoder", "cam", "head"), "receiver": ("decoder",), "training_only": ()},
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):  # A genotype.
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """Everything needed to rebuild a system's modules, as plain JSON-able values.

    ``kind``: ``"rkdsc"`` or ``"tosc"``; ``encoder``/``encoder_kwargs``: a name of
    :data:`rkdsc_jax.models.tosc.ENCODERS` and its arguments (a genotype as its dict);
    ``system_kwargs``: the remaining fields of the system module; ``input_shape``: one
    image (H, W, C) as the transmitter takes it, float in [0, 1].
    """

    kind: str
    encoder: str
    encoder_kwargs: dict
    system_kwargs: dict
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.kind not in _PARTS:
            raise ValueError(f"Unknown system kind {self.kind!r}; expected one of {sorted(_PARTS)}.")
        object.__setattr__(self, "encoder_kwargs", _jsonable(dict(self.encoder_kwargs)))
        object.__setattr__(self, "system_kwargs", _jsonable(dict(self.system_kwargs)))
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    def build(self) -> nn.Module:
        """The system module (``RKDSystem`` or ``TOSC``) these values describe."""
        from rkdsc_jax.models import rkd, tosc

        encoder = tosc.make_encoder(self.encoder, **self.encoder_kwargs)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.system_kwargs.items()}
        system = rkd.RKDSystem if self.kind == "rkdsc" else tosc.TOSC
        return system(encoder=encoder, **kwargs)

    @property
    def max_symbols(self) -> int:
        """Complex channel uses per image at the full budget."""
        s = self.system_kwargs
        return int(s["num_tokens"] * s["symbols_per_token"] if self.kind == "rkdsc" else s["num_symbols"])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "encoder": self.encoder, "encoder_kwargs": self.encoder_kwargs,
                "system_kwargs": self.system_kwargs, "input_shape": list(self.input_shape),
                "class_names": None if self.class_names is None else list(self.class_names)}

    @classmethod
    def from_dict(cls, d: dict) -> "SystemSpec":
        return cls(kind=d["kind"], encoder=d["encoder"], encoder_kwargs=d["encoder_kwargs"],
                   system_kwargs=d["system_kwargs"], input_shape=tuple(d["input_shape"]),
                   class_names=None if d.get("class_names") is None else tuple(d["class_names"]))


def split_variables(kind: str, variables: dict) -> tuple[dict, dict]:
    """(transmitter variables, receiver variables) of a system's ``{"params", "batch_stats", ...}``."""
    parts = _PARTS[kind]
    known = set(parts["transmitter"]) | set(parts["receiver"]) | set(parts["training_only"])
    halves = ({}, {})
    for collection, tree in variables.items():
        unknown = sorted(set(tree) - known)
        if unknown:
            raise ValueError(f"The {kind} system has {collection} for {unknown}, which belong to neither the "
                             f"transmitter {parts['transmitter']} nor the receiver {parts['receiver']}; add them "
                             "to rkdsc_jax.deploy._PARTS.")
        for half, names in zip(halves, (parts["transmitter"], parts["receiver"])):
            selected = {name: tree[name] for name in names if name in tree}
            if selected:
                half[collection] = selected
    if "params" not in halves[0] or "params" not in halves[1]:
        raise ValueError(f"Both halves need parameters; got transmitter {sorted(halves[0].get('params', {}))} and "
                         f"receiver {sorted(halves[1].get('params', {}))}. Export a stage-2 (codec) system.")
    return halves


def _count(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def export(directory: epath.PathLike, spec: SystemSpec, variables: dict, *, metadata: dict | None = None,
           overwrite: bool = False) -> dict:
    """Writes ``spec.json``, ``transmitter/`` and ``receiver/`` into ``directory``, atomically.

    ``variables``: the whole system's ``{"params": ..., "batch_stats": ...}`` (training-only
    parts such as RKD-SC's stage-1 projection are left out). ``metadata``: anything JSON-able
    to keep beside the spec (the run it came from, its accuracy). Returns the written spec.
    """
    directory = files.absolute(directory)
    if directory.exists():
        if not overwrite:
            raise FileExistsError(f"{directory} already exists; pass overwrite=True (or --config.export.overwrite) "
                                  "to replace it.")
        if not (directory / SPEC_FILE).exists():
            raise FileExistsError(f"{directory} exists and is not an export (no {SPEC_FILE}); refusing to replace "
                                  "it. Choose another directory.")
    variables = {k: v for k, v in variables.items() if v}  # Drop empty collections (no batch norm).
    transmitter, receiver = split_variables(spec.kind, variables)
    transmitter, receiver = jax.device_get((transmitter, receiver))
    written = {"format": FORMAT, "system": spec.to_dict(), "max_symbols": spec.max_symbols,
               "params": {"transmitter": _count(transmitter["params"]), "receiver": _count(receiver["params"])},
               "jax_version": jax.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "metadata": metadata or {}}
    # Build the whole export beside its destination, then rename: readers never see half of one.
    # (On object stores such as gs://, which have no directory rename, the rename is a copy.)
    staging = directory.parent / f"{directory.name}.partial-{os.getpid()}"
    if staging.exists():
        staging.rmtree()
    staging.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    for name, tree in (("transmitter", transmitter), ("receiver", receiver)):
        checkpointer.save(staging / name, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    files.atomic_write_json(staging / SPEC_FILE, written)
    previous = directory.parent / f"{directory.name}.previous-{os.getpid()}"
    if directory.exists():
        directory.replace(previous)
    staging.replace(directory)
    if previous.exists():
        previous.rmtree()
    return written


def read_spec(directory: epath.PathLike) -> dict:
    """The ``spec.json`` of an export, checked for its format."""
    path = epath.Path(directory) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {directory} is not an rkdsc_jax export. Write one with "
                                "rkdsc_jax.deploy.export or `--config.mode=export`.")
    spec = json.loads(path.read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{path} has format {spec.get('format')!r}; this rkdsc_jax reads {FORMAT!r}.")
    return spec


def _restore(directory: epath.PathLike, half: str) -> dict:
    path = files.absolute(directory) / half
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the export in {directory} is incomplete; export it again.")
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(path)
    finally:
        checkpointer.close()
    return jax.tree.map(jnp.asarray, restored)


def _check_snr(snr_db, batch: int) -> jax.Array:
    snr = np.asarray(snr_db, np.float32)
    if snr.ndim > 1 or (snr.ndim == 1 and snr.shape[0] not in (1, batch)):
        raise ValueError(f"snr_db must be a scalar or one value per example ({batch},), got shape {snr.shape}.")
    if not np.all(np.isfinite(snr)):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}.")
    return jnp.broadcast_to(jnp.asarray(snr), (batch,))


def _channel_id(channel: str) -> int:
    if channel not in channels_lib.CHANNEL_KINDS:
        raise ValueError(f"Unknown channel {channel!r}; expected one of {channels_lib.CHANNEL_KINDS}.")
    return channels_lib.CHANNEL_KINDS.index(channel)


class Transmission(NamedTuple):
    """What leaves the transmitter: ``symbols`` (B, 2K) real (the K complex symbols' real parts,
    then their imaginary parts) and ``mask`` (B, K), 1 for each symbol actually sent."""

    symbols: jax.Array
    mask: jax.Array


class _Half:
    def __init__(self, directory: epath.PathLike, half: str):
        self.directory = files.absolute(directory)
        self.info = read_spec(self.directory)
        self.spec = SystemSpec.from_dict(self.info["system"])
        self.model = self.spec.build()
        self.variables = _restore(self.directory, half)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    def num_params(self) -> int:
        return _count(self.variables["params"])


class Transmitter(_Half):
    """The device side of an export: ``transmit(images, snr_db, channel, num_symbols)``."""

    def __init__(self, directory: str):
        super().__init__(directory, "transmitter")
        model, kind = self.model, self.spec.kind

        def transmit(variables, images, snr_db, channel_type, num_symbols):
            if kind == "rkdsc":
                return model.apply(variables, images, snr_db, channel_type, num_symbols, method="transmit")
            x, _, _ = model.apply(variables, images, snr_db, method="encode")
            return x, jnp.ones((x.shape[0], x.shape[-1] // 2), x.dtype)

        self._transmit = jax.jit(transmit)

    def _images(self, images) -> jax.Array:
        images = np.asarray(images) if not isinstance(images, jax.Array) else images
        if images.ndim == len(self.spec.input_shape):
            images = images[None]
        if tuple(images.shape[1:]) != self.spec.input_shape:
            raise ValueError(f"This transmitter takes images of shape (B, {', '.join(map(str, self.spec.input_shape))})"
                             f", got {tuple(images.shape)}; resize them as the training data was (see spec.json).")
        if images.dtype == np.uint8:
            return jnp.asarray(images, jnp.float32) / 255.0
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"Images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}.")
        return jnp.asarray(images, jnp.float32)

    def transmit(self, images, snr_db, channel: str = "awgn", num_symbols: int | None = None) -> Transmission:
        """Encodes a batch (B, H, W, C) — uint8, or float in [0, 1] — for a link at ``snr_db`` (scalar
        or (B,)) of type ``channel``; RKD-SC systems send the first ``num_symbols`` symbols only."""
        images = self._images(images)
        batch = images.shape[0]
        snr = _check_snr(snr_db, batch)
        channel_type = jnp.full((batch,), _channel_id(channel), jnp.int32)
        if num_symbols is not None:
            if self.spec.kind != "rkdsc" and num_symbols != self.spec.max_symbols:
                raise ValueError(f"This {self.spec.kind} system always sends {self.spec.max_symbols} symbols; "
                                 f"num_symbols={num_symbols} needs a variable-length (rkdsc) system.")
            if not 1 <= num_symbols <= self.spec.max_symbols:
                raise ValueError(f"num_symbols must be in [1, {self.spec.max_symbols}], got {num_symbols}.")
            num_symbols = jnp.full((batch,), num_symbols, jnp.int32)
        elif self.spec.kind == "rkdsc":
            num_symbols = jnp.full((batch,), self.spec.max_symbols, jnp.int32)
        symbols, mask = self._transmit(self.variables, images, snr, channel_type, num_symbols)
        return Transmission(symbols, mask)


class Receiver(_Half):
    """The edge side of an export: ``receive(symbols, mask, snr_db, channel)`` → logits."""

    def __init__(self, directory: str):
        super().__init__(directory, "receiver")
        model, kind = self.model, self.spec.kind

        def receive(variables, received, mask, snr_db, channel_type):
            if kind == "rkdsc":
                logits, _ = model.apply(variables, received, mask, snr_db, channel_type, method="receive")
                return logits
            return model.apply(variables, received, method="decode")

        self._receive = jax.jit(receive)

    def receive(self, received, mask=None, snr_db=None, channel: str = "awgn") -> jax.Array:
        """Logits (B, classes) from received symbols (B, 2K). RKD-SC receivers also need the
        mask of sent symbols and the link's SNR and type (its decoder is conditioned on them)."""
        received = jnp.asarray(received, jnp.float32)
        width = 2 * self.spec.max_symbols
        if received.ndim != 2 or received.shape[1] != width:
            raise ValueError(f"This receiver takes received symbols of shape (B, {width}), got {received.shape}.")
        batch = received.shape[0]
        if self.spec.kind != "rkdsc":
            return self._receive(self.variables, received, None, None, None)
        if snr_db is None:
            raise ValueError("An RKD-SC receiver is conditioned on the link: pass snr_db (and channel).")
        if mask is None:
            mask = jnp.ones((batch, self.spec.max_symbols), jnp.float32)
        mask = jnp.asarray(mask, jnp.float32)
        if mask.shape != (batch, self.spec.max_symbols):
            raise ValueError(f"mask must have shape ({batch}, {self.spec.max_symbols}), got {mask.shape}.")
        channel_type = jnp.full((batch,), _channel_id(channel), jnp.int32)
        return self._receive(self.variables, received, mask, _check_snr(snr_db, batch), channel_type)

    def predict(self, received, mask=None, snr_db=None, channel: str = "awgn") -> jax.Array:
        """Class indices (B,)."""
        return jnp.argmax(self.receive(received, mask, snr_db, channel), axis=-1)


def load_transmitter(directory: str) -> Transmitter:
    return Transmitter(directory)


def load_receiver(directory: str) -> Receiver:
    return Receiver(directory)


@functools.partial(jax.jit, static_argnames=("channel", "csi", "equalizer"))
def _simulate(key, symbols, mask, snr_db, channel, csi, equalizer):
    return channels_lib.transmit(key, symbols, snr_db, kind=channel, csi=csi, equalizer=equalizer, mask=mask)


def over_channel(key: jax.Array, sent: Transmission, snr_db, channel: str = "awgn", *, csi: str = "perfect",
                 equalizer: str = "mmse") -> jax.Array:
    """The simulated link (:func:`rkdsc_jax.channels.transmit`): what the receiver gets for ``sent``."""
    _channel_id(channel)
    snr = _check_snr(snr_db, sent.symbols.shape[0])
    return _simulate(key, sent.symbols, sent.mask, snr, channel, csi, equalizer)


def accuracy_vs_snr(transmitter: Transmitter, receiver: Receiver, images, labels, snrs_db: Sequence[float],
                    channel: str = "awgn", *, seed: int = 0, batch_size: int = 500) -> dict[float, float]:
    """Accuracy of the deployed pair over the simulated link at each SNR."""
    labels = np.asarray(labels)
    result = {}
    for i, snr in enumerate(snrs_db):
        correct = 0
        for start in range(0, len(labels), batch_size):
            chunk = slice(start, start + batch_size)
            sent = transmitter.transmit(images[chunk], snr, channel)
            key = jax.random.fold_in(jax.random.key(seed), i * 1_000_003 + start)
            predicted = receiver.predict(over_channel(key, sent, snr, channel), sent.mask, snr, channel)
            correct += int(np.sum(np.asarray(predicted) == labels[chunk]))
        result[float(snr)] = correct / len(labels)
    return result


def median_ms(fn, *args, repeats: int) -> float:
    """Median wall milliseconds of ``fn(*args)`` over ``repeats`` calls after a warm-up call
    (which compiles), each waited on until its results are ready."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - begin)
    return 1000.0 * float(np.median(times))


def latency(transmitter: Transmitter, receiver: Receiver, *, repeats: int = 100, snr_db: float = 10.0,
            channel: str = "awgn") -> dict[str, Any]:
    """Median milliseconds of ``transmit`` and ``receive`` at batch 1 on the default device,
    after a warm-up call (compilation is not counted)."""
    image = np.zeros((1, *transmitter.spec.input_shape), np.float32)
    sent = transmitter.transmit(image, snr_db, channel)
    device = jax.devices()[0]
    return {"transmit_ms": median_ms(transmitter.transmit, image, snr_db, channel, repeats=repeats),
            "receive_ms": median_ms(receiver.receive, sent.symbols, sent.mask, snr_db, channel, repeats=repeats),
            "batch_size": 1, "repeats": repeats, "platform": device.platform, "device": str(device.device_kind),
            "transmitter_params": transmitter.num_params(), "receiver_params": receiver.num_params()}

