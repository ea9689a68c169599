"""One interface for every teacher: preprocessing, ``features`` and ``logits``.

A :class:`Teacher` wraps a pretrained network (CLIP, ViT, EfficientNet-Lite) with
(1) its own preprocessing, done on device: resize to the teacher's resolution, grey→RGB,
the teacher's normalisation; (2) ``features(images)``, the semantic embedding students
and decoders learn to reproduce; (3) ``logits(images)`` from a head — the network's own
classifier, CLIP zero-shot class embeddings, or a linear probe fitted on the features.

Images given to a teacher are float (B, H, W, C) in [0, 1] or uint8, C ∈ {1, 3}.
``identity()`` names the teacher and hashes its weights, so stores of teacher outputs
can refuse to be read with another teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from rkdsc_jax.models import convert, hf_vision

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TeacherPreprocess:
    """Resize to ``image_size`` (an int, or (height, width); bicubic, antialiased), make 3
    channels, then (x − mean)/std on [0, 1] pixels."""

    image_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Array) -> Array:
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"Teacher inputs must be (B, H, W, 1 or 3) images, got shape {images.shape}.")
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        height, width = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,) * 2
        size = (x.shape[0], height, width, 3)
        if x.shape != size:
            x = jnp.clip(jax.image.resize(x, size, "bicubic", antialias=True), 0.0, 1.0)
        return (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)


CLIP_PREPROCESS_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1]: ViT-B/16 (google) and EfficientNet-Lite.


def params_sha256(variables: Any) -> str:
    """A hash of every array (keys, shapes, dtypes and bytes) in a variables pytree."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(variables), key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Teacher:
    """A frozen pretrained network with a preprocessing, a feature map and a head.

    ``feature_fn(variables, x)`` and ``head_fn(head_params, features)`` are pure;
    ``features``/``logits`` jit them once.  ``head_params`` is None when there is no head.
    """

    name: str
    variables: Any
    preprocess: TeacherPreprocess
    feature_fn: Callable[[Any, Array], Array]
    head_fn: Callable[[Any, Array], Array] | None = None
    head_params: Any = None
    head_kind: str = "none"
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        self._features = jax.jit(lambda v, images: self.feature_fn(v, self.preprocess(images)))
        self._logits = jax.jit(lambda v, h, images: self.head_fn(h, self.feature_fn(v, self.preprocess(images))))
        self._hash = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def features(self, images: Array) -> Array:
        return self._features(self.variables, images)

    def logits(self, images: Array) -> Array:
        if self.head_fn is None or self.head_params is None:
            raise ValueError(
                f"Teacher {self.name!r} has no classification head; fit one with fit_linear_probe(), "
                "or build a CLIP teacher with class_names for zero-shot logits."
            )
        return self._logits(self.variables, self.head_params, images)

    def with_head(self, head_fn, head_params, kind: str, class_names: Sequence[str]) -> "Teacher":
        return Teacher(self.name, self.variables, self.preprocess, self.feature_fn, head_fn, head_params,
                       kind, tuple(class_names))

    def identity(self) -> dict[str, Any]:
        """What a store of this teacher's outputs records, and checks on reading."""
        if self._hash is None:
            self._hash = params_sha256({"network": self.variables, "head": self.head_params})
        return {"name": self.name, "head": self.head_kind, "num_classes": self.num_classes,
                "image_size": self.preprocess.image_size, "params_sha256": self._hash}


def linear_head(params, features):
    return features @ params["kernel"] + params["bias"]


def efficientnet_lite0_teacher(cache_dir: str | None = None) -> Teacher:
    """ImageNet-pretrained EfficientNet-Lite0 (offline; see ``models.convert``): 1280-d features, its
    own 1000-way ImageNet classifier as the head."""
    module, variables = convert.load_efficientnet_lite0(cache_dir)
    fc = variables["params"]["fc"]
    body = {"params": {k: v for k, v in variables["params"].items() if k != "fc"},
            "batch_stats": variables["batch_stats"]}

    def feature_fn(v, x):
        return module.apply({"params": {**v["params"], "fc": fc}, "batch_stats": v["batch_stats"]}, x,
                            train=False, output="features")

    return Teacher("efficientnet-lite0/imagenet", body, TeacherPreprocess(224, *HALF_STATS), feature_fn,
                   linear_head, {"kernel": fc["kernel"], "bias": fc["bias"]}, "imagenet",
                   tuple(str(i) for i in range(1000)))


def vit_teacher(path_or_hub_id: str, image_stats=HALF_STATS) -> Teacher:
    """A HF ViTForImageClassification: CLS features after the final LayerNorm, its classifier as head."""
    module, variables, config = hf_vision.load_vit(path_or_hub_id)
    if "classifier" not in variables["params"]:
        raise ValueError(f"{path_or_hub_id} has no classifier head; fit_linear_probe() gives it one.")
    classifier = variables["params"]["classifier"]
    feature_module = hf_vision.ViTClassifier(dataclasses.replace(config, id2label={}), with_head=True)
    body = {"params": {k: v for k, v in variables["params"].items() if k != "classifier"}}

    def feature_fn(v, x):
        return feature_module.apply(v, x)["logits"]  # With no labels the head is the identity.

    names = tuple(config.id2label[i] for i in range(config.num_labels))
    return Teacher(f"vit:{path_or_hub_id}", body, TeacherPreprocess(tuple(config.image_size), *image_stats),
                   feature_fn, linear_head, dict(classifier), "vit-classifier", names)


def clip_teacher(path_or_hub_id: str, class_names: Sequence[str] = (), prompt: str = "a photo of a {}.",
                 tokenize: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None) -> Teacher:
    """CLIP's image embedding as features; zero-shot logits = 100 · cos(image, prompt) (SPEC §2).

    ``tokenize(texts) -> (input_ids, attention_mask)``; by default the ``tokenizer.json``
    shipped with the checkpoint, read with the ``tokenizers`` library.
    """
    module, variables, config = hf_vision.load_clip(path_or_hub_id)

    def feature_fn(v, x):
        return module.apply(v, x, method="encode_image")

    teacher = Teacher(f"clip:{path_or_hub_id}", variables,
                      TeacherPreprocess(config.vision.image_size, *CLIP_PREPROCESS_STATS), feature_fn)
    if not class_names:
        return teacher
    tokenize = tokenize or _checkpoint_tokenizer(path_or_hub_id, config.text.max_position_embeddings)
    ids, mask = tokenize([prompt.format(name) for name in class_names])
    text = module.apply(variables, jnp.asarray(ids), jnp.asarray(mask), method="encode_text")
    scale = jnp.exp(variables["params"]["logit_scale"])  # 100 for the OpenAI checkpoints.
    head = {"kernel": (scale * text).T, "bias": jnp.zeros(len(class_names))}
    return teacher.with_head(linear_head, head, "clip-zero-shot", class_names)


def _checkpoint_tokenizer(path_or_hub_id: str, max_length: int):
    from tokenizers import Tokenizer  # Rust tokenizers: no torch, no transformers.

    directory = hf_vision.resolve_checkpoint_dir(path_or_hub_id)
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no tokenizer.json; pass tokenize= to clip_teacher.")
    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length)

    def tokenize(texts):
        encodings = tokenizer.encode_batch(texts)
        return (np.asarray([e.ids for e in encodings], np.int32),
                np.asarray([e.attention_mask for e in encodings], np.int32))

    return tokenize


def fit_linear_probe(teacher: Teacher, features: Array, labels: Array, class_names: Sequence[str],
                     l2: float = 1e-4, steps: int = 200) -> Teacher:
    """Fits a softmax-regression head on precomputed teacher ``features`` (N, D).

    Features are standardised inside the head (mean/std folded into the kernel and bias),
    and the head is trained full-batch with optax's L-BFGS, which converges in a few
    hundred steps for the convex problem.
    """
    features = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    num_classes = len(class_names)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,); got {features.shape} and {labels.shape}.")
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}].")
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std

    def loss(p):
        logits = z @ p["kernel"] + p["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + l2 * jnp.sum(p["kernel"] ** 2)

    params = {"kernel": jnp.zeros((z.shape[1], num_classes)), "bias": jnp.zeros(num_classes)}
    solver = optax.lbfgs(learning_rate=None)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
            return (optax.apply_updates(params, updates), state), value

        (params, _), _ = jax.lax.scan(body, (params, solver.init(params)), None, length=steps)
        return params

    fitted = run(params)
    head = {"kernel": fitted["kernel"] / std[:, None], "bias": fitted["bias"] - (mean / std) @ fitted["kernel"]}
    return teacher.with_head(linear_head, head, "linear-probe", class_names)


# --- Fine-tuned weights (the fine-tuning run is experiments.common.teacher) -------------


def save_teacher_weights(teacher: Teacher, directory: epath.PathLike) -> None:
    """Writes the teacher's variables and head with Orbax (atomic) plus a JSON description."""
    import orbax.checkpoint as ocp

    from rkdsc_jax import files

    directory = files.absolute(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "weights", {"variables": teacher.variables, "head": teacher.head_params},
                          force=True)
    if jax.process_index() == 0:
        files.atomic_write_json(directory / "teacher.json",
                                teacher.identity() | {"class_names": list(teacher.class_names)})


def load_finetuned_teacher(template: Teacher, directory: epath.PathLike) -> Teacher:
    """Restores weights saved by ``save_teacher_weights`` into ``template``'s architecture.

    ``template`` is the pretrained teacher the fine-tuning started from (same loader).
    """
    import json

    import orbax.checkpoint as ocp

    from rkdsc_jax import files

    directory = files.absolute(directory)
    description = json.loads((directory / "teacher.json").read_text(encoding="utf-8"))
    class_names = description["class_names"]
    feature_dim = jax.eval_shape(
        lambda v: template.feature_fn(v, template.preprocess(jnp.zeros((1, 8, 8, 3)))), template.variables).shape[-1]
    # Restore everything where the template's weights live (not where the saving run had them).
    sharding = jax.tree.leaves(template.variables)[0].sharding
    abstract = {"variables": jax.tree.map(ocp.utils.to_shape_dtype_struct, template.variables),
                "head": {"kernel": jax.ShapeDtypeStruct((feature_dim, len(class_names)), jnp.float32,
                                                        sharding=sharding),
                         "bias": jax.ShapeDtypeStruct((len(class_names),), jnp.float32, sharding=sharding)}}
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / "weights", abstract)
    tuned = Teacher(description["name"], restored["variables"], template.preprocess, template.feature_fn)
    tuned = tuned.with_head(linear_head, restored["head"], "finetuned", class_names)
    if tuned.identity()["params_sha256"] != description["params_sha256"]:
        raise ValueError(f"{directory}: restored weights do not match the hash in teacher.json; "
                         "the files were modified or belong to another teacher.")
    return tuned
