"""Wireless channel simulator (SPEC §1): power normalisation, AWGN / fading, equalisation.

Every function here is pure: randomness comes only from the explicit ``key``, so the
channel works under ``jit``, ``vmap`` and ``grad``. Noise is reparameterised
(n = σ·ε with ε ~ CN(0, 1) drawn from the key), so gradients flow through the channel to
the encoder (and to ``snr_db``).

Conventions (chosen once, used everywhere):

- Real ↔ complex: a real vector of length 2k is read as k complex symbols, the **first
  half is the real part and the second half the imaginary part** (``real_to_complex``).
  Contiguous halves keep the mapping a pair of slices (no strided gathers) and make a
  trailing-symbol mask a plain prefix mask on each half.
- Power: the transmitter scales each sample to average complex-symbol power P = 1, so
  SNR = P/σ² = 1/σ², i.e. σ² = 10^(−s/10) with s in dB.
- CN(0, σ²) is circularly symmetric: real and imaginary parts each have variance σ²/2.
- Randomness: ``simulate`` splits its key once into (fading key, noise key), whatever the
  channel kind. With the same key, AWGN and Rayleigh therefore see the *same* noise draw
  (common random numbers), which makes channel comparisons less noisy.
- dtypes: float32 / complex64 by default; complex128 stays complex128 (with x64 on).
  There is no complex bfloat16, so ``transmit`` computes in float32 and casts back.

Input checks raise ``ValueError`` naming the problem and the fix. Shape and dtype checks
always run (shapes are static under jit); value checks (NaN/inf in x, z or SNR, masks that
are not 0/1 or send nothing, negative K-factor, zero h under ZF) run only on concrete
inputs and are skipped for tracers. ``checked(fn)`` runs ``fn`` jitted with the value
checks compiled in (``jax.experimental.checkify``), for inputs that only exist inside jit.

``ChannelSpec`` is the one receiver description (CSI, equaliser, Rician K) that training
and evaluation both send through, so a network is evaluated on the channel it was trained on.
"""

import contextvars
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

CHANNEL_KINDS = ("awgn", "rayleigh", "rayleigh_fast", "rician")
CSI_MODES = ("perfect", "none")
EQUALIZERS = ("zf", "mmse")


# ----------------------------------------------------------------------------- checks


def _concrete(value):
    """The value as a NumPy array, or None for a tracer (value checks are skipped)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; use one of {valid}.")


def _check_finite(name, value, hint="pass finite values in dB (e.g. 300 dB for an almost noiseless link)"):
    arr = _concrete(value)
    if arr is None:
        return
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == jnp.bfloat16):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got a complex value.")
    if not np.all(np.isfinite(arr.astype(np.float64))):
        raise ValueError(
            f"{name} contains NaN or ±inf ({arr.tolist() if arr.size <= 8 else 'array'}); {hint}.")


def _check_rician_k(rician_k):
    _check_finite("rician_k", rician_k, "pass a finite K-factor >= 0 (linear, not dB)")
    arr = _concrete(rician_k)
    if arr is not None and np.any(arr < 0):
        raise ValueError(
            f"rician_k must be >= 0 (0 is Rayleigh; large values approach AWGN), "
            f"got {arr.tolist()}.")


def _check_complex(name, z, hint):
    if not jnp.iscomplexobj(z):
        raise ValueError(f"{name} must be complex, got dtype {z.dtype}; {hint}.")
    if z.ndim < 1:
        raise ValueError(f"{name} needs a last axis of symbols, got a scalar.")


def _check_values(name, x, hint):
    """NaN/inf anywhere in a concrete real or complex array (skipped for tracers)."""
    arr = _concrete(x)
    if arr is None or arr.size == 0:
        return
    if not np.iscomplexobj(arr):
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains NaN or ±inf ({int(bad.sum())} of {arr.size} values, first at index "
            f"{first}); {hint}.")


def _check_mask_values(mask, allow_empty=False):
    """A concrete mask holds only 0/1 and (unless ``allow_empty``) sends a symbol per row."""
    arr = _concrete(mask)
    if arr is None or arr.size == 0:
        return
    arr = arr.astype(np.float32)
    odd = arr[(arr != 0) & (arr != 1)]
    if odd.size:
        raise ValueError(
            f"mask must hold only 0 (not sent) and 1 (sent), got {np.unique(odd)[:5].tolist()}; "
            f"build it as (jnp.arange(k) < num_symbols).astype(jnp.float32).")
    if allow_empty:
        return
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)
    empty = np.flatnonzero(rows.sum(-1) == 0)
    if empty.size:
        raise ValueError(
            f"mask row {int(empty[0])} sends no symbol (all zeros); every sample needs at least "
            f"one active symbol, since its power is normalised over them.")


def _check_key(key):
    """One PRNG key: a typed key of shape () or a raw uint32 key of shape (2,)."""
    key = key if isinstance(key, jax.Array) else np.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        ok = key.ndim == 0
    else:
        ok = key.dtype == np.uint32 and key.shape == (2,)
    if not ok:
        raise ValueError(
            f"key must be one PRNG key, jax.random.key(seed) or jax.random.PRNGKey(seed), got "
            f"dtype {key.dtype} shape {key.shape}; split a batch of keys with vmap, not one call.")


def _real_dtype(complex_dtype):
    return np.finfo(complex_dtype).dtype  # complex64 -> float32, complex128 -> float64


def _align_snr(snr_db, batch_shape, dtype):
    """Broadcast ``snr_db`` to ``batch_shape + (1,)`` (one SNR per leading index).

    Axes are aligned from the *left*: ``snr_db`` of shape (B,) with z of shape (B, T, k)
    means one SNR per sample, never per token. NumPy's right alignment would silently
    mix the two when B == T.
    """
    _check_finite("snr_db", snr_db)
    snr = jnp.asarray(snr_db, dtype)
    extra = len(batch_shape) - snr.ndim
    if extra < 0 or any(a not in (1, b) for a, b in zip(snr.shape, batch_shape)):
        raise ValueError(
            f"snr_db of shape {snr.shape} does not broadcast against the leading axes "
            f"{batch_shape} of the symbols (z.shape[:-1], axes aligned from the left); "
            f"pass a scalar or an array of shape {batch_shape} or a prefix of it "
            f"(e.g. {batch_shape[:1]} for one SNR per sample).")
    snr = snr.reshape(snr.shape + (1,) * extra)
    return jnp.broadcast_to(snr, batch_shape)[..., None]


# ---------------------------------------------------------------------------- helpers


def noise_variance(snr_db, power=1.0):
    """σ² = P · 10^(−s/10): the noise power that gives SNR ``snr_db`` at signal power P."""
    _check_finite("snr_db", snr_db)
    snr = jnp.asarray(snr_db)
    if not jnp.issubdtype(snr.dtype, jnp.floating):
        snr = snr.astype(jnp.float32)
    return power * 10.0 ** (-snr / 10.0)


def sample_snr_db(key, shape, low, high, dtype=jnp.float32):
    """SNR drawn uniformly in dB over [low, high) (the training protocol of SPEC §1)."""
    for name, v in (("low", low), ("high", high)):
        _check_finite(name, v)
    lo, hi = _concrete(low), _concrete(high)
    if lo is not None and hi is not None and np.any(lo > hi):
        raise ValueError(f"sample_snr_db needs low <= high, got low={low}, high={high}.")
    return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)


def bandwidth_ratio(num_symbols, image_shape):
    """Channel uses per source dimension, k / (H·W·C); report it with every result."""
    dims = math.prod(image_shape)
    if num_symbols <= 0 or dims <= 0:
        raise ValueError(
            f"bandwidth_ratio needs num_symbols > 0 and a non-empty image_shape, got "
            f"num_symbols={num_symbols}, image_shape={tuple(image_shape)}.")
    return float(num_symbols) / dims


def real_to_complex(x):
    """(..., 2k) real -> (..., k) complex: first half real part, second half imaginary.

    bfloat16/float16 are upcast to float32 (there is no complex bfloat16).
    """
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        raise ValueError(f"real_to_complex expects a real array, got dtype {x.dtype}.")
    if x.ndim < 1 or x.shape[-1] % 2:
        raise ValueError(
            f"real_to_complex needs an even last axis (2k reals -> k symbols), got shape "
            f"{x.shape}; pad one zero to the last axis, or use transmit(), which pads.")
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    k = x.shape[-1] // 2
    return jax.lax.complex(x[..., :k], x[..., k:])


def complex_to_real(z):
    """(..., k) complex -> (..., 2k) real, the inverse of ``real_to_complex``."""
    z = jnp.asarray(z)
    _check_complex("complex_to_real input", z, "it inverts real_to_complex")
    return jnp.concatenate([z.real, z.imag], axis=-1)


def normalize_power(z, mask=None, power=1.0):
    """Per-sample power normalisation over the last axis: z <- sqrt(k·P) · z / ‖z‖₂.

    With ``mask`` (broadcastable to z.shape, 1 = transmitted, 0 = not), masked symbols are
    zeroed and k counts only the active ones, so the active symbols have mean power P.
    An all-zero sample stays zero (no NaN, finite gradient) since there is no direction
    to scale.
    """
    z = jnp.asarray(z)
    _check_complex("normalize_power input", z, "use real_to_complex first")
    _check_values("normalize_power input", z, "pass finite symbols")
    m = None
    if mask is not None:
        m = jnp.asarray(mask).astype(_real_dtype(z.dtype))
        try:
            ok = np.broadcast_shapes(m.shape, z.shape) == z.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask of shape {m.shape} does not broadcast to the symbols' shape {z.shape}; "
                f"use shape (k,) = ({z.shape[-1]},) or {z.shape}.")
        _check_mask_values(mask, allow_empty=True)  # Documented: an empty row stays 0.
    _check_finite("power", power, "pass a finite power > 0")
    if _concrete(power) is not None and np.any(_concrete(power) <= 0):
        raise ValueError(f"power must be > 0, got {power}.")
    return _normalize_power(z, m, power)


@jax.jit
def _normalize_power(z, mask, power):
    """Core of ``normalize_power`` (jitted: one compile per shape, not one per op)."""
    rdt = _real_dtype(z.dtype)
    if mask is None:
        k_active = jnp.asarray(z.shape[-1], rdt)
    else:
        z = z * mask
        k_active = jnp.sum(jnp.broadcast_to(mask, z.shape), axis=-1, keepdims=True)
    energy = jnp.sum(jnp.square(z.real) + jnp.square(z.imag), axis=-1, keepdims=True)
    nonzero = energy > 0
    # Double where: keeps the unused branch finite so gradients at 0 are 0, not NaN.
    scale = jnp.where(nonzero, jnp.sqrt(k_active * power / jnp.where(nonzero, energy, 1.0)), 0.0)
    return z * scale.astype(rdt)


# ---------------------------------------------------------------------------- channel


def fading(key, shape, kind="rayleigh", rician_k=1.0, dtype=jnp.complex64):
    """Fading coefficients h for symbols of shape ``shape`` = (..., k).

    Returns shape (..., 1) for block kinds (awgn: ones; rayleigh; rician: one h per
    leading index, constant over the k symbols) and (..., k) for ``rayleigh_fast``.
    Rayleigh: h ~ CN(0, 1). Rician: h = sqrt(κ/(κ+1)) + sqrt(1/(κ+1)) · CN(0, 1), so
    E|h|² = 1 for every κ and the average received SNR is the nominal one.
    """
    _check_choice("channel kind", kind, CHANNEL_KINDS)
    if kind == "rician":
        _check_rician_k(rician_k)
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError("fading needs a symbol shape (..., k) with at least one axis.")
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise ValueError(f"fading needs a shape of non-negative ints, got {shape}.")
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"fading needs a complex dtype (e.g. jnp.complex64), got {dtype}.")
    return _fading(key, shape, kind, rician_k, dtype)


def _fading(key, shape, kind, rician_k, dtype):
    h_shape = shape if kind == "rayleigh_fast" else shape[:-1] + (1,)
    if kind == "awgn":
        return jnp.ones(h_shape, dtype)
    g = jax.random.normal(key, h_shape, dtype)  # CN(0, 1): each part has variance 1/2
    if kind == "rician":
        kappa = jnp.asarray(rician_k, _real_dtype(dtype))
        g = jnp.sqrt(kappa / (kappa + 1)) + jnp.sqrt(1 / (kappa + 1)) * g
    return g


def equalize(y, h, noise_var, equalizer="zf"):
    """Receiver with perfect CSI, h and noise_var broadcast against y.

    ZF: y/h, unbiased but it amplifies noise in deep fades; under Rayleigh fading its
    output noise power σ²/|h|² has infinite mean (E[1/|h|²] diverges), so rare samples
    are huge. MMSE: conj(h)·y / (|h|² + σ²), biased towards 0 but bounded (at most
    |y|/(2σ)); the safer choice for training.
    """
    _check_choice("equalizer", equalizer, EQUALIZERS)
    y, h, noise_var = jnp.asarray(y), jnp.asarray(h), jnp.asarray(noise_var)
    try:
        np.broadcast_shapes(y.shape, h.shape, noise_var.shape)
    except ValueError:
        raise ValueError(
            f"equalize: y {y.shape}, h {h.shape} and noise_var {noise_var.shape} do not broadcast; "
            f"give h as (..., 1) per block or like y, noise_var as a scalar or (..., 1).") from None
    _check_finite("noise_var", noise_var, "pass the finite noise power sigma^2 >= 0")
    nv = _concrete(noise_var)
    if nv is not None and np.any(nv < 0):
        raise ValueError(f"noise_var must be >= 0 (it is sigma^2), got min {float(nv.min())}.")
    hv = _concrete(h)
    if equalizer == "zf" and hv is not None and np.any(hv == 0):
        raise ValueError("equalize: h is 0 for some symbols and ZF divides by h; use "
                         "equalizer='mmse', which is bounded.")
    return _equalize(y, h, noise_var, equalizer)


def _equalize(y, h, noise_var, equalizer):
    # Gain first, then one multiply: for block fading h is (..., 1), so the complex
    # division runs once per block instead of once per symbol.
    if equalizer == "zf":
        gain = 1 / h
    else:
        gain = jnp.conj(h) / (jnp.square(h.real) + jnp.square(h.imag) + noise_var)
    return y * gain


def _check_options(kind, csi, equalizer, rician_k):
    _check_choice("channel kind", kind, CHANNEL_KINDS)
    _check_choice("csi mode", csi, CSI_MODES)
    _check_choice("equalizer", equalizer, EQUALIZERS)
    if kind == "rician":
        _check_rician_k(rician_k)


# The public functions validate in Python, then call one jitted core: an eager call
# compiles a single program (XLA compiles per shape; threefry alone takes ~1 s on a
# small CPU) instead of one per primitive. Under an outer jit the core is inlined.
_STATIC = ("kind", "csi", "equalizer", "return_h", "checks")

# Set by ``checked`` while it traces: the cores then compile the value checks in. A static
# argument of the cores, so checked and unchecked programs are cached apart.
_CHECKIFY = contextvars.ContextVar("rkdsc_channels_checkify", default=False)


def _checkify_values(checks, **arrays):
    """In-jit twins of the host checks (only under ``checked``)."""
    if not checks:
        return
    for name, value in arrays.items():
        if value is None:
            continue
        if name == "mask":
            checkify.check(jnp.all((value == 0) | (value == 1)),
                           "mask must hold only 0 (not sent) and 1 (sent); build it as "
                           "(jnp.arange(k) < num_symbols).astype(jnp.float32).")
            checkify.check(jnp.all(jnp.sum(value, axis=-1) > 0),
                           "a mask row sends no symbol; every sample needs at least one.")
        else:
            checkify.check(jnp.all(jnp.isfinite(value)),
                           f"{name} contains NaN or ±inf inside jit; pass finite values.")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _simulate(key, z, snr_db, rician_k, kind, csi, equalizer, return_h, checks=False):
    """Core of ``simulate``; ``snr_db`` is already aligned to z.shape[:-1] + (1,)."""
    _checkify_values(checks, z=z, snr_db=snr_db)
    noise_var = noise_variance(snr_db)
    key_h, key_n = jax.random.split(key)
    h = _fading(key_h, z.shape, kind, rician_k, z.dtype)
    noise = jnp.sqrt(noise_var) * jax.random.normal(key_n, z.shape, z.dtype)
    y = z + noise if kind == "awgn" else h * z + noise  # skip the ×1 for AWGN
    if csi == "perfect" and not (kind == "awgn" and equalizer == "zf"):
        y = _equalize(y, h, noise_var, equalizer)
    y = y.astype(z.dtype)
    return (y, jnp.broadcast_to(h, z.shape)) if return_h else y  # h only on request: memory


def simulate(key, z, snr_db, kind="awgn", csi="perfect", equalizer="zf", rician_k=1.0,
             return_h=False):
    """Send complex symbols z (..., k) of unit average power through the channel.

    y = h·z + n, n ~ CN(0, σ²), σ² = 10^(−s/10). ``snr_db`` is a scalar or one value per
    leading index (axes aligned from the left, see ``_align_snr``). With ``csi="perfect"``
    the output is equalised (``equalize``); with ``csi="none"`` it is y as is.
    Returns an array like z, or ``(out, h)`` with h broadcast to z.shape if ``return_h``
    (e.g. to feed |h| to the receiver).
    """
    _check_options(kind, csi, equalizer, rician_k)
    _check_key(key)
    z = jnp.asarray(z)
    _check_complex("simulate's symbols z", z,
                   "use real_to_complex(x) to pair reals into symbols, or transmit(x) for "
                   "real feature tensors")
    _check_values("simulate's symbols z", z, "pass finite symbols")
    snr = _align_snr(snr_db, z.shape[:-1], _real_dtype(z.dtype))
    return _simulate(key, z, snr, rician_k, kind=kind, csi=csi, equalizer=equalizer,
                     return_h=return_h, checks=_CHECKIFY.get())


@functools.partial(jax.jit, static_argnames=_STATIC)
def _transmit(key, x, snr, rician_k, mask, kind, csi, equalizer, return_h, checks=False):
    """Core of ``transmit`` (inputs validated; ``snr`` is (B, 1), ``mask`` None or (B, k))."""
    _checkify_values(checks, x=x, mask=mask)
    batch, n = x.shape[0], math.prod(x.shape[1:])
    flat = x.reshape(batch, n).astype(jnp.promote_types(x.dtype, jnp.float32))
    if n % 2:
        flat = jnp.pad(flat, ((0, 0), (0, 1)))
    z = _normalize_power(real_to_complex(flat), mask, 1.0)
    out = _simulate(key, z, snr, rician_k, kind=kind, csi=csi, equalizer=equalizer,
                    return_h=return_h)
    out, h = out if return_h else (out, None)
    if mask is not None:
        out = out * mask  # not sent -> nothing received (also removes their noise)
    x_hat = complex_to_real(out)[:, :n].reshape(x.shape).astype(x.dtype)
    return (x_hat, h) if return_h else x_hat


def transmit(key, x, snr_db, kind="awgn", csi="perfect", equalizer="zf", rician_k=1.0,
             mask=None, return_h=False):
    """Send real features x (B, ...) over the channel and return them with x's shape/dtype.

    Per sample: flatten to n reals (one zero padded if n is odd, stripped on return),
    pair into k = ceil(n/2) symbols (``real_to_complex``), normalise to unit power,
    ``simulate``, and map back. The receiver gets the *power-normalised* features: the
    original scale is lost, as in a real transmitter with a power constraint.
    Computation runs in float32 (float64 for float64 input); the result is cast back to
    x's dtype, so bfloat16 in gives bfloat16 out.

    ``snr_db``: scalar or (B,). ``mask``: (k,) or (B, k), 1 = transmitted, 0 = not; masked
    symbols are not sent, do not count in the power normalisation, and come back as
    zeros (both of their reals: positions j and k + j of the flattened, padded sample).
    ``return_h``: also return the fading coefficients, shape (B, k).
    """
    _check_options(kind, csi, equalizer, rician_k)
    _check_key(key)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"transmit expects a batch (B, ...) of feature tensors, got shape {x.shape}; "
            f"add a batch axis (x[None]).")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"transmit expects real floating features, got dtype {x.dtype}; "
            f"use simulate() for complex symbols, or cast integers to float.")
    batch, n = x.shape[0], math.prod(x.shape[1:])
    if n == 0:
        raise ValueError(f"transmit got empty features per sample, shape {x.shape}.")
    _check_values("transmit's features x", x,
                  "pass finite features (check the encoder's output and the input images)")
    k = (n + 1) // 2
    rdt = jnp.promote_types(x.dtype, jnp.float32)
    snr = _align_snr(snr_db, (batch,), rdt)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape not in ((k,), (1, k), (batch, k)):
            raise ValueError(
                f"mask of shape {mask.shape} does not match the {k} symbols per sample "
                f"(k = ceil({n}/2)); use shape ({k},) or ({batch}, {k}).")
        _check_mask_values(mask)
        mask = jnp.broadcast_to(mask.astype(rdt), (batch, k))
    return _transmit(key, x, snr, rician_k, mask, kind=kind, csi=csi,
                     equalizer=equalizer, return_h=return_h, checks=_CHECKIFY.get())


def checked(fn):
    """``fn`` jitted with the channel's value checks compiled in (``checkify``).

    Inside ``jax.jit`` the arrays are tracers, so the host checks of this module cannot see
    NaN in x or a non-binary mask; under ``checked`` every ``transmit``/``simulate`` that
    ``fn`` calls adds them as ``checkify.check``s, and a failing one raises
    ``checkify.JaxRuntimeError`` naming the problem. Pass the plain (not yet jitted)
    function; it costs one extra reduction per check, so it is opt-in (debugging).
    """
    jitted = jax.jit(checkify.checkify(fn))

    @functools.wraps(fn)
    def run(*args, **kwargs):
        token = _CHECKIFY.set(True)  # Seen while ``jitted`` traces (first call per shape).
        try:
            err, out = jitted(*args, **kwargs)
        finally:
            _CHECKIFY.reset(token)
        err.throw()
        return out

    return run


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """The receiver side of the link, one value for training and evaluation alike.

    Hashable, so it can be a static ``jit`` argument. The channel kind and SNR vary per
    example (the training mix) or per curve point (evaluation); what the receiver does
    with them (CSI, equaliser, Rician K) must not, or a network is evaluated on inputs it
    never saw in training: under MMSE an AWGN sample arrives scaled by 1/(1 + sigma^2),
    x0.5 at 0 dB, which a ZF-trained network has never seen.
    """

    csi: str = "perfect"
    equalizer: str = "mmse"
    rician_k: float = 1.0

    def __post_init__(self):
        _check_choice("csi mode", self.csi, CSI_MODES)
        _check_choice("equalizer", self.equalizer, EQUALIZERS)
        _check_rician_k(self.rician_k)
        object.__setattr__(self, "rician_k", float(self.rician_k))

    @classmethod
    def from_config(cls, config) -> "ChannelSpec":
        """From a config's ``channel`` block (``csi``, ``equalizer``, optional ``rician_k``)."""
        get = config.get if hasattr(config, "get") else lambda k, d: getattr(config, k, d)
        return cls(csi=config.csi, equalizer=config.equalizer, rician_k=get("rician_k", 1.0))

    def transmit(self, key, x, snr_db, kind, mask=None, return_h=False):
        """``transmit`` with this receiver; ``kind="none"`` returns x untouched (no channel)."""
        if kind == "none":
            return (x, None) if return_h else x
        return transmit(key, x, snr_db, kind=kind, csi=self.csi, equalizer=self.equalizer,
                        rician_k=self.rician_k, mask=mask, return_h=return_h)

    def mixed(self, key, x, snr_db, use_rayleigh, mask=None):
        """Per example AWGN or Rayleigh block fading (``use_rayleigh`` (B,) bool), the
        training mix: row b equals ``self.transmit(k, x, snr_db, kind)[b]`` with
        ``k = split(key)[0]`` for AWGN rows and ``split(key)[1]`` for Rayleigh rows."""
        use_rayleigh = jnp.asarray(use_rayleigh)
        batch = jnp.shape(x)[0] if jnp.ndim(x) else None
        if use_rayleigh.shape != (batch,) or use_rayleigh.dtype != jnp.bool_:
            raise ValueError(
                f"use_rayleigh must be a bool array of shape (B,) = ({batch},), one choice per "
                f"example, got {use_rayleigh.dtype} {use_rayleigh.shape}.")
        awgn_key, rayleigh_key = jax.random.split(key)
        awgn = self.transmit(awgn_key, x, snr_db, "awgn", mask=mask)
        rayleigh = self.transmit(rayleigh_key, x, snr_db, "rayleigh", mask=mask)
        return jnp.where(use_rayleigh.reshape(-1, *([1] * (jnp.ndim(x) - 1))), rayleigh, awgn)
