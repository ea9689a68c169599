"""HF CLIP / ViT towers in linen: parity with transformers' PyTorch models, strict loading.

Each test builds a tiny random model with transformers, saves it with ``save_pretrained``
(safetensors), loads it with our loader and compares outputs on the same input (NCHW for
torch, NHWC for JAX).  Parameters are perturbed after init so that LayerNorm scales/biases
and zero-initialised biases are not trivially 1 / 0 and a swapped mapping would show.
"""

import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from rkdsc_jax.models import hf_vision  # noqa: E402

ATOL = 1e-4
VISION = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    image_size=30, patch_size=6, projection_dim=16,
)
TEXT = dict(
    hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    vocab_size=99, max_position_embeddings=16, projection_dim=16, bos_token_id=0, pad_token_id=1,
)


def _perturbed(model):
    """Eval mode, with every parameter (LayerNorm scales, zero biases, logit_scale too) randomised."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _assert_close(name, ours, theirs, atol=ATOL):
    theirs = theirs.detach().double().numpy()
    ours = np.asarray(ours, np.float64)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs torch {theirs.shape}"
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"max|diff| {name}: {diff:.2e}")
    assert diff <= atol, f"{name}: max abs diff {diff:.3e} > {atol}"


def _assert_all_close(name, ours, theirs):
    assert len(ours) == len(theirs), f"{name}: {len(ours)} vs torch {len(theirs)}"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        _assert_close(f"{name}[{i}]", a, b)


def _nhwc(images):
    return jnp.asarray(images.permute(0, 2, 3, 1).numpy())


def _images(batch, height, width, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _token_batch(eos_token_id, eot_id):
    """Right-padded ids with EOS at different positions; row 2 is padded with the EOS id itself.

    Filler tokens are all larger than the EOS id in the current-style case, so "argmax of ids"
    and "first EOS" pick different positions and the two pooling rules can't be confused.
    """
    low = 3 if eos_token_id == 2 else eot_id + 1
    high = 90 if eos_token_id == 2 else TEXT["vocab_size"]
    ids = torch.randint(low, high, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, eos_position in enumerate([5, 8, 2]):
        ids[row, eos_position] = eot_id
        ids[row, eos_position + 1:] = eot_id if row == 2 else TEXT["pad_token_id"]
        mask[row, eos_position + 1:] = 0
    return ids, mask


def _save_tensors(directory, tensors, config_from):
    directory.mkdir()
    shutil.copy(config_from / "config.json", directory / "config.json")
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


# ---------------------------------------------------------------------------------------------
# CLIPModel.


@pytest.mark.parametrize(
    "hidden_act, eos_token_id",
    [("quick_gelu", 50), ("gelu", 2)],  # eos_token_id 2 is the legacy argmax pooling.
)
def test_clip_model_matches_transformers(tmp_path, hidden_act, eos_token_id):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        vision_config={**VISION, "hidden_act": hidden_act},
        text_config={**TEXT, "hidden_act": hidden_act, "eos_token_id": eos_token_id},
        projection_dim=16,
    )
    torch_model = _perturbed(transformers.CLIPModel(config))
    torch_model.save_pretrained(tmp_path)

    module, variables, parsed = hf_vision.load_clip(tmp_path)
    assert parsed.vision.hidden_act == parsed.text.hidden_act == hidden_act
    assert parsed.text.eos_token_id == eos_token_id

    images = _images(2, 30, 30)
    ids, mask = _token_batch(eos_token_id, eot_id=98 if eos_token_id == 2 else eos_token_id)
    with torch.no_grad():
        theirs = torch_model(input_ids=ids, attention_mask=mask, pixel_values=images, output_hidden_states=True)
        vision = torch_model.vision_model(images, output_hidden_states=True)
        text = torch_model.text_model(ids, attention_mask=mask, output_hidden_states=True)
        text_unmasked = torch_model.text_model(ids)

    apply = jax.jit(lambda v, x, i, m: module.apply(v, x, i, m, output_hidden_states=True))
    ours = apply(variables, _nhwc(images), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy()))
    ours_vision, ours_text = ours["vision_model_output"], ours["text_model_output"]

    _assert_close("vision last_hidden_state", ours_vision["last_hidden_state"], vision.last_hidden_state)
    _assert_all_close("vision hidden_states", ours_vision["hidden_states"], vision.hidden_states)
    _assert_close("vision pooler_output", ours_vision["pooler_output"], vision.pooler_output)
    _assert_close("image_embeds", ours["image_embeds"], theirs.image_embeds)
    _assert_close("text last_hidden_state", ours_text["last_hidden_state"], text.last_hidden_state)
    _assert_all_close("text hidden_states", ours_text["hidden_states"], text.hidden_states)
    _assert_close("text pooler_output", ours_text["pooler_output"], text.pooler_output)
    _assert_close("text_embeds", ours["text_embeds"], theirs.text_embeds)
    _assert_close("logits_per_image", ours["logits_per_image"], theirs.logits_per_image)
    _assert_close("logits_per_text", ours["logits_per_text"], theirs.logits_per_text)

    # No attention mask (causal only), and the standalone methods: normalised (CLIPModel's
    # embeds) and raw (get_*_features).  One jit: compiling beats op-by-op dispatch here.
    @jax.jit
    def methods(v, x, i, m):
        return (
            module.apply(v, i, method="text_tower")["pooler_output"],
            module.apply(v, x, method="encode_image"),
            module.apply(v, i, m, normalize=False, method="encode_text"),
        )

    pooled_unmasked, image_embeds, raw_text = methods(
        variables, _nhwc(images), jnp.asarray(ids.numpy()), jnp.asarray(mask.numpy())
    )
    _assert_close("text pooler_output (no mask)", pooled_unmasked, text_unmasked.pooler_output)
    _assert_close("encode_image", image_embeds, theirs.image_embeds)
    with torch.no_grad():
        raw_theirs = torch_model.get_text_features(ids, mask).pooler_output
    _assert_close("encode_text(normalize=False)", raw_text, raw_theirs)

    # The image side alone from the same full checkpoint: tower + visual projection.
    vision_module, vision_variables, vision_config = hf_vision.load_clip_vision(tmp_path)
    assert vision_module.with_projection and vision_config.projection_dim == 16
    with torch.no_grad():
        features = torch_model.get_image_features(images).pooler_output
    _assert_close("load_clip_vision(CLIPModel) image_embeds",
                  vision_module.apply(vision_variables, _nhwc(images))["image_embeds"], features)


# ---------------------------------------------------------------------------------------------
# CLIP vision checkpoints alone.


def test_clip_vision_model_layouts_and_interpolation(tmp_path):
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)))
    torch_model.save_pretrained(tmp_path / "bare")
    stored = load_file(str(tmp_path / "bare" / "model.safetensors"))
    # transformers 5 writes a CLIPVisionModel without the "vision_model." prefix.
    assert "embeddings.patch_embedding.weight" in stored

    images = _images(2, 30, 30)
    wide = _images(2, 24, 36, seed=1)  # A 4x6 patch grid from a 5x5 position table.
    with torch.no_grad():
        theirs = torch_model(images, output_hidden_states=True)
        theirs_wide = torch_model(wide, interpolate_pos_encoding=True)

    # transformers 4 wrote the tower under "vision_model." (with the position_ids buffer).
    legacy = {f"vision_model.{k}": v for k, v in stored.items()}
    legacy["vision_model.embeddings.position_ids"] = np.arange(26, dtype=np.int64)[None]
    _save_tensors(tmp_path / "prefixed", legacy, tmp_path / "bare")

    for layout in ("bare", "prefixed"):
        module, variables, _ = hf_vision.load_clip_vision(tmp_path / layout)
        assert not module.with_projection
        ours = module.apply(variables, _nhwc(images), output_hidden_states=True)
        assert ours["image_embeds"] is None
        _assert_close(f"{layout} last_hidden_state", ours["last_hidden_state"], theirs.last_hidden_state)
        _assert_all_close(f"{layout} hidden_states", ours["hidden_states"], theirs.hidden_states)
        _assert_close(f"{layout} pooler_output", ours["pooler_output"], theirs.pooler_output)

    ours_wide = module.apply(variables, _nhwc(wide), interpolate_pos_encoding=True)
    _assert_close("24x36 interpolated last_hidden_state", ours_wide["last_hidden_state"],
                  theirs_wide.last_hidden_state)
    _assert_close("24x36 interpolated pooler_output", ours_wide["pooler_output"], theirs_wide.pooler_output)
    with pytest.raises(ValueError, match="24x36"):
        module.apply(variables, _nhwc(wide))


def test_clip_vision_model_with_projection(tmp_path):
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)))
    torch_model.save_pretrained(tmp_path)
    images = _images(2, 30, 30)
    with torch.no_grad():
        theirs = torch_model(images)
    module, variables, _ = hf_vision.load_clip_vision(tmp_path)
    assert module.with_projection
    ours = module.apply(variables, _nhwc(images))
    _assert_close("WithProjection last_hidden_state", ours["last_hidden_state"], theirs.last_hidden_state)
    _assert_close("WithProjection image_embeds", ours["image_embeds"], theirs.image_embeds)
    normalised = theirs.image_embeds / theirs.image_embeds.norm(dim=-1, keepdim=True)
    _assert_close("WithProjection encode_image", module.apply(variables, _nhwc(images), method="encode_image"),
                  normalised)


def test_bfloat16_checkpoint_loads(tmp_path):
    """safetensors.numpy can't read BF16; the fallback reader must give the same weights."""
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)))
    torch_model.to(torch.bfloat16).save_pretrained(tmp_path)
    module, variables, _ = hf_vision.load_clip_vision(tmp_path)
    assert variables["params"]["vision_model"]["class_embedding"].dtype == jnp.float32
    images = _images(2, 30, 30)
    with torch.no_grad():
        theirs = torch_model.float()(images)
    _assert_close("bf16 checkpoint pooler_output", module.apply(variables, _nhwc(images))["pooler_output"],
                  theirs.pooler_output)


# ---------------------------------------------------------------------------------------------
# ViT.


def _vit_config(**overrides):
    return transformers.ViTConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, **overrides
    )


def test_vit_classifier_non_square_grid_matches_transformers(tmp_path):
    torch.manual_seed(0)
    # image_size and patch_size as (height, width) pairs: a 5x6 grid of 6x4 patches.
    config = _vit_config(image_size=[30, 24], patch_size=[6, 4], num_labels=5)
    torch_model = _perturbed(transformers.ViTForImageClassification(config))
    torch_model.save_pretrained(tmp_path / "saved")

    images = _images(2, 30, 24)
    with torch.no_grad():
        theirs = torch_model(images, output_hidden_states=True)
        backbone = torch_model.vit(images)

    module, variables, parsed = hf_vision.load_vit(tmp_path / "saved")
    assert parsed.num_labels == 5 and parsed.grid_size == (5, 6) and parsed.hidden_act == "gelu"
    assert module.with_head and not module.with_pooler
    ours = jax.jit(lambda v, x: module.apply(v, x, output_hidden_states=True))(variables, _nhwc(images))
    _assert_close("ViT logits", ours["logits"], theirs.logits)
    _assert_all_close("ViT hidden_states", ours["hidden_states"], theirs.hidden_states)
    _assert_close("ViT last_hidden_state", ours["last_hidden_state"], backbone.last_hidden_state)

    # transformers 5's in-memory names (model.state_dict(), e.g. layers.0.attention.q_proj) load too.
    in_memory = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert "vit.layers.0.attention.q_proj.weight" in in_memory
    _save_tensors(tmp_path / "state_dict", in_memory, tmp_path / "saved")
    module, variables, _ = hf_vision.load_vit(tmp_path / "state_dict")
    _assert_close("ViT logits (state_dict names)", module.apply(variables, _nhwc(images))["logits"], theirs.logits)

    stored = load_file(str(tmp_path / "saved" / "model.safetensors"))
    del stored["classifier.weight"]
    _save_tensors(tmp_path / "headless", stored, tmp_path / "saved")
    with pytest.raises(ValueError, match=r"missing tensors: classifier\.weight"):
        hf_vision.load_vit(tmp_path / "headless")


def test_vit_model_pooler_and_interpolation(tmp_path):
    torch.manual_seed(0)
    torch_model = _perturbed(transformers.ViTModel(_vit_config(image_size=30, patch_size=6, qkv_bias=False)))
    torch_model.save_pretrained(tmp_path)
    images, wide = _images(2, 30, 30), _images(2, 24, 36, seed=1)
    with torch.no_grad():
        theirs = torch_model(images)
        theirs_wide = torch_model(wide, interpolate_pos_encoding=True)

    module, variables, parsed = hf_vision.load_vit(tmp_path)
    assert not parsed.qkv_bias and not module.with_head and module.with_pooler
    ours = module.apply(variables, _nhwc(images))
    assert ours["logits"] is None
    _assert_close("ViTModel last_hidden_state", ours["last_hidden_state"], theirs.last_hidden_state)
    _assert_close("ViTModel pooler_output", ours["pooler_output"], theirs.pooler_output)
    ours_wide = module.apply(variables, _nhwc(wide), interpolate_pos_encoding=True)
    _assert_close("ViTModel 24x36 interpolated last_hidden_state", ours_wide["last_hidden_state"],
                  theirs_wide.last_hidden_state)


# ---------------------------------------------------------------------------------------------
# Strict loading, sharding, hub errors, configs.


@pytest.fixture(scope="module")
def clip_vision_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("clip_vision")
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).save_pretrained(directory)
    return directory


def test_strict_loading_names_missing_unexpected_and_misshapen_tensors(tmp_path, clip_vision_dir):
    stored = load_file(str(clip_vision_dir / "model.safetensors"))

    missing = dict(stored)
    del missing["encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layers\.1\.mlp\.fc2\.bias"):
        hf_vision.load_clip_vision(_save_tensors(tmp_path / "missing", missing, clip_vision_dir))

    extra = {**stored, "encoder.layers.2.mlp.fc1.weight": np.zeros((37, 32), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected tensors: encoder\.layers\.2\.mlp\.fc1\.weight"):
        hf_vision.load_clip_vision(_save_tensors(tmp_path / "extra", extra, clip_vision_dir))

    misshapen = {**stored, "embeddings.position_embedding.weight": np.zeros((25, 32), np.float32)}
    with pytest.raises(ValueError, match=re.escape(
        "embeddings.position_embedding.weight: checkpoint (25, 32), expected (26, 32)"
    )):
        hf_vision.load_clip_vision(_save_tensors(tmp_path / "misshapen", misshapen, clip_vision_dir))

    # A text tower is only skipped in a full CLIPModel checkpoint, never silently elsewhere.
    with_text = {**stored, "text_model.final_layer_norm.weight": np.ones(24, np.float32)}
    with pytest.raises(ValueError, match=r"unexpected tensors: text_model\.final_layer_norm\.weight"):
        hf_vision.load_clip_vision(_save_tensors(tmp_path / "with_text", with_text, clip_vision_dir))

    # The position_ids buffer is the one thing ignored by name.
    buffered = {**stored, "embeddings.position_ids": np.arange(26, dtype=np.int64)[None]}
    hf_vision.load_clip_vision(_save_tensors(tmp_path / "buffered", buffered, clip_vision_dir))


def test_sharded_clip_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        vision_config=VISION, text_config={**TEXT, "eos_token_id": 50}, projection_dim=16
    )
    torch_model = _perturbed(transformers.CLIPModel(config))
    torch_model.save_pretrained(tmp_path / "single")
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1

    # The single-file load is checked against torch above; the sharded one must equal it.
    _, single, _ = hf_vision.load_clip(tmp_path / "single")
    _, sharded, _ = hf_vision.load_clip(tmp_path / "sharded")
    chex.assert_trees_all_equal(sharded, single)
    kernel = sharded["params"]["visual_projection"]["kernel"]
    np.testing.assert_array_equal(kernel, torch_model.visual_projection.weight.detach().numpy().T)


def test_unreachable_hub_id_gives_actionable_error(monkeypatch):
    import huggingface_hub

    calls = []

    def offline(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError) as error:
        hf_vision.load_clip("openai/clip-vit-large-patch14")
    message = str(error.value)
    assert "Could not download 'openai/clip-vit-large-patch14'" in message
    assert "config.json and *.safetensors" in message and "huggingface-cli download" in message
    assert "HF_HOME" in message and "no network" in message
    assert calls and "*.json" in calls[0][1]["allow_patterns"]


def test_config_parsing_follows_transformers():
    # Old CLIP configs: text_config_dict (filled with defaults) overrides text_config.
    legacy = {
        "model_type": "clip",
        "projection_dim": 768,
        "text_config": {"hidden_size": 512, "eos_token_id": 2, "max_position_embeddings": 77},
        "text_config_dict": {"hidden_size": 768, "eos_token_id": 2},
        "vision_config": {
            "hidden_size": 1024, "num_attention_heads": 16, "patch_size": 14, "image_size": [224, 224],
            "projection_dim": 512,
        },
    }
    parsed = hf_vision.CLIPConfig.from_dict(legacy)
    assert parsed.text.hidden_size == 768 and parsed.text.eos_token_id == 2
    assert parsed.vision.image_size == 224 and parsed.vision.patch_size == 14
    assert hf_vision.CLIPVisionConfig.from_dict(legacy).projection_dim == 768  # The CLIPModel's projection.
    with pytest.raises(ValueError, match="load_clip_vision"):
        hf_vision.CLIPConfig.from_dict({"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match="square"):
        hf_vision.CLIPVisionConfig.from_dict({"image_size": [224, 160]})

    assert hf_vision.ViTConfig.from_dict({"model_type": "vit"}).num_labels == 2  # HF's default.
    assert hf_vision.ViTConfig.from_dict({"num_labels": 7}).num_labels == 7
    vit = hf_vision.ViTConfig.from_dict({"id2label": {"0": "cat", "1": "dog", "2": "owl"}, "image_size": 32})
    assert vit.num_labels == 3 and vit.id2label[2] == "owl" and vit.image_size == (32, 32)
    # Must agree with transformers on the same dict.
    theirs = transformers.ViTConfig(**{"id2label": {"0": "cat", "1": "dog", "2": "owl"}})
    assert theirs.num_labels == vit.num_labels


# ---------------------------------------------------------------------------------------------
# Transformations.


def test_modules_jit_and_differentiate(tmp_path):
    torch.manual_seed(0)
    one_layer = {"num_hidden_layers": 1}  # Gradients compile slowly on XLA:CPU; one block shows the point.
    config = transformers.CLIPConfig(
        vision_config={**VISION, **one_layer},
        text_config={**TEXT, **one_layer, "eos_token_id": 50},
        projection_dim=16,
    )
    _perturbed(transformers.CLIPModel(config)).save_pretrained(tmp_path / "clip")
    vit_config = _vit_config(image_size=30, patch_size=6, num_labels=5)
    vit_config.num_hidden_layers = 1
    _perturbed(transformers.ViTForImageClassification(vit_config)).save_pretrained(tmp_path / "vit")

    images = _nhwc(_images(2, 30, 30))
    ids, mask = (jnp.asarray(t.numpy()) for t in _token_batch(50, eot_id=50))
    clip, clip_variables, _ = hf_vision.load_clip(tmp_path / "clip")
    vit, vit_variables, _ = hf_vision.load_vit(tmp_path / "vit")

    def clip_loss(params):
        logits = clip.apply({"params": params}, images, ids[:2], mask[:2])["logits_per_image"]
        return -jnp.mean(jnp.diag(jax.nn.log_softmax(logits)))

    def vit_loss(params):
        logits = vit.apply({"params": params}, images)["logits"]
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    for loss, variables in ((clip_loss, clip_variables), (vit_loss, vit_variables)):
        value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
        chex.assert_tree_all_finite((value, grads))
        chex.assert_trees_all_equal_shapes(grads, variables["params"])
        assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))

    # bfloat16 compute stays close to float32.
    vit_bf16, _, _ = hf_vision.load_vit(tmp_path / "vit", dtype=jnp.bfloat16)
    both = jax.jit(lambda v: (vit.apply(v, images)["logits"], vit_bf16.apply(v, images)["logits"]))
    full, half = both(vit_variables)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.1)
