"""Deployable semantic-communication systems: export, load, transmit, receive.

A trained system splits where the wireless link is:

- the **transmitter** (on the device): the student encoder and the channel encoder, images
  in, channel symbols out;
- the **receiver** (at the edge): the channel decoder and the classifier, received symbols
  in, class logits out.

:func:`export` writes one directory::

    spec.json       how to rebuild both halves (a :class:`SystemSpec`), their parameter
                    counts, where the weights came from (``metadata``, ``run_config``), the
                    SHA-256 of every file of both halves, and its own checksum
    transmitter/    Orbax checkpoint of the transmitter's variables only
    receiver/       Orbax checkpoint of the receiver's variables only

Loading a half verifies its files against ``spec.json`` first: a damaged or incomplete
export is refused (:class:`DamagedExportError`, "export it again"), never run.

:func:`load_transmitter` and :func:`load_receiver` read one half each, with nothing from the
training code (no optimiser state, no teacher, no configs), so a device can ship without the
receiver's weights and the other way round.  The channel between them is the user's — a real
radio, or :func:`over_channel` for the simulated one::

    tx, rx = deploy.load_transmitter(path), deploy.load_receiver(path)
    sent = tx.transmit(images, snr_db=5.0, channel="rayleigh")        # images: (B, H, W, C)
    received = deploy.over_channel(jax.random.key(0), sent, 5.0, "rayleigh")
    labels = rx.predict(received, sent.mask, snr_db=5.0, channel="rayleigh")

Inputs are checked on the host before they reach the jitted code: shapes against the spec,
dtypes, finite values, images in [0, 1] (``uint8`` images are read as pixels / 255; float
images above 1 are refused: divide by 255), binary prefix masks, supported symbol budgets,
known channel names.  ``checks="checkify"`` moves the value checks (finite, ranges, masks)
into the compiled function with :mod:`jax.experimental.checkify` (no host round trip for
device arrays; a failing check raises ``checkify.JaxRuntimeError``) and also checks that
the outputs are finite.

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
from absl import logging
from etils import epath
from jax.experimental import checkify

from rkdsc_jax import channels as channels_lib
from rkdsc_jax import files

FORMAT = "rkdsc_jax.deploy/1"
SPEC_FILE = "spec.json"
CHECKS = ("host", "checkify")
# Orbax rewrites these on commit and they hold no weights (see rkdsc_jax.train.checkpoint).
_UNHASHED = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt"})


class DamagedExportError(ValueError):
    """An export whose files do not match the checksums recorded when it was written."""

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


def _remove_leftovers(directory: epath.Path) -> None:
    """Staging and replaced copies of ``directory`` that a killed :func:`export` left."""
    if not directory.parent.is_dir():
        return
    for path in directory.parent.iterdir():
        for marker in (".partial-", ".previous-"):
            if path.name.startswith(directory.name + marker) and path.name != directory.name + marker + str(os.getpid()):
                if marker == ".previous-" and not directory.exists():
                    continue  # Killed between the two renames: the only complete copy; keep it.
                logging.warning("Removing %s, left by an interrupted export.", path)
                path.rmtree()


def export(directory: epath.PathLike, spec: SystemSpec, variables: dict, *, metadata: dict | None = None,
           run_config: dict | None = None, overwrite: bool = False) -> dict:
    """Writes ``spec.json``, ``transmitter/`` and ``receiver/`` into ``directory``, atomically.

    ``variables``: the whole system's ``{"params": ..., "batch_stats": ...}`` (training-only
    parts such as RKD-SC's stage-1 projection are left out). ``metadata``: anything JSON-able
    to keep beside the spec (the run it came from, its accuracy). ``run_config``: the run's
    own config (its ``config.json``), kept as ``read_spec(directory)["run_config"]``.
    Returns the written spec.
    """
    directory = files.absolute(directory)
    if not isinstance(spec, SystemSpec):
        raise TypeError(f"spec must be a deploy.SystemSpec, got {type(spec).__name__}.")
    for name, value in (("metadata", metadata), ("run_config", run_config)):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict (JSON-able) or None, got {type(value).__name__}.")
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables must be the system's {'params': ..., 'batch_stats': ...}, got "
                         f"{sorted(variables) if isinstance(variables, dict) else type(variables).__name__}.")
    _remove_leftovers(directory)
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
               "metadata": _jsonable(metadata or {}), "run_config": _jsonable(run_config)}
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
    written["checksums"] = {name: files.sha256_tree(staging / name, skip=_UNHASHED)
                            for name in ("transmitter", "receiver")}
    files.atomic_write_json(staging / SPEC_FILE, written, checksum=True)
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
    try:
        spec = files.read_json(path)
    except files.DamagedFileError as e:
        raise DamagedExportError(f"{e} The export in {directory} is damaged; export it again.") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"{path} has format {found!r}; this rkdsc_jax reads {FORMAT!r}.")
    spec.setdefault("run_config", None)
    return spec


def _restore(directory: epath.PathLike, half: str, info: dict) -> dict:
    path = files.absolute(directory) / half
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the export in {directory} is incomplete; export it again.")
    recorded = (info.get("checksums") or {}).get(half)
    if recorded is None:
        logging.warning("The export in %s has no checksums (written by an older rkdsc_jax); loading its %s "
                        "unverified. Export it again to protect it.", directory, half)
    else:
        why = files.verify_sha256_tree(path, recorded)
        if why:
            raise DamagedExportError(f"The {half} of the export in {directory} is damaged or incomplete ({why}); "
                                     "export it again.")
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(path)
    except Exception as e:  # noqa: BLE001 - any Orbax failure means the same thing here.
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DamagedExportError(f"Could not read the {half} of the export in {directory} ({type(e).__name__}: "
                                 f"{first}); export it again.") from e
    finally:
        checkpointer.close()
    return jax.tree.map(jnp.asarray, restored)


# -- input checks: on the host, before anything is traced (``checks="checkify"`` moves the
# value checks into the compiled function instead).

def _first_index(bad: np.ndarray) -> tuple[int, ...] | int:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return index[0] if len(index) == 1 else index


def _numeric(name: str, x, fix: str) -> np.ndarray | jax.Array:
    """``x`` as an array with a real numeric (or bool) dtype."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__} ({e}); {fix}") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}; {fix}")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {x.dtype}; {fix}")
    return x


def _host(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def _check_finite(name: str, x, fix: str) -> None:
    values = _host(x)
    bad = ~np.isfinite(values)
    if bad.any():
        index = _first_index(bad)
        what = "NaN" if np.isnan(values[np.unravel_index(np.argmax(bad), bad.shape)]) else "inf"
        raise ValueError(f"{name} contains {what} at index {index}; {fix}")


def _check_snr(snr_db, batch: int, *, values: bool = True) -> jax.Array:
    fix = "pass the link's SNR in dB as a finite number, or one per example."
    if snr_db is None:
        raise ValueError(f"snr_db is missing; {fix}")
    if isinstance(snr_db, str):
        raise ValueError(f"snr_db must be a number in dB, got the string {snr_db!r}; {fix}")
    snr = _numeric("snr_db", snr_db, fix)
    if snr.ndim > 1 or (snr.ndim == 1 and snr.shape[0] not in (1, batch)):
        raise ValueError(f"snr_db must be a scalar or one value per example ({batch},), got shape {snr.shape}.")
    if values:
        bad = ~np.isfinite(_host(snr).astype(np.float64))
        if bad.any():
            raise ValueError(f"snr_db must be finite, got {_host(snr).reshape(-1)[np.argmax(bad.reshape(-1))]} at "
                             f"index {int(np.argmax(bad.reshape(-1)))}; {fix}")
    return jnp.broadcast_to(jnp.asarray(snr, jnp.float32), (batch,))


def _channel_id(channel: str) -> int:
    if not isinstance(channel, str) or channel not in channels_lib.CHANNEL_KINDS:
        raise ValueError(f"Unknown channel {channel!r}; expected one of {channels_lib.CHANNEL_KINDS}.")
    return channels_lib.CHANNEL_KINDS.index(channel)


def _check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {tuple(allowed)}.")


def _check_count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """A whole number (Python or NumPy int, not bool) in [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {span}, got {value!r} ({type(value).__name__}).")
    if value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, got {value}.")
    return int(value)


def _check_mask_values(mask, *, prefix: bool) -> None:
    """Binary, at least one symbol per example, and (``prefix``) the first n symbols only."""
    m = _host(mask)
    bad = (m != 0) & (m != 1)
    if bad.any():
        index = _first_index(bad)
        raise ValueError(f"mask must hold only 0 and 1 (1 = symbol sent), got {m[index]} at index {index}.")
    empty = m.sum(-1) == 0
    if empty.any():
        raise ValueError(f"mask row {int(np.argmax(empty))} sends no symbol; every example needs at least one "
                         "(num_symbols >= 1).")
    if prefix:
        gaps = np.diff(m, axis=-1) > 0  # A 1 after a 0.
        if gaps.any():
            row, col = (int(i) for i in np.argwhere(gaps)[0])
            raise ValueError(f"mask row {row} is not a prefix mask (it sends symbol {col + 1} after skipping symbol "
                             f"{col}); this codec sends the first n symbols only: pass the transmitter's own mask.")


def _check_symbols(name: str, symbols, width: int, values: bool) -> jax.Array:
    fix = "pass the (B, 2K) real layout the transmitter sends (channels.complex_to_real for complex symbols)."
    symbols = _numeric(name, symbols, fix)
    if symbols.ndim != 2 or symbols.shape[1] != width:
        hint = " (add a batch axis: x[None])" if symbols.ndim == 1 and symbols.shape[0] == width else ""
        raise ValueError(f"This receiver takes {name} of shape (B, {width}), got {tuple(symbols.shape)}{hint}.")
    if symbols.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (0, {width}); pass at least one example.")
    if values:
        _check_finite(name, symbols, "the link delivered non-finite values: check the radio or channel model.")
    return jnp.asarray(symbols, jnp.float32)


def _check_mask(mask, batch: int, max_symbols: int, values: bool, prefix: bool) -> jax.Array:
    mask = _numeric("mask", mask, "pass the (B, K) 0/1 mask the transmitter returned.")
    if tuple(mask.shape) != (batch, max_symbols):
        raise ValueError(f"mask must have shape ({batch}, {max_symbols}) to match the {batch} received examples, "
                         f"got {tuple(mask.shape)}; pass the transmitter's mask for this batch.")
    if values:
        _check_mask_values(mask, prefix=prefix)
    return jnp.asarray(mask, jnp.float32)


def _in_jit_checks(named: dict) -> None:
    """``checkify`` versions of the host value checks (for ``checks="checkify"``)."""
    for name, x in named.items():
        if x is None:
            continue
        if name == "images":
            checkify.check(jnp.all(jnp.isfinite(x)), "images contain NaN or inf; pass finite pixels in [0, 1].")
            checkify.check(jnp.all((x >= 0) & (x <= 1)), "images must be in [0, 1]; divide 0..255 pixels by 255.")
        elif name == "mask":
            checkify.check(jnp.all((x == 0) | (x == 1)), "mask must hold only 0 and 1.")
            checkify.check(jnp.all(jnp.diff(x, axis=-1) <= 0), "mask must be a prefix mask (the first n symbols).")
        else:
            checkify.check(jnp.all(jnp.isfinite(x)), f"{name} contains NaN or inf; pass finite values.")


def _compile(fn, checks: str, output: str):
    """``fn`` jitted; under ``checkify`` its value checks and a finite-output check compile in."""
    if checks == "host":
        return jax.jit(fn)

    def checked(*args):
        out = fn(*args)
        first = out[0] if isinstance(out, tuple) else out
        checkify.check(jnp.all(jnp.isfinite(first)), f"the {output} are not finite: the weights may be damaged; "
                       "export the system again.")
        return out

    jitted = jax.jit(checkify.checkify(checked, errors=checkify.user_checks))

    def run(*args):
        err, out = jitted(*args)
        err.throw()
        return out

    return run


class Transmission(NamedTuple):
    """What leaves the transmitter: ``symbols`` (B, 2K) real (the K complex symbols' real parts,
    then their imaginary parts) and ``mask`` (B, K), 1 for each symbol actually sent."""

    symbols: jax.Array
    mask: jax.Array


class _Half:
    def __init__(self, directory: epath.PathLike, half: str, checks: str = "host"):
        if checks not in CHECKS:
            raise ValueError(f"checks must be one of {CHECKS}, got {checks!r}.")
        self.checks = checks
        self.directory = files.absolute(directory)
        self.info = read_spec(self.directory)
        self.spec = SystemSpec.from_dict(self.info["system"])
        self.model = self.spec.build()
        self.variables = _restore(self.directory, half, self.info)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    @property
    def num_classes(self) -> int:
        return int(self.spec.system_kwargs["num_classes"])

    def num_params(self) -> int:
        return _count(self.variables["params"])


class Transmitter(_Half):
    """The device side of an export: ``transmit(images, snr_db, channel, num_symbols)``.

    ``checks``: ``"host"`` (default: value checks in NumPy before the call) or ``"checkify"``
    (inside the compiled function, plus a finite-output check)."""

    def __init__(self, directory: str, checks: str = "host"):
        super().__init__(directory, "transmitter", checks)
        model, kind, in_jit = self.model, self.spec.kind, checks == "checkify"

        def transmit(variables, images, snr_db, channel_type, num_symbols):
            if in_jit:
                _in_jit_checks({"images": images, "snr_db": snr_db})
            if kind == "rkdsc":
                return model.apply(variables, images, snr_db, channel_type, num_symbols, method="transmit")
            x, _, _ = model.apply(variables, images, snr_db, method="encode")
            return x, jnp.ones((x.shape[0], x.shape[-1] // 2), x.dtype)

        self._transmit = _compile(transmit, checks, "transmitted symbols")

    def _images(self, images) -> jax.Array:
        """(B, H, W, C) float32 in [0, 1]: uint8 pixels are divided by 255; floats must already
        be in [0, 1] (a float 0..255 image is refused, not guessed)."""
        shape = f"(B, {', '.join(map(str, self.spec.input_shape))})"
        fix = f"pass a batch {shape} of uint8 pixels or floats in [0, 1]."
        images = _numeric("images", images, fix)
        if tuple(images.shape) == self.spec.input_shape:
            raise ValueError(f"This transmitter takes images of shape {shape}, got one image {tuple(images.shape)}: "
                             "add a batch axis (images[None]).")
        if images.ndim != 1 + len(self.spec.input_shape) or tuple(images.shape[1:]) != self.spec.input_shape:
            raise ValueError(f"This transmitter takes images of shape {shape}, got {tuple(images.shape)}; resize "
                             "them as the training data was (see spec.json).")
        if images.shape[0] == 0:
            raise ValueError(f"images is an empty batch {tuple(images.shape)}; {fix}")
        if images.dtype == np.uint8:
            return jnp.asarray(images, jnp.float32) / 255.0
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"Images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}; convert "
                             "them (uint8 pixels are divided by 255 for you).")
        if self.checks == "host":
            _check_finite("images", images, "pass finite pixel values in [0, 1].")
            low, high = float(np.min(_host(images))), float(np.max(_host(images)))
            if high > 1.0:
                raise ValueError(f"images must be in [0, 1] but reach {high:g}: divide 0..255 pixels by 255 (or pass "
                                 "them as uint8, which is divided for you).")
            if low < 0.0:
                raise ValueError(f"images must be in [0, 1] but go down to {low:g}: pass raw pixels, not normalised "
                                 "ones (the transmitter normalises with the training mean and std itself).")
        return jnp.asarray(images, jnp.float32)

    def transmit(self, images, snr_db, channel: str = "awgn", num_symbols: int | None = None) -> Transmission:
        """Encodes a batch (B, H, W, C) — uint8, or float in [0, 1] — for a link at ``snr_db`` (scalar
        or (B,)) of type ``channel``; RKD-SC systems send the first ``num_symbols`` symbols only."""
        images = self._images(images)
        batch = images.shape[0]
        snr = _check_snr(snr_db, batch, values=self.checks == "host")
        channel_type = jnp.full((batch,), _channel_id(channel), jnp.int32)
        if num_symbols is not None:
            if self.spec.kind != "rkdsc" and num_symbols != self.spec.max_symbols:
                raise ValueError(f"This {self.spec.kind} system always sends {self.spec.max_symbols} symbols; "
                                 f"num_symbols={num_symbols} needs a variable-length (rkdsc) system.")
            num_symbols = _check_count("num_symbols", num_symbols, 1, self.spec.max_symbols)
            num_symbols = jnp.full((batch,), num_symbols, jnp.int32)
        elif self.spec.kind == "rkdsc":
            num_symbols = jnp.full((batch,), self.spec.max_symbols, jnp.int32)
        symbols, mask = self._transmit(self.variables, images, snr, channel_type, num_symbols)
        return Transmission(symbols, mask)


class Receiver(_Half):
    """The edge side of an export: ``receive(symbols, mask, snr_db, channel)`` → logits.

    ``checks`` as for :class:`Transmitter`."""

    def __init__(self, directory: str, checks: str = "host"):
        super().__init__(directory, "receiver", checks)
        model, kind, in_jit = self.model, self.spec.kind, checks == "checkify"

        def receive(variables, received, mask, snr_db, channel_type):
            if in_jit:
                _in_jit_checks({"received symbols": received, "mask": mask, "snr_db": snr_db})
            if kind == "rkdsc":
                # Unsent symbols carry nothing: zero them as in training, whatever the radio put there.
                received = received * jnp.concatenate([mask, mask], axis=-1)
                logits, _ = model.apply(variables, received, mask, snr_db, channel_type, method="receive")
                return logits
            return model.apply(variables, received, method="decode")

        self._receive = _compile(receive, checks, "logits")

    def receive(self, received, mask=None, snr_db=None, channel: str = "awgn") -> jax.Array:
        """Logits (B, classes) from received symbols (B, 2K). RKD-SC receivers also need the
        mask of sent symbols and the link's SNR and type (its decoder is conditioned on them)."""
        host = self.checks == "host"
        received = _check_symbols("received symbols", received, 2 * self.spec.max_symbols, host)
        batch = received.shape[0]
        _channel_id(channel)
        if self.spec.kind != "rkdsc":
            if mask is not None:
                mask = _check_mask(mask, batch, self.spec.max_symbols, host, prefix=True)
                if host and not bool(np.all(_host(mask) == 1)):
                    raise ValueError(f"This {self.spec.kind} system always sends all {self.spec.max_symbols} "
                                     "symbols; its mask must be all ones (pass the transmitter's mask or None).")
            if snr_db is not None:
                _check_snr(snr_db, batch, values=host)
            return self._receive(self.variables, received, None, None, None)
        if snr_db is None:
            raise ValueError("An RKD-SC receiver is conditioned on the link: pass snr_db (and channel).")
        if mask is None:
            mask = jnp.ones((batch, self.spec.max_symbols), jnp.float32)
        mask = _check_mask(mask, batch, self.spec.max_symbols, host, prefix=True)
        channel_type = jnp.full((batch,), _channel_id(channel), jnp.int32)
        return self._receive(self.variables, received, mask, _check_snr(snr_db, batch, values=host), channel_type)

    def predict(self, received, mask=None, snr_db=None, channel: str = "awgn") -> jax.Array:
        """Class indices (B,)."""
        return jnp.argmax(self.receive(received, mask, snr_db, channel), axis=-1)


def load_transmitter(directory: str, checks: str = "host") -> Transmitter:
    return Transmitter(directory, checks)


def load_receiver(directory: str, checks: str = "host") -> Receiver:
    return Receiver(directory, checks)


@functools.partial(jax.jit, static_argnames=("channel", "csi", "equalizer"))
def _simulate(key, symbols, mask, snr_db, channel, csi, equalizer):
    return channels_lib.transmit(key, symbols, snr_db, kind=channel, csi=csi, equalizer=equalizer, mask=mask)


def _check_key(key) -> None:
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,)
    if not (typed and key.shape == ()) and not raw:
        raise ValueError(f"key must be one PRNG key (jax.random.key(seed)), got "
                         f"{type(key).__name__} {getattr(key, 'shape', '')}; split a batch of keys first.")


def over_channel(key: jax.Array, sent: Transmission, snr_db, channel: str = "awgn", *, csi: str = "perfect",
                 equalizer: str = "mmse") -> jax.Array:
    """The simulated link (:func:`rkdsc_jax.channels.transmit`): what the receiver gets for ``sent``."""
    if not isinstance(sent, tuple) or len(sent) != 2:
        raise TypeError(f"sent must be the Transmission that transmit returned (symbols, mask), got "
                        f"{type(sent).__name__}.")
    _check_key(key)
    _channel_id(channel)
    _check_choice("csi", csi, channels_lib.CSI_MODES)
    _check_choice("equalizer", equalizer, channels_lib.EQUALIZERS)
    symbols = _numeric("sent.symbols", sent.symbols, "pass the transmitter's (B, 2K) symbols.")
    if symbols.ndim != 2 or symbols.shape[1] % 2 or symbols.shape[0] == 0:
        raise ValueError(f"sent.symbols must have shape (B, 2K), got {tuple(symbols.shape)}; pass what transmit "
                         "returned.")
    batch, k = symbols.shape[0], symbols.shape[1] // 2
    _check_finite("sent.symbols", symbols, "the transmitter produced non-finite symbols: check its inputs.")
    mask = _check_mask(sent.mask, batch, k, True, prefix=False)
    snr = _check_snr(snr_db, batch)
    return _simulate(key, jnp.asarray(symbols, jnp.float32), mask, snr, channel, csi, equalizer)


def accuracy_vs_snr(transmitter: Transmitter, receiver: Receiver, images, labels, snrs_db: Sequence[float],
                    channel: str = "awgn", *, seed: int = 0, batch_size: int = 500) -> dict[float, float]:
    """Accuracy of the deployed pair over the simulated link at each SNR."""
    if not isinstance(transmitter, Transmitter) or not isinstance(receiver, Receiver):
        raise TypeError("accuracy_vs_snr takes a deploy.Transmitter and a deploy.Receiver (load_transmitter / "
                        f"load_receiver), got {type(transmitter).__name__} and {type(receiver).__name__}.")
    if transmitter.spec != receiver.spec:
        raise ValueError(f"The transmitter ({transmitter.directory}) and receiver ({receiver.directory}) come from "
                         "different systems; load both halves of one export.")
    _channel_id(channel)
    batch_size = _check_count("batch_size", batch_size)
    _check_count("seed", seed, 0)
    images = transmitter._images(images)  # Checked once, up front, not after some SNRs ran.
    labels = _numeric("labels", labels, "pass class indices (B,).")
    if labels.ndim != 1:
        hint = " (one-hot? pass labels.argmax(-1))" if labels.ndim == 2 else ""
        raise ValueError(f"labels must be class indices of shape (B,), got {tuple(labels.shape)}{hint}.")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels; pass one label per image.")
    labels = _host(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
    classes = receiver.num_classes
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels must be in [0, {classes}) for this {classes}-class system, got {labels[i]} at "
                         f"index {i}; are they from another dataset?")
    if isinstance(snrs_db, str):
        raise ValueError(f"snrs_db must be numbers in dB, got the string {snrs_db!r}.")
    snrs = np.atleast_1d(_host(_numeric("snrs_db", snrs_db, "pass a list of SNRs in dB."))).astype(np.float64)
    if snrs.ndim != 1 or snrs.size == 0:
        raise ValueError(f"snrs_db must be a non-empty list of SNRs in dB, got shape {snrs.shape}.")
    _check_finite("snrs_db", snrs, "pass finite SNRs in dB.")
    if len(set(snrs.tolist())) != snrs.size:
        raise ValueError(f"snrs_db lists an SNR twice ({snrs.tolist()}); the result has one entry per SNR.")
    result = {}
    for i, snr in enumerate(snrs.tolist()):
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

