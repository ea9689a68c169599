"""Orbax checkpoints of the train state together with the grain data-iterator position."""

from __future__ import annotations

from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rkdsc_jax import files


class Checkpointer:
    """Periodic, keep-N checkpoints of ``state`` and the data iterator.

    Restoring both resumes a run on exactly the batch it would have seen next.  Writes are
    atomic (orbax finalises a step directory only when complete), so a killed job never
    leaves a checkpoint that restores half-written.
    """

    def __init__(self, directory: epath.PathLike, max_to_keep: int = 3, async_save: bool = True):
        self.directory = files.absolute(directory)  # Local or gs://: Orbax writes both.
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, state: Any, data_iterator: grain.DatasetIterator | None = None,
                step: int | None = None) -> Any:
        """Restores into ``state``'s structure and shardings; advances ``data_iterator``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("Restored checkpoint at step %d from %s.", step, self.directory)
        return restored["state"]

    def restore_variables(self, step: int | None = None) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` of a saved state, without the optimiser or a template
        (for export and analysis; resuming a run needs :meth:`restore`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        # Onto this process's first device, whatever mesh the run was saved from.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        reader = ocp.CheckpointManager(self.directory, item_names=("state", "data"), item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})
        try:
            metadata = reader.item_metadata(step)["state"]
            abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
            restored = reader.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        finally:
            reader.close()
        restored = restored["state"]
        return {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
