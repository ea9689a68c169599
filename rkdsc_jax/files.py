"""Files on any file system ``etils.epath`` reaches (local disks, ``gs://``): atomic writes
(a reader, or a crash, never sees half a file), JSON reads that refuse damaged files, and the
removal of temporaries a killed write left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from typing import Any

import numpy as np
from etils import epath


# ``.<name>.<32 hex>.tmp``: the temporary of :func:`atomic_write_bytes`.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
CHECKSUM_KEY = "__sha256__"


class DamagedFileError(ValueError):
    """A file that must parse (JSON) is truncated, garbled or fails its checksum."""


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


def remove_temporaries(directory: epath.PathLike) -> list[str]:
    """Removes the ``.<name>.<hex>.tmp`` files a killed :func:`atomic_write_bytes` left in
    ``directory`` (not recursive); returns their names.  Call it only where no other process
    is writing (a locked workdir)."""
    directory = epath.Path(directory)
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def sha256_file(path: epath.PathLike) -> str:
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: epath.Path, prefix: str = ""):
    """(relative name, path) of every file under ``root`` (``rglob`` is refused on gs://)."""
    for path in sorted(root.iterdir()):
        name = f"{prefix}{path.name}"
        if path.is_dir():
            yield from _walk(path, name + "/")
        else:
            yield name, path


def sha256_tree(root: epath.PathLike, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{relative path: SHA-256 hex}`` of every file under ``root`` whose name is not in ``skip``."""
    return {name: sha256_file(path) for name, path in _walk(epath.Path(root)) if path.name not in skip}


def verify_sha256_tree(root: epath.PathLike, recorded: dict[str, str]) -> str | None:
    """None when every file of ``recorded`` (from :func:`sha256_tree`) is under ``root`` with its
    checksum, else what is wrong (the first missing or differing file)."""
    root = epath.Path(root)
    for name, expected in sorted(recorded.items()):
        path = root / name
        if not path.is_file():
            return f"file {name} is missing"
        if sha256_file(path) != expected:
            return f"file {name} does not match its recorded SHA-256"
    return None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def atomic_write_json(path: epath.PathLike, obj: Any, *, checksum: bool = False) -> None:
    """``obj`` as indented JSON.  ``checksum`` (a dict only) adds the SHA-256 of its content
    under ``"__sha256__"``, which :func:`read_json` verifies and removes: flipped bytes that
    still parse (a digit of an accuracy) are caught too."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=to_builtin)
    if checksum:
        if not isinstance(obj, dict):
            raise TypeError(f"checksum=True needs a dict to hold the checksum, got {type(obj).__name__}.")
        plain = json.loads(text)  # What a reader will parse: builtins only.
        plain.pop(CHECKSUM_KEY, None)
        text = json.dumps({**plain, CHECKSUM_KEY: _digest(plain)}, indent=2, sort_keys=True)
    atomic_write_text(path, text + "\n")


def read_json(path: epath.PathLike) -> Any | None:
    """The JSON value at ``path``, or None when there is no file.

    Raises :class:`DamagedFileError` (naming the file and the fix) when the file is not
    valid JSON or fails the checksum :func:`atomic_write_json` embedded: a torn or damaged
    result must never read as a finished one."""
    path = epath.Path(path)
    if not path.exists():
        return None
    fix = ("Delete it to have it written again (a stage whose summary.json is deleted is recomputed when the "
           "pipeline reruns).")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DamagedFileError(f"{path} is not UTF-8 text (byte {e.start}): it is damaged. {fix}") from None
    except json.JSONDecodeError as e:
        what = "empty" if not e.doc.strip() else f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        raise DamagedFileError(f"{path} is {what}: it was truncated or damaged. {fix}") from None
    if isinstance(value, dict) and CHECKSUM_KEY in value:
        recorded = value.pop(CHECKSUM_KEY)
        if recorded != _digest(value):
            raise DamagedFileError(f"{path} does not match the SHA-256 recorded when it was written: it was "
                                   f"damaged or edited. {fix}")
    return value


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on a local disk (not ``gs://``, ``s3://`` or another URL)."""
    return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` made absolute against the working directory (Orbax wants that); ``gs://``
    paths already are."""
    path = epath.Path(path)
    return path if path.is_absolute() else epath.Path(os.path.abspath(path))
