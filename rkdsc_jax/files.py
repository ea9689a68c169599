"""Files on any file system ``etils.epath`` reaches (local disks, ``gs://``): atomic writes
(a reader, or a crash, never sees half a file) and JSON reads.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import numpy as np
from etils import epath


def atomic_write_bytes(path: epath.PathLike, data: bytes) -> None:
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            try:  # Local files: on disk before the rename makes them visible.
                os.fsync(f.fileno())
            except (AttributeError, OSError, io.UnsupportedOperation):
                pass
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def atomic_write_text(path: epath.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_builtin(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy and jax arrays.
        return np.asarray(obj).tolist()
    raise TypeError(f"Cannot write {type(obj).__name__} as JSON.")


def atomic_write_json(path: epath.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=to_builtin) + "\n")


def read_json(path: epath.PathLike) -> Any | None:
    """The JSON object at ``path``, or None when there is no file."""
    path = epath.Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on a local disk (not ``gs://``, ``s3://`` or another URL)."""
    return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` made absolute against the working directory (Orbax wants that); ``gs://``
    paths already are."""
    path = epath.Path(path)
    return path if path.is_absolute() else epath.Path(os.path.abspath(path))
