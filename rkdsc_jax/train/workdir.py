"""What a workdir belongs to: the run's identity (``run.json``) and who is writing it (``run.lock``).

Identity.  ``run.json`` holds a sha256 fingerprint of the config fields that define a run
and the fields themselves, plus the fingerprints of the artifacts the run consumed (the
teacher, the search, the store, stage 1).  A run started in a workdir recorded for other
fields is refused with each differing field listed (:class:`ConfigMismatchError`), unless
``RKDSC_ALLOW_CONFIG_CHANGE=1`` is set: then the workdir deliberately continues under the new
config (logged, ``run.json`` rewritten).  Fields that do not change what a run computes are
left out (:data:`COSMETIC`).

Lock.  ``run.lock`` is created atomically (``O_CREAT | O_EXCL``) with the holder's pid and
host; a second run on the same workdir is refused with them (:class:`WorkdirLockedError`).  A
lock left by a dead process on this host is taken over with a warning.  The same process
may take a lock it holds again (pipelines lock their root and each stage).  In a multi-process
job, process 0 holds it for the job.  Remote workdirs
(``gs://``) have no atomic exclusive create: there the lock is not taken (logged once) and the
user must not start two runs on one remote workdir.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
import time
from typing import Any, Iterable, Mapping

import jax
from absl import logging
from etils import epath

from rkdsc_jax import files

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
ALLOW_ENV = "RKDSC_ALLOW_CONFIG_CHANGE"

# Config entries that never change what a run computes, so a rerun may change them freely: how
# often it logs and checkpoints, evaluation batch sizes (padding is masked), where its inputs
# live on disk, how many devices share the batch, what the export and latency modes do, and
# the mode (a stage run alone or in its pipeline is the same run).  A plain name matches that
# field in any section; a dotted one that field or section; a "/"-prefixed one a top-level entry.
COSMETIC = (
    "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_batch_size", "latency_repeats",
    "worker_count", "eval.batch_size", "data.data_dir", "teacher.cache_dir",
    # Where a consumed artifact lives; its fingerprint is among the run's inputs instead.
    "teacher.finetuned_dir", "store.directory", "stage2.init_from",
    "/mode", "/mesh", "/export", "/pipeline_dir", "/study_dir", "/compilation_cache", "/resume_anyway",
)


class ConfigMismatchError(ValueError):
    """A workdir recorded for another run."""


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir."""


# --- Identity ----------------------------------------------------------------------------


def _plain(config) -> Any:
    """A ConfigDict (or mapping) as plain JSON values (tuples as lists, as config.json has them)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=files.to_builtin))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _matches(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    for pattern in patterns:
        if pattern.startswith("/"):
            if parts[0] == pattern[1:]:
                return True
        elif "." in pattern:
            if name == pattern or name.startswith(pattern + "."):
                return True
        elif parts[-1] == pattern:
            return True
    return False


def run_fields(config, *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The config's identity fields, flattened to ``section.field``: all but :data:`COSMETIC` and
    ``exclude``; with ``only``, just those top-level sections or dotted fields."""
    flat = _flatten(_plain(config))
    only = tuple(only) if only is not None else None
    return {k: v for k, v in sorted(flat.items())
            if not _matches(k, COSMETIC + tuple(exclude))
            and (only is None or any(k == o or k.startswith(o + ".") for o in only))}


def fingerprint(fields: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> str:
    blob = json.dumps({"fields": fields, "inputs": dict(inputs or {})}, sort_keys=True, default=files.to_builtin)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def identity(config, *, only=None, exclude=(), inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"fingerprint", "fields", "inputs"}`` of a run (what ``run.json`` records)."""
    fields = run_fields(config, only=only, exclude=exclude)
    inputs = {k: inputs[k] for k in sorted(inputs or {})}
    return {"fingerprint": fingerprint(fields, inputs), "fields": fields, "inputs": inputs}


def recorded(workdir: epath.PathLike) -> dict[str, Any] | None:
    return files.read_json(epath.Path(workdir) / RUN_FILE)


def artifact_fingerprint(directory: epath.PathLike) -> str | None:
    """The fingerprint ``run.json`` records for a consumed artifact's run (None: not recorded)."""
    found = recorded(directory)
    return found.get("fingerprint") if found else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``field: old → new`` for every field both record with different values, and every
    differing input.  A field only one side has is not a difference: it was added to (or
    removed from) the configs since, and the run had its default."""
    lines = []
    a, b = old.get("fields") or {}, new.get("fields") or {}
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key]:
            lines.append(f"{key}: {_show(a[key])} → {_show(b[key])}")
    a, b = old.get("inputs") or {}, new.get("inputs") or {}
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"input {key}: {_short(a.get(key))} → {_short(b.get(key))}")
    return lines


def _short(value) -> str:
    return "none recorded" if value is None else (value[:12] if isinstance(value, str) else _show(value))


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) or value == "<absent>" else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def allow_change() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def mismatch(workdir: epath.PathLike, new: Mapping[str, Any]) -> list[str]:
    """The differing fields of ``workdir``'s recorded run against ``new`` ([] when it matches or
    records nothing)."""
    old = recorded(workdir)
    if old is None or old.get("fingerprint") == new["fingerprint"]:
        return []
    return differences(old, new)


def mismatch_message(workdir: epath.PathLike, diff: list[str]) -> str:
    shown = "; ".join(diff[:12]) + (f"; and {len(diff) - 12} more" if len(diff) > 12 else "")
    return (f"{workdir} holds a run of another config ({shown}). Start fresh with another --workdir (or delete "
            f"{workdir}), or continue it deliberately under the new config with {ALLOW_ENV}=1.")


def check_and_record(workdir: epath.PathLike, new: Mapping[str, Any], *, write: bool = True) -> None:
    """Refuses ``workdir`` when its ``run.json`` records another run; records ``new`` otherwise."""
    workdir = epath.Path(workdir)
    diff = mismatch(workdir, new)
    if diff:
        if not allow_change():
            raise ConfigMismatchError(mismatch_message(workdir, diff))
        logging.warning("%s=1: continuing %s under a changed config (%s).", ALLOW_ENV, workdir, "; ".join(diff))
    # A record is kept as it is otherwise: its fingerprint is what later stages recorded as their input.
    if write and (diff or recorded(workdir) is None):
        files.atomic_write_json(workdir / RUN_FILE, dict(new) | {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def move_aside(directory: epath.PathLike, reason: str) -> epath.Path:
    """Renames ``directory`` to ``<name>.superseded-<time>`` (nothing is deleted) and logs why."""
    directory = epath.Path(directory)
    target = directory.parent / f"{directory.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        target = directory.parent / f"{directory.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        n += 1
    directory.rename(target)
    logging.warning("%s was computed from other inputs (%s): moved to %s and computed again.", directory, reason,
                    target)
    return target


# --- Lock --------------------------------------------------------------------------------

_held: collections.Counter = collections.Counter()  # Lock paths this process holds, re-entrant.
_warned_remote = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Someone else's live process.
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` — refuses a second process on ``workdir`` (see the module doc)."""

    def __init__(self, workdir: epath.PathLike):
        self.workdir = epath.Path(workdir)
        self.path = os.path.abspath(os.fspath(self.workdir / LOCK_FILE)) if files.is_local(self.workdir) else None
        self.active = jax.process_index() == 0  # One job, one holder.

    def acquire(self) -> None:
        global _warned_remote
        if not self.active:
            return
        if self.path is None:
            if not _warned_remote:
                logging.warning("%s is remote: no workdir lock (start only one run on it at a time).", self.workdir)
                _warned_remote = True
            return
        if _held[self.path]:
            _held[self.path] += 1
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # Torn or vanished: try again.
                    self._remove()
                    continue
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    break  # Ours, from before a fork or a lost count: keep it.
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    logging.warning("Taking over %s: its holder, pid %s on %s (since %s), is no longer running.",
                                    self.path, holder.get("pid"), holder.get("host"), holder.get("since"))
                    self._remove()
                    continue
                raise WorkdirLockedError(
                    f"{self.workdir} is in use by another run: pid {holder.get('pid')} on host {holder.get('host')} "
                    f"(since {holder.get('since')}). Wait for it to finish, or use another --workdir; if that "
                    f"process is gone (a crashed machine), delete {self.path}.")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise WorkdirLockedError(f"Could not take {self.path}; delete it if no run uses {self.workdir}.")
        _held[self.path] += 1

    def _holder(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if not self.active or self.path is None or not _held[self.path]:
            return
        _held[self.path] -= 1
        if not _held[self.path]:
            del _held[self.path]
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self._remove()

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
