"""HuggingFace CLIP and ViT towers as flax.linen modules, loaded from ``config.json`` + ``*.safetensors``.

transformers 5.x ships no Flax models, so the towers are rebuilt here and their weights read
with ``safetensors.numpy`` (torch is not needed at load time).  Numerics follow transformers
5.23 (``models/clip/modeling_clip.py``, ``models/vit/modeling_vit.py``) in eval mode.

Conventions:

* Images are NHWC arrays (``(batch, height, width, channels)``), already normalised the way the
  HF image processor would; torch's models take NCHW.
* The modules are deterministic (no dropout): they serve as frozen teachers and feature
  extractors.  ``dtype`` is the computation dtype; LayerNorm statistics, softmax and the CLIP
  embedding normalisation stay in float32.
* Loaders return ``(module, variables, config)`` with ``variables = {"params": ...}``, ready for
  ``module.apply(variables, ...)``.  Every checkpoint tensor must map onto a parameter and every
  parameter must come from the checkpoint, with the right shape; anything else is a
  ``ValueError`` naming the keys.  Only known non-parameter buffers (``position_ids``) are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Dtype = Any
Array = jax.Array

# --------------------------------------------------------------------------------------------
# Activations (names as in transformers' ACT2FN).


def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is the exact erf form.
    "quick_gelu": quick_gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


# --------------------------------------------------------------------------------------------
# Configs parsed from HF config.json dicts.  Defaults are transformers 5.23's, because
# config.json files written by older versions omit fields that equal the defaults.


def _known_fields(cls, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _square_size(value: Any, name: str) -> int:
    """CLIP's embeddings compute ``(image_size // patch_size) ** 2``: only square sizes work."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"CLIP vision configs need a square {name}, got {value!r}.")
        value = value[0]
    return int(value)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"Expected an int or an (height, width) pair, got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _check_heads(hidden_size: int, num_heads: int) -> None:
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}.")


def _merged_clip_sub_config(d: Mapping[str, Any], which: str, defaults_cls) -> dict[str, Any]:
    """``d["{which}_config"]`` as CLIPConfig.__post_init__ builds it.

    Old CLIP config.json files also carry ``{which}_config_dict``; transformers fills it with
    defaults and lets it override ``{which}_config``, so the same is done here.
    """
    merged = dict(d.get(f"{which}_config") or {})
    legacy = d.get(f"{which}_config_dict")
    if legacy is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(defaults_cls)}
        merged.update({**defaults, **_known_fields(defaults_cls, legacy)})
    return merged


def _is_full_clip_config(d: Mapping[str, Any]) -> bool:
    return d.get("model_type") == "clip" or "vision_config" in d or "text_config" in d


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """HF ``CLIPVisionConfig`` (model_type "clip_vision_model"), the fields the tower uses."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    def __post_init__(self):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _activation(self.hidden_act)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPVisionConfig":
        """From a CLIPVisionModel(WithProjection) config, or the vision part of a CLIPModel config.

        A CLIPModel's visual projection has the top-level ``projection_dim``, which wins over the
        nested one (older configs disagree).
        """
        if _is_full_clip_config(d):
            fields = _merged_clip_sub_config(d, "vision", cls)
            fields["projection_dim"] = d.get("projection_dim", cls.projection_dim)
        else:
            fields = dict(d)
        fields = _known_fields(cls, fields)
        for name in ("image_size", "patch_size"):
            if name in fields:
                fields[name] = _square_size(fields[name], name)
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """HF ``CLIPTextConfig`` (model_type "clip_text_model"), the fields the tower uses."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _activation(self.hidden_act)
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)) and len(eos) == 1:
            object.__setattr__(self, "eos_token_id", int(eos[0]))
        elif not isinstance(eos, int):
            # transformers' pooling compares input_ids with a single id; a list or None breaks it too.
            raise ValueError(f"CLIP text pooling needs a single integer eos_token_id, got {eos!r}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPTextConfig":
        fields = _merged_clip_sub_config(d, "text", cls) if _is_full_clip_config(d) else dict(d)
        return cls(**_known_fields(cls, fields))


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """HF ``CLIPConfig`` (model_type "clip"): nested vision/text configs plus the shared projection."""

    vision: CLIPVisionConfig = CLIPVisionConfig()
    text: CLIPTextConfig = CLIPTextConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
        if not _is_full_clip_config(d):
            raise ValueError(
                f"Not a full CLIPModel config (model_type {d.get('model_type')!r}); "
                "use load_clip_vision for a CLIPVisionModel checkpoint."
            )
        return cls(
            vision=CLIPVisionConfig.from_dict(d),
            text=CLIPTextConfig.from_dict(d),
            projection_dim=int(d.get("projection_dim", cls.projection_dim)),
            logit_scale_init_value=float(d.get("logit_scale_init_value", cls.logit_scale_init_value)),
        )


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """HF ``ViTConfig`` (model_type "vit"); ``num_labels`` follows ``id2label`` as in transformers."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: tuple[int, int] = (224, 224)  # (height, width); HF accepts an int or a pair.
    patch_size: tuple[int, int] = (16, 16)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    pooler_output_size: int | None = None  # None: hidden_size, as in transformers.
    pooler_act: str = "tanh"
    # Excluded from hashing so that modules holding the config stay hashable.
    id2label: Mapping[int, str] = dataclasses.field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"}, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        object.__setattr__(self, "id2label", {int(k): str(v) for k, v in dict(self.id2label).items()})
        _check_heads(self.hidden_size, self.num_attention_heads)
        _activation(self.hidden_act)
        _activation(self.pooler_act)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ViTConfig":
        fields = _known_fields(cls, d)
        if d.get("id2label") is None:
            # transformers: no id2label means num_labels (default 2) generic labels.
            num_labels = int(d.get("num_labels", 2))
            fields["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
        return cls(**fields)


# --------------------------------------------------------------------------------------------
# Building blocks.


def _torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights reproducing ``F.interpolate(mode="bicubic", align_corners=False)`` on one axis.

    Keys' cubic with A = -0.75, source index ``(i + 0.5) * in / out - 0.5``, border taps clamped;
    equal sizes give the identity.  Used for ``interpolate_pos_encoding``.
    """
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        source = scale * (i + 0.5) - 0.5
        base = int(np.floor(source))
        t = source - base
        for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            weights[i, min(max(base + offset, 0), in_size - 1)] += w
    return weights


def _resize_position_grid(grid: Array, out_hw: tuple[int, int]) -> Array:
    """Bicubically resize a (h, w, dim) grid of position embeddings, as transformers does."""
    rows = jnp.asarray(_torch_bicubic_matrix(grid.shape[0], out_hw[0]), grid.dtype)
    cols = jnp.asarray(_torch_bicubic_matrix(grid.shape[1], out_hw[1]), grid.dtype)
    return jnp.einsum("ah,bw,hwd->abd", rows, cols, grid)


def _layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch: the fast E[x²]-E[x]² loses precision with ViT's eps of 1e-12.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (HF's layout)."""

    num_heads: int
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def project(name):
            dense = nn.Dense(width, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
            # Heads first: batched matmuls with leading batch dims compile faster on XLA:CPU.
            return dense(x).reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * head_dim**-0.5
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="out_proj")(out)


class MLP(nn.Module):
    """fc1 → activation → fc2."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        x = _activation(self.hidden_act)(dense(self.intermediate_size, "fc1")(x))
        return dense(self.hidden_size, "fc2")(x)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block; CLIP and ViT share it (only the checkpoint names differ)."""

    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        ln = lambda name: _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)  # noqa: E731
        attention = SelfAttention(self.num_heads, self.qkv_bias, self.dtype, self.param_dtype, name="self_attn")
        x = x + attention(ln("layer_norm1")(x), mask)
        mlp = MLP(x.shape[-1], self.intermediate_size, self.hidden_act, self.dtype, self.param_dtype, name="mlp")
        return x + mlp(ln("layer_norm2")(x))


def _run_encoder(module: nn.Module, x: Array, mask: Array | None, layer_kwargs: dict, num_layers: int):
    """The layer stack; also returns the input and every layer's output, as HF's hidden_states."""
    hidden_states = [x]
    for i in range(num_layers):
        layer = EncoderLayer(**layer_kwargs, dtype=module.dtype, param_dtype=module.param_dtype, name=f"layers_{i}")
        x = layer(x, mask)
        hidden_states.append(x)
    return x, tuple(hidden_states)


def _check_image_size(shape: tuple[int, ...], expected_hw: tuple[int, int], channels: int, interpolate: bool):
    if len(shape) != 4 or shape[-1] != channels:
        raise ValueError(f"Expected NHWC images with {channels} channels, got shape {tuple(shape)}.")
    if not interpolate and tuple(shape[1:3]) != tuple(expected_hw):
        raise ValueError(
            f"Input image size {shape[1]}x{shape[2]} doesn't match the model's {expected_hw[0]}x{expected_hw[1]}; "
            "pass interpolate_pos_encoding=True to resize the position embeddings."
        )


# --------------------------------------------------------------------------------------------
# CLIP.


class CLIPVisionTower(nn.Module):
    """HF ``CLIPVisionTransformer``: patch conv (no bias) + class token + positions, pre-LN, encoder.

    ``pooler_output`` is ``post_layernorm`` of the CLS token.  Takes NHWC images.
    """

    config: CLIPVisionConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, pixel_values: Array, *, output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
    ):
        cfg = self.config
        _check_image_size(pixel_values.shape, (cfg.image_size,) * 2, cfg.num_channels, interpolate_pos_encoding)
        patch = (cfg.patch_size, cfg.patch_size)
        patches = nn.Conv(
            cfg.hidden_size, patch, strides=patch, padding="VALID", use_bias=False,
            dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding",
        )(pixel_values.astype(self.dtype))
        batch, grid_h, grid_w, _ = patches.shape
        patches = patches.reshape(batch, grid_h * grid_w, cfg.hidden_size)

        init = nn.initializers.normal(0.02)
        class_embedding = self.param("class_embedding", init, (cfg.hidden_size,), self.param_dtype)
        positions = self.param("position_embedding", init, (cfg.grid_size**2 + 1, cfg.hidden_size), self.param_dtype)
        if interpolate_pos_encoding:
            grid = positions[1:].reshape(cfg.grid_size, cfg.grid_size, cfg.hidden_size)
            resized = _resize_position_grid(grid, (grid_h, grid_w)).reshape(grid_h * grid_w, cfg.hidden_size)
            positions = jnp.concatenate([positions[:1], resized], axis=0)

        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1) + positions.astype(self.dtype)
        x = _layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, "pre_layrnorm")(x)
        layer_kwargs = dict(
            num_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps,
        )
        x, hidden_states = _run_encoder(self, x, None, layer_kwargs, cfg.num_hidden_layers)
        pooled = _layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, "post_layernorm")(x[:, 0])
        return {
            "last_hidden_state": x,
            "pooler_output": pooled,
            "hidden_states": hidden_states if output_hidden_states else None,
        }


class CLIPTextTower(nn.Module):
    """HF ``CLIPTextTransformer``: token + position embeddings, causal encoder, final LayerNorm.

    ``pooler_output`` is taken at the end-of-text token exactly as transformers 5.23 does: with
    the legacy ``eos_token_id == 2`` at the argmax of ``input_ids`` (the EOT id is the largest in
    CLIP's vocabulary), otherwise at the first position holding ``eos_token_id``.
    ``attention_mask`` (1 = token, 0 = padding) is combined with the causal mask.
    """

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        *,
        output_hidden_states: bool = False,
    ):
        cfg = self.config
        batch, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise ValueError(f"Sequence length {length} > max_position_embeddings {cfg.max_position_embeddings}.")
        init = nn.initializers.normal(0.02)
        tokens = self.param("token_embedding", init, (cfg.vocab_size, cfg.hidden_size), self.param_dtype)
        positions = self.param(
            "position_embedding", init, (cfg.max_position_embeddings, cfg.hidden_size), self.param_dtype
        )
        if position_ids is None:
            position_ids = jnp.arange(length)[None]
        x = (jnp.take(tokens, input_ids, axis=0) + jnp.take(positions, position_ids, axis=0)).astype(self.dtype)

        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        layer_kwargs = dict(
            num_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps,
        )
        x, hidden_states = _run_encoder(self, x, mask, layer_kwargs, cfg.num_hidden_layers)
        x = _layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, "final_layer_norm")(x)

        if cfg.eos_token_id == 2:  # Legacy configs (before transformers PR #24773).
            eos_position = jnp.argmax(input_ids, axis=-1)
        else:
            eos_position = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = x[jnp.arange(batch), eos_position]
        return {
            "last_hidden_state": x,
            "pooler_output": pooled,
            "hidden_states": hidden_states if output_hidden_states else None,
        }


def _l2_normalize(x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))  # No epsilon, as HF.


class CLIPModel(nn.Module):
    """HF ``CLIPModel``: both towers, bias-free projections and the learned ``logit_scale``.

    ``__call__`` gives L2-normalised ``image_embeds``/``text_embeds`` and
    ``logits_per_image = exp(logit_scale) · cos``; ``encode_image``/``encode_text`` give the
    embeddings alone (via ``module.apply(variables, x, method="encode_image")``).
    """

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.vision_model = CLIPVisionTower(cfg.vision, self.dtype, self.param_dtype)
        self.text_model = CLIPTextTower(cfg.text, self.dtype, self.param_dtype)
        dense = dict(features=cfg.projection_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        self.visual_projection = nn.Dense(**dense)
        self.text_projection = nn.Dense(**dense)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), (), self.param_dtype
        )

    def image_tower(self, pixel_values, *, output_hidden_states=False, interpolate_pos_encoding=False):
        """The vision tower's outputs (HF ``model.vision_model(...)``)."""
        return self.vision_model(
            pixel_values, output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding
        )

    def text_tower(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states=False):
        """The text tower's outputs (HF ``model.text_model(...)``)."""
        return self.text_model(input_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states)

    def encode_image(self, pixel_values, *, normalize: bool = True, interpolate_pos_encoding: bool = False):
        """Projected image embeddings; ``normalize=False`` equals HF ``get_image_features``."""
        pooled = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)["pooler_output"]
        embeds = self.visual_projection(pooled)
        return _l2_normalize(embeds) if normalize else embeds

    def encode_text(self, input_ids, attention_mask=None, position_ids=None, *, normalize: bool = True):
        """Projected text embeddings; ``normalize=False`` equals HF ``get_text_features``."""
        pooled = self.text_model(input_ids, attention_mask, position_ids)["pooler_output"]
        embeds = self.text_projection(pooled)
        return _l2_normalize(embeds) if normalize else embeds

    def __call__(
        self,
        pixel_values: Array,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        *,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ):
        vision = self.image_tower(
            pixel_values, output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding
        )
        text = self.text_tower(input_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states)
        image_embeds = _l2_normalize(self.visual_projection(vision["pooler_output"]))
        text_embeds = _l2_normalize(self.text_projection(text["pooler_output"]))
        logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale.astype(jnp.float32))
        return {
            "logits_per_image": logits_per_text.T,
            "logits_per_text": logits_per_text,
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
            "vision_model_output": vision,
            "text_model_output": text,
        }


class CLIPImageEncoder(nn.Module):
    """CLIP vision tower with an optional visual projection.

    HF's ``CLIPVisionModelWithProjection`` (``with_projection=True``; ``image_embeds`` is the
    unnormalised projection, as there) or ``CLIPVisionModel`` (``image_embeds`` is None).
    """

    config: CLIPVisionConfig
    with_projection: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.vision_model = CLIPVisionTower(self.config, self.dtype, self.param_dtype)
        if self.with_projection:
            self.visual_projection = nn.Dense(
                self.config.projection_dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype
            )

    def __call__(
        self, pixel_values: Array, *, output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
    ):
        out = dict(
            self.vision_model(
                pixel_values,
                output_hidden_states=output_hidden_states,
                interpolate_pos_encoding=interpolate_pos_encoding,
            )
        )
        out["image_embeds"] = self.visual_projection(out["pooler_output"]) if self.with_projection else None
        return out

    def encode_image(self, pixel_values, *, normalize: bool = True, interpolate_pos_encoding: bool = False):
        """Projected image embeddings, L2-normalised by default (as CLIPModel's ``image_embeds``)."""
        if not self.with_projection:
            raise ValueError("This checkpoint has no visual projection; use pooler_output from __call__.")
        embeds = self(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)["image_embeds"]
        return _l2_normalize(embeds) if normalize else embeds


# --------------------------------------------------------------------------------------------
# ViT.


class ViTClassifier(nn.Module):
    """HF ``ViTForImageClassification`` (``with_head``) or ``ViTModel`` (``with_pooler``).

    Patch conv (with bias) + CLS token + positions, pre-LN encoder, final ``layernorm``;
    ``logits`` come from the classifier on the CLS token (the CLS features themselves when
    ``num_labels`` is 0, as HF's Identity head).  Takes NHWC images; ``image_size`` may be
    non-square, and ``interpolate_pos_encoding`` resizes the position grid bicubically.
    """

    config: ViTConfig
    with_head: bool = True
    with_pooler: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, pixel_values: Array, *, output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
    ):
        cfg = self.config
        _check_image_size(pixel_values.shape, cfg.image_size, cfg.num_channels, interpolate_pos_encoding)
        patches = nn.Conv(
            cfg.hidden_size, cfg.patch_size, strides=cfg.patch_size, padding="VALID",
            dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding",
        )(pixel_values.astype(self.dtype))
        batch, grid_h, grid_w, _ = patches.shape
        patches = patches.reshape(batch, grid_h * grid_w, cfg.hidden_size)

        init = nn.initializers.truncated_normal(0.02)
        (base_h, base_w) = cfg.grid_size
        cls_token = self.param("cls_token", init, (1, 1, cfg.hidden_size), self.param_dtype)
        num_positions = base_h * base_w + 1
        positions = self.param("position_embeddings", init, (1, num_positions, cfg.hidden_size), self.param_dtype)
        if interpolate_pos_encoding:
            grid = positions[0, 1:].reshape(base_h, base_w, cfg.hidden_size)
            resized = _resize_position_grid(grid, (grid_h, grid_w)).reshape(1, grid_h * grid_w, cfg.hidden_size)
            positions = jnp.concatenate([positions[:, :1], resized], axis=1)

        cls = jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1) + positions.astype(self.dtype)
        layer_kwargs = dict(
            num_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias,
        )
        x, hidden_states = _run_encoder(self, x, None, layer_kwargs, cfg.num_hidden_layers)
        x = _layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, "layernorm")(x)

        out = {"last_hidden_state": x, "hidden_states": hidden_states if output_hidden_states else None}
        out["pooler_output"] = None
        if self.with_pooler:
            width = cfg.pooler_output_size or cfg.hidden_size
            dense = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="pooler")
            out["pooler_output"] = _activation(cfg.pooler_act)(dense(x[:, 0]))
        out["logits"] = None
        if self.with_head:
            features = x[:, 0]
            if cfg.num_labels > 0:
                dense = nn.Dense(cfg.num_labels, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")
                features = dense(features)
            out["logits"] = features
        return out


# --------------------------------------------------------------------------------------------
# Checkpoint files.


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local directory as is; anything else is fetched from the hub (config, safetensors, txt)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; pass the directory holding config.json and *.safetensors.")
    repo_id = str(path_or_hub_id)
    try:
        import huggingface_hub

        # "model*.safetensors" rather than "*.safetensors": some repos also hold open_clip copies.
        local = huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.json", "model*.safetensors", "*.txt"])
    except Exception as error:  # Offline, unknown repo, gated repo, ...: all get the same advice.
        raise OSError(
            f"Could not download {repo_id!r} from the HuggingFace hub ({type(error).__name__}: {error}). "
            "Pass a local directory holding config.json and *.safetensors, or set HF_HOME / "
            f"pre-download with `huggingface-cli download {repo_id}`."
        ) from error
    return Path(local)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    # ml_dtypes (a jax dependency) gives numpy a bfloat16, with which safetensors.numpy reads BF16
    # checkpoints too (measured: 2x faster than the hand-written parser this replaced).
    import ml_dtypes  # noqa: F401
    from safetensors.numpy import load_file

    return load_file(str(path))


def _read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """config.json and all tensors of a (possibly sharded) safetensors checkpoint."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No config.json in {directory}.")
    config = json.loads(config_path.read_text())

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"No *.safetensors in {directory} (torch pickles are not read; re-save with safe_serialization)."
            )
        if len(files) > 1:
            raise ValueError(f"Several *.safetensors in {directory} but no model.safetensors.index.json: {files}.")

    tensors: dict[str, np.ndarray] = {}
    for name in files:
        shard = _read_safetensors(directory / name)
        duplicated = sorted(set(shard) & set(tensors))
        if duplicated:
            raise ValueError(f"Tensors stored twice across shards of {directory}: {duplicated[:10]}.")
        tensors.update(shard)
    return config, tensors


# --------------------------------------------------------------------------------------------
# HF key → linen parameter mapping.  Each entry is (hf_key, param_path, kind); kind says how the
# torch tensor becomes the linen one.

_LINEAR, _CONV, _COPY = "linear", "conv", "copy"


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == _LINEAR:  # Dense kernel (in, out) ← Linear weight (out, in).
        return shape[::-1]
    if kind == _CONV:  # Conv kernel (kh, kw, in, out) ← Conv2d weight (out, in, kh, kw).
        return (shape[3], shape[2], shape[0], shape[1])
    return shape


def _to_linen(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == _LINEAR:
        return array.T
    if kind == _CONV:
        return array.transpose(2, 3, 1, 0)
    return array


def _linear(hf: str, path: tuple[str, ...], bias: bool = True):
    entries = [(f"{hf}.weight", path + ("kernel",), _LINEAR)]
    return entries + ([(f"{hf}.bias", path + ("bias",), _COPY)] if bias else [])


def _norm(hf: str, path: tuple[str, ...]):
    return [(f"{hf}.weight", path + ("scale",), _COPY), (f"{hf}.bias", path + ("bias",), _COPY)]


def _clip_encoder_entries(hf: str, path: tuple[str, ...], num_layers: int):
    entries = []
    for i in range(num_layers):
        src, dst = f"{hf}encoder.layers.{i}.", path + (f"layers_{i}",)
        entries += _norm(src + "layer_norm1", dst + ("layer_norm1",))
        entries += _norm(src + "layer_norm2", dst + ("layer_norm2",))
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            entries += _linear(src + f"self_attn.{proj}", dst + ("self_attn", proj))
        entries += _linear(src + "mlp.fc1", dst + ("mlp", "fc1"))
        entries += _linear(src + "mlp.fc2", dst + ("mlp", "fc2"))
    return entries


def _clip_vision_entries(hf: str, path: tuple[str, ...], config: CLIPVisionConfig):
    return [
        (f"{hf}embeddings.patch_embedding.weight", path + ("patch_embedding", "kernel"), _CONV),
        (f"{hf}embeddings.class_embedding", path + ("class_embedding",), _COPY),
        (f"{hf}embeddings.position_embedding.weight", path + ("position_embedding",), _COPY),
        *_norm(f"{hf}pre_layrnorm", path + ("pre_layrnorm",)),
        *_clip_encoder_entries(hf, path, config.num_hidden_layers),
        *_norm(f"{hf}post_layernorm", path + ("post_layernorm",)),
    ]


def _clip_text_entries(hf: str, path: tuple[str, ...], config: CLIPTextConfig):
    return [
        (f"{hf}embeddings.token_embedding.weight", path + ("token_embedding",), _COPY),
        (f"{hf}embeddings.position_embedding.weight", path + ("position_embedding",), _COPY),
        *_clip_encoder_entries(hf, path, config.num_hidden_layers),
        *_norm(f"{hf}final_layer_norm", path + ("final_layer_norm",)),
    ]


def _vit_entries(hf: str, config: ViTConfig, with_head: bool, with_pooler: bool):
    """ViT in the layout save_pretrained writes (transformers 5 renames it back to the legacy one)."""
    entries = [
        (f"{hf}embeddings.cls_token", ("cls_token",), _COPY),
        (f"{hf}embeddings.position_embeddings", ("position_embeddings",), _COPY),
        (f"{hf}embeddings.patch_embeddings.projection.weight", ("patch_embedding", "kernel"), _CONV),
        (f"{hf}embeddings.patch_embeddings.projection.bias", ("patch_embedding", "bias"), _COPY),
    ]
    for i in range(config.num_hidden_layers):
        src, dst = f"{hf}encoder.layer.{i}.", (f"layers_{i}",)
        entries += _norm(src + "layernorm_before", dst + ("layer_norm1",))
        entries += _norm(src + "layernorm_after", dst + ("layer_norm2",))
        for hf_name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            entries += _linear(src + f"attention.attention.{hf_name}", dst + ("self_attn", proj), config.qkv_bias)
        entries += _linear(src + "attention.output.dense", dst + ("self_attn", "out_proj"))
        entries += _linear(src + "intermediate.dense", dst + ("mlp", "fc1"))
        entries += _linear(src + "output.dense", dst + ("mlp", "fc2"))
    entries += _norm(f"{hf}layernorm", ("layernorm",))
    if with_pooler:
        entries += _linear(f"{hf}pooler.dense", ("pooler",))
    if with_head and config.num_labels > 0:
        entries += _linear("classifier", ("classifier",))
    return entries


# transformers 5's in-memory ViT names (what ``model.state_dict()`` holds) → the saved names.
_VIT_IN_MEMORY_NAMES = [
    (r"(^|\.)layers\.(\d+)\.attention\.q_proj\.", r"\1encoder.layer.\2.attention.attention.query."),
    (r"(^|\.)layers\.(\d+)\.attention\.k_proj\.", r"\1encoder.layer.\2.attention.attention.key."),
    (r"(^|\.)layers\.(\d+)\.attention\.v_proj\.", r"\1encoder.layer.\2.attention.attention.value."),
    (r"(^|\.)layers\.(\d+)\.attention\.o_proj\.", r"\1encoder.layer.\2.attention.output.dense."),
    (r"(^|\.)layers\.(\d+)\.mlp\.fc1\.", r"\1encoder.layer.\2.intermediate.dense."),
    (r"(^|\.)layers\.(\d+)\.mlp\.fc2\.", r"\1encoder.layer.\2.output.dense."),
    (r"(^|\.)layers\.(\d+)\.(layernorm_before|layernorm_after)\.", r"\1encoder.layer.\2.\3."),
]


def _vit_saved_name(key: str) -> str:
    for pattern, replacement in _VIT_IN_MEMORY_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _listing(items: Sequence[str], limit: int = 25) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _assemble_params(
    tensors: Mapping[str, np.ndarray],
    entries: Iterable[tuple[str, tuple[str, ...], str]],
    abstract_params: Any,
    ignored: Callable[[str], bool],
    param_dtype: Dtype,
    source: str,
    stored_name: Callable[[str], str] = lambda key: key,
) -> dict:
    """Strictly map checkpoint tensors onto the module's parameter tree.

    ``stored_name`` gives a key as written in the file, for error messages about renamed keys.
    """
    entries = list(entries)
    wanted = traverse_util.flatten_dict(abstract_params)
    mapped = [path for _, path, _ in entries]
    if sorted(mapped) != sorted(wanted):  # A bug in this file, not in the checkpoint.
        raise RuntimeError(
            f"Key mapping does not cover the parameters exactly: unmapped {sorted(set(wanted) - set(mapped))}, "
            f"unknown {sorted(set(mapped) - set(wanted))}."
        )
    expected = {hf for hf, _, _ in entries}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(stored_name(k) for k in tensors if k not in expected and not ignored(k))
    wrong_shape = []
    params = {}
    for hf, path, kind in entries:
        if hf not in tensors:
            continue
        want = _torch_shape(kind, tuple(wanted[path].shape))
        got = tuple(tensors[hf].shape)
        if got != want:
            wrong_shape.append(f"{stored_name(hf)}: checkpoint {got}, expected {want}")
            continue
        params[path] = jnp.asarray(_to_linen(kind, np.asarray(tensors[hf])), dtype=param_dtype)
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listing(wrong_shape)}")
    if problems:
        raise ValueError(f"Checkpoint {source} does not match the model: " + "; ".join(problems) + ".")
    return traverse_util.unflatten_dict(params)


def _abstract_params(module: nn.Module, *inputs) -> Any:
    """The parameter shapes, without allocating or computing anything."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
    return shapes["params"]


def _dummy_image(config: CLIPVisionConfig | ViTConfig) -> Array:
    height, width = config.image_size if isinstance(config.image_size, tuple) else (config.image_size,) * 2
    return jnp.zeros((1, height, width, config.num_channels), jnp.float32)


# --------------------------------------------------------------------------------------------
# Loaders.


def load_clip(
    path_or_hub_id: str | os.PathLike, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> tuple[CLIPModel, dict, CLIPConfig]:
    """A full HF ``CLIPModel`` checkpoint (``vision_model.*``, ``text_model.*``, projections, ``logit_scale``)."""
    directory = resolve_checkpoint_dir(path_or_hub_id)
    raw_config, tensors = _read_checkpoint(directory)
    config = CLIPConfig.from_dict(raw_config)
    module = CLIPModel(config, dtype=dtype, param_dtype=param_dtype)
    abstract = _abstract_params(module, _dummy_image(config.vision), jnp.zeros((1, 2), jnp.int32))
    entries = [
        *_clip_vision_entries("vision_model.", ("vision_model",), config.vision),
        *_clip_text_entries("text_model.", ("text_model",), config.text),
        ("visual_projection.weight", ("visual_projection", "kernel"), _LINEAR),
        ("text_projection.weight", ("text_projection", "kernel"), _LINEAR),
        ("logit_scale", ("logit_scale",), _COPY),
    ]
    buffers = {"vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"}
    params = _assemble_params(tensors, entries, abstract, buffers.__contains__, param_dtype, str(path_or_hub_id))
    return module, {"params": params}, config


def load_clip_vision(
    path_or_hub_id: str | os.PathLike, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> tuple[CLIPImageEncoder, dict, CLIPVisionConfig]:
    """The CLIP image side from a CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel checkpoint.

    Tower keys may carry the ``vision_model.`` prefix (CLIPModel, WithProjection, CLIPVisionModel
    saved by transformers 4) or none (CLIPVisionModel saved by transformers 5).  From a full
    CLIPModel the tower and ``visual_projection`` are taken and the text side
    (``text_model.*``, ``text_projection.weight``, ``logit_scale``) is deliberately skipped.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    raw_config, tensors = _read_checkpoint(directory)
    config = CLIPVisionConfig.from_dict(raw_config)
    full_clip = _is_full_clip_config(raw_config)
    architectures = set(raw_config.get("architectures") or [])
    if full_clip or any(k.startswith("vision_model.") for k in tensors):
        prefix = "vision_model."
    else:
        prefix = ""
    if full_clip or "CLIPVisionModelWithProjection" in architectures:
        with_projection = True
    elif "CLIPVisionModel" in architectures:
        with_projection = False
    else:
        with_projection = "visual_projection.weight" in tensors

    def ignored(key: str) -> bool:
        if key == f"{prefix}embeddings.position_ids":
            return True
        text_side = key.startswith("text_model.") or key in ("text_projection.weight", "logit_scale")
        return full_clip and text_side

    module = CLIPImageEncoder(config, with_projection=with_projection, dtype=dtype, param_dtype=param_dtype)
    abstract = _abstract_params(module, _dummy_image(config))
    entries = _clip_vision_entries(prefix, ("vision_model",), config)
    if with_projection:
        entries.append(("visual_projection.weight", ("visual_projection", "kernel"), _LINEAR))
    params = _assemble_params(tensors, entries, abstract, ignored, param_dtype, str(path_or_hub_id))
    return module, {"params": params}, config


def load_vit(
    path_or_hub_id: str | os.PathLike, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> tuple[ViTClassifier, dict, ViTConfig]:
    """A ``ViTForImageClassification`` (``vit.*`` + ``classifier.*``) or ``ViTModel`` (bare keys) checkpoint.

    A ViTModel checkpoint gives a module without head, with the pooler if the checkpoint has one.
    Keys in transformers 5's in-memory naming (``layers.N.attention.q_proj``, ``mlp.fc1``, ...,
    as in ``model.state_dict()``) are accepted too.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    raw_config, stored = _read_checkpoint(directory)
    config = ViTConfig.from_dict(raw_config)
    tensors = {}
    original_name = {}
    for key, value in stored.items():
        name = _vit_saved_name(key)
        if name in tensors:
            raise ValueError(f"Checkpoint {path_or_hub_id} holds both {original_name[name]} and {key}.")
        tensors[name], original_name[name] = value, key

    # ViTForImageClassification nests the backbone under "vit."; ViTModel has bare keys.
    with_head = any(k.startswith("vit.") for k in tensors)
    prefix = "vit." if with_head else ""
    with_pooler = f"{prefix}pooler.dense.weight" in tensors or f"{prefix}pooler.dense.bias" in tensors
    module = ViTClassifier(config, with_head=with_head, with_pooler=with_pooler, dtype=dtype, param_dtype=param_dtype)
    abstract = _abstract_params(module, _dummy_image(config))
    entries = _vit_entries(prefix, config, with_head, with_pooler)
    params = _assemble_params(
        tensors, entries, abstract, lambda key: False, param_dtype, str(path_or_hub_id), original_name.get
    )
    return module, {"params": params}, config


__all__ = [
    "CLIPConfig",
    "CLIPImageEncoder",
    "CLIPModel",
    "CLIPTextConfig",
    "CLIPTextTower",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "ViTClassifier",
    "ViTConfig",
    "load_clip",
    "load_clip_vision",
    "load_vit",
    "quick_gelu",
]
