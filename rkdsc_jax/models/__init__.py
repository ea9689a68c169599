"""Models: teachers, students, baselines and channel codecs (pure linen modules)."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from rkdsc_jax.models.cnn import SmallCNN, max_pool_2x2
from rkdsc_jax.models.codecs import (
    CATDecoder,
    CATEncoder,
    ChannelAdaptiveModule,
    GaussianEncoderHead,
    symbol_mask,
)
from rkdsc_jax.models.convert import load_efficientnet_lite0
from rkdsc_jax.models.efficientnet import (
    EFF_TOSC,
    EFFICIENTNET_SMALL_INPUT,
    EfficientNetB,
    EfficientNetEncoder,
    EfficientNetLite,
    efficientnet_lite,
    efficientnet_preprocess,
)
from rkdsc_jax.models.hf_vision import (
    CLIPImageEncoder,
    CLIPModel,
    ViTClassifier,
    load_clip,
    load_clip_vision,
    load_vit,
)
from rkdsc_jax.models.resnet import RESNET_SMALL_INPUT, ResNetClassifier, ResNetEncoder
from rkdsc_jax.models.tinyvit import TINYVIT_SMALL_INPUT, TinyViTClassifier, TinyViTEncoder

_CLASSIFIERS = {
    "small_cnn": SmallCNN,
    "tinyvit": TinyViTClassifier,
    "resnet": ResNetClassifier,
    "efficientnet_lite": EfficientNetLite,
    "efficientnet_b": EfficientNetB,  # e.g. variant="b3", decoder_hidden=512 (Eff-TOSC), image_size=None
}


def get_classifier(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A classifier by registry name, e.g. ``get_classifier("small_cnn", 10, features=(32, 64))``."""
    if name not in _CLASSIFIERS:
        raise ValueError(f"Unknown model {name!r}; available: {sorted(_CLASSIFIERS)}.")
    return _CLASSIFIERS[name](num_classes=num_classes, **kwargs)


def classifier_from_config(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items() if k != "name"}
    return get_classifier(model_config["name"], num_classes, **kwargs)
