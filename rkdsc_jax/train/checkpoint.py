"""Orbax checkpoints of the train state together with the grain data-iterator position,
with SHA-256 checksums of every file, verified before a step is trusted.

Orbax finalises a step only when it is complete, but it checks nothing on read: flipped
bytes in an array file restore as NaN or garbage without a word (Orbax's zarr3 layout
checksums only the shard index, not the data).  So each step also holds
``sha256sums.json``, the SHA-256 of each of its files, written into Orbax's temporary step
directory just before the rename that commits it (``AsyncOptions.post_finalization_callback``
runs there), so a committed step always carries its checksums.

On open, :meth:`Checkpointer.latest_step` is the newest step that verifies: a damaged one is
moved aside to ``<step>.damaged`` with a one-line warning and the run resumes from the next
newest intact step (resume stays exact: the lost steps are recomputed).  A committed step
without checksums (written before this format, or checksumming failed) is used with a
warning: its commit marker shows Orbax finished writing it, only its bytes are unchecked.
"""

from __future__ import annotations

import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from rkdsc_jax import files

SIDECAR = "sha256sums.json"
SIDECAR_FORMAT = "rkdsc_jax.checkpoint-sha256/1"
_STEP_METADATA = "_CHECKPOINT_METADATA"  # Every step Orbax finished has one.
# Orbax writes these when it commits, after the checksums; they hold no array data (the
# step metadata gets its commit time).
_UNHASHED = frozenset({SIDECAR, "commit_success.txt", _STEP_METADATA})


class CheckpointDamagedError(RuntimeError):
    """No intact checkpoint to restore (or the one asked for is damaged)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a model of another structure."""


class CheckpointRestoreError(RuntimeError):
    """Orbax or grain failed to restore a checkpoint that passed its checks."""


def _path_str(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple | None]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): (tuple(leaf.shape) if getattr(leaf, "shape", None) is not None else None)
            for p, leaf in leaves}


class Checkpointer:
    """Periodic, keep-N checkpoints of ``state`` and the data iterator, checksummed.

    Restoring both resumes a run on exactly the batch it would have seen next.  Writes are
    atomic (Orbax finalises a step directory only when complete), and every step records
    the SHA-256 of its files, verified before it is restored.  Opening one (unless
    ``read_only``) removes leftovers of killed writes: Orbax's temporary step directories
    and ``files.atomic_write_*`` temporaries.  ``verify=False`` skips hashing on read (for
    measuring its cost).
    """

    def __init__(self, directory: epath.PathLike, max_to_keep: int = 3, async_save: bool = True, *,
                 verify: bool = True, read_only: bool = False):
        self.directory = files.absolute(directory)  # Local or gs://: Orbax writes both.
        self.verify = verify
        self._async_save = async_save
        self._saving: int | None = None  # The step whose save is in flight.
        self._status: dict[int, tuple[str, str]] = {}  # step → (ok|unverified|damaged|stray, why)
        self._warned: set[int] = set()
        if not read_only and jax.process_index() == 0 and self.directory.is_dir():
            self._remove_leftovers()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                cleanup_tmp_directories=not read_only,
                # Always async (the hook below needs it); a sync save waits right after.
                enable_async_checkpointing=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._record_checksums),
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def _remove_leftovers(self) -> None:
        """Removes killed writes' leftovers before anything lists the directory (Orbax's own
        ``cleanup_tmp_directories`` runs in the background, and a test or a reader could
        see them meanwhile)."""
        removed = files.remove_temporaries(self.directory)
        for path in self.directory.iterdir():
            if ocp.step.TMP_DIR_SUFFIX in path.name and path.is_dir():
                try:
                    path.rmtree()
                except FileNotFoundError:  # Committed (renamed) meanwhile: not a leftover.
                    continue
                removed.append(path.name)
        if removed:
            logging.warning("Removed %s from %s: left by a killed write.", ", ".join(sorted(removed)), self.directory)

    # -- writing ----------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.wait_until_finished()  # Orbax would too; then ``_saving`` names one step.
        self._saving = int(step)
        self._status.pop(int(step), None)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self._async_save:
            self.wait()

    def _record_checksums(self) -> None:
        """Runs on the primary host once every file of the step is written, before Orbax
        renames its temporary directory into place: the checksums commit with the step."""
        step = self._saving
        try:
            pending = sorted(self.directory.glob(f"{step}{ocp.step.TMP_DIR_SUFFIX}*"))
            # Object stores have no rename: Orbax writes the final directory and a marker.
            path = pending[-1] if pending else self.directory / str(step)
            files.atomic_write_json(path / SIDECAR, {"format": SIDECAR_FORMAT, "step": step,
                                                     "files": files.sha256_tree(path, skip=_UNHASHED)})
        except Exception as e:  # noqa: BLE001 - a missing sidecar only costs verification.
            logging.warning("Could not record checksums of checkpoint step %s in %s (%s: %s); it will be "
                            "restored unverified.", step, self.directory, type(e).__name__, e)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()  # Waits for a save in flight: it commits, nothing is lost.

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:  # Also when leaving on an error: the save in flight commits and a rerun resumes from it.
            self.close()
        except Exception as close_error:  # noqa: BLE001
            if exc_type is None:
                raise
            # The error that stopped the run matters more.
            logging.warning("Could not finish the checkpoint in flight in %s while stopping on %s: %s: %s",
                            self.directory, exc_type.__name__, type(close_error).__name__, close_error)

    # -- checking ---------------------------------------------------------------------------

    def check_step(self, step: int) -> tuple[str, str]:
        """``(status, why)`` of a step: ``ok`` (checksums match), ``unverified`` (committed,
        no checksums), ``damaged`` or ``stray`` (an empty directory)."""
        step = int(step)
        if step not in self._status:
            self._status[step] = self._check(self.directory / str(step))
        return self._status[step]

    def _check(self, path: epath.Path) -> tuple[str, str]:
        if not path.is_dir():
            return "damaged", "its directory is missing"
        if not any(path.iterdir()):
            return "stray", "an empty directory"
        if not (path / _STEP_METADATA).exists():
            return "damaged", f"it has no {_STEP_METADATA}, so Orbax never finished writing it"
        sidecar = path / SIDECAR
        if not sidecar.exists():
            return "unverified", f"it has no {SIDECAR} (written before checksums, or recording them failed)"
        try:
            recorded = json.loads(sidecar.read_text())
            digests = recorded["files"]
        except (ValueError, KeyError, TypeError):
            return "damaged", f"its {SIDECAR} is not valid"
        if not self.verify:
            return "ok", "not verified (verify=False)"
        why = files.verify_sha256_tree(path, digests)
        return ("damaged", why) if why else ("ok", "checksums match")

    def _scan(self) -> tuple[int | None, list[tuple[int, str]]]:
        """The newest usable step and the damaged steps newer than it; strays are removed."""
        damaged, strays = [], []
        newest = None
        for step in sorted(self.manager.all_steps(), reverse=True):
            status, why = self.check_step(step)
            if status == "stray":
                logging.warning("Ignoring checkpoint directory %s: %s, not a checkpoint.", self.directory / str(step),
                                why)
                strays.append(step)
            elif status == "damaged":
                damaged.append((step, why))
            else:
                if status == "unverified":
                    self._warn_unverified(step, why)
                newest = step
                break
        if strays:
            if jax.process_index() == 0:
                for step in strays:
                    (self.directory / str(step)).rmdir()
                    self._status.pop(step, None)
            self._sync_and_reload()
        return newest, damaged

    def _warn_unverified(self, step: int, why: str) -> None:
        if step not in self._warned:
            self._warned.add(step)
            logging.warning("Checkpoint step %d in %s has no checksums (%s); using it unverified.", step,
                            self.directory, why)

    def latest_step(self) -> int | None:
        """The newest intact step (damaged newer ones are moved aside with a warning), or None
        when there is no checkpoint.  Raises :class:`CheckpointDamagedError` when every
        checkpoint is damaged."""
        self.wait()
        step, damaged = self._scan()
        if damaged and step is None:
            raise CheckpointDamagedError(
                f"Every checkpoint in {self.directory} is damaged ("
                + "; ".join(f"step {s}: {why}" for s, why in damaged)
                + f"). Delete {self.directory} to start this run from scratch.")
        for bad, why in damaged:
            aside = self._quarantine(bad)
            logging.warning("Checkpoint step %d in %s is damaged (%s); moved it to %s and falling back to step %d, "
                            "the newest intact one.", bad, self.directory, why, aside.name, step)
        if damaged:
            self._sync_and_reload()
        return step

    def _sync_and_reload(self) -> None:
        """After moving step directories: every process sees it before Orbax lists steps again."""
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rkdsc_jax.checkpoint.moved_steps")
        self.manager.reload()

    def _quarantine(self, step: int) -> epath.Path:
        """Moves a damaged step out of Orbax's sight (kept for inspection), so the run can
        write that step again."""
        source = self.directory / str(step)
        target, n = self.directory / f"{step}.damaged", 1
        while target.exists():
            target, n = self.directory / f"{step}.damaged-{n}", n + 1
        if jax.process_index() == 0:
            source.rename(target)
        self._status.pop(step, None)
        return target

    def _restorable(self, step: int | None, what: str) -> int:
        """``step`` (default: the newest intact) after checking it is intact."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No checkpoint in {self.directory}; train the run first (its {what} is "
                                        "read from there).")
            return step
        status, why = self.check_step(step)
        if status in ("damaged", "stray"):
            raise CheckpointDamagedError(f"Checkpoint step {step} in {self.directory} is damaged ({why}); "
                                         "restore another step, or delete it and rerun the training to rewrite it.")
        return int(step)

    # -- reading ----------------------------------------------------------------------------

    def _metadata(self, step: int):
        try:
            return self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds; the cause is named below.
            raise CheckpointRestoreError(f"Could not read the metadata of checkpoint step {step} in {self.directory}"
                                         f" ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                         "the checkpoint is unreadable: delete that step directory.") from e

    def _check_structure(self, step: int, target: Any) -> None:
        """Compares the saved tree with ``target`` before Orbax sees them, so a checkpoint of
        another model is named as such instead of failing deep in TensorStore."""
        saved, wanted = _shapes(self._metadata(step)), _shapes(target)
        problem = None
        for path, shape in wanted.items():
            if path not in saved:
                problem = f"{path} (shape {shape}) is in the model but not in the checkpoint"
            elif shape is not None and saved[path] is not None and shape != saved[path]:
                problem = f"{path} has shape {saved[path]} in the checkpoint but {shape} in the model"
            if problem:
                break
        if problem is None:
            extra = [p for p in saved if p not in wanted]
            if extra:
                problem = f"{extra[0]} (shape {saved[extra[0]]}) is in the checkpoint but not in the model"
        if problem:
            raise CheckpointMismatchError(
                f"Checkpoint step {step} in {self.directory} does not fit this model: {problem}. It was written by "
                "another model or config; use a new workdir for this one (or delete the checkpoints to start fresh).")

    def restore(self, state: Any, data_iterator: grain.DatasetIterator | None = None,
                step: int | None = None) -> Any:
        """Restores into ``state``'s structure and shardings; advances ``data_iterator``."""
        step = self._restorable(step, "state")
        self._check_structure(step, state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001
            raise self._restore_error(step, e) from e
        logging.info("Restored checkpoint at step %d from %s.", step, self.directory)
        return restored["state"]

    def _restore_error(self, step: int, e: Exception) -> CheckpointRestoreError:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return CheckpointRestoreError(f"Could not restore checkpoint step {step} from {self.directory}: "
                                      f"{type(e).__name__}: {first}. Its checksums matched, so it was written this "
                                      "way: check that the model, data pipeline and config are the run's own.")

    def restore_variables(self, step: int | None = None) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` of a saved state, without the optimiser or a template
        (for export and analysis; resuming a run needs :meth:`restore`).

        Reads the newest step and refuses it when damaged (never an older step silently: an
        export must come from the run's final state)."""
        if step is None:
            steps = [s for s in sorted(self.manager.all_steps(), reverse=True) if self.check_step(s)[0] != "stray"]
            if not steps:
                raise FileNotFoundError(f"No checkpoint in {self.directory}; train the run first.")
            step = steps[0]
            status, why = self.check_step(step)
            if status == "damaged":
                intact = [s for s in steps[1:] if self.check_step(s)[0] in ("ok", "unverified")]
                hint = (f"rerun the training to rewrite it (it resumes from step {intact[0]}), or pass step="
                        f"{intact[0]}" if intact else f"delete {self.directory} and train again")
                raise CheckpointDamagedError(f"The newest checkpoint, step {step} in {self.directory}, is damaged "
                                             f"({why}); {hint}.")
            if status == "unverified":
                self._warn_unverified(step, why)
        else:
            step = self._restorable(step, "variables")
        # Onto this process's first device, whatever mesh the run was saved from.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        metadata = self._metadata(step)
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # noqa: BLE001
            raise self._restore_error(step, e) from e
        restored = restored["state"]
        return {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
