"""Orbax checkpoints under ``workdir/checkpoints``: async save, auto-resume, restore onto any mesh.

A checkpoint holds the whole TrainState (params, batch statistics, optimizer state, step, data
RNG, warm-up state, the running metric sums) plus a small JSON item (the W&B run id, the best
test error so far, the training time so far). Orbax
writes each step into a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous checkpoints intact and `latest_step` never sees the partial one.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import sharding


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save; returns once the arrays are copied off the devices."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, list[str]]:
        """Restores into `abstract_state` (a TrainState of ShapeDtypeStructs with the target shardings).

        The shardings decide where arrays land, so a run saved on 8 devices restores on 2. A
        training metric added to the step since the checkpoint was saved is not in it: its
        interval sum starts at zero, and its name is returned (the third value) so the loop can
        leave the incomplete interval out of the logs. A metric removed since is dropped.
        """
        saved_sums = self.manager.item_metadata(step)["state"].tree["sums"]
        wanted = abstract_state.sums
        replicated = next(iter(wanted.values())).sharding
        target = abstract_state.replace(sums={
            k: wanted.get(k, jax.ShapeDtypeStruct((), np.float32, sharding=replicated)) for k in saved_sums})
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        filled = [k for k in wanted if k not in saved_sums]
        zero = lambda: sharding.put_replicated(np.zeros((), np.float32), replicated)
        sums = {k: restored.state.sums[k] if k in saved_sums else zero() for k in wanted}
        return restored.state.replace(sums=sums), dict(restored.meta or {}), filled

    def wait(self) -> None:
        """Blocks until pending async saves are on disk; call before exiting."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager; a second call does nothing."""
        if self.manager is None:
            return
        self.manager.wait_until_finished()
        self.manager.close()
        self.manager = None


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree` (e.g. from jax.eval_shape) placed on `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
