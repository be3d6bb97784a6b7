"""Orbax checkpoints under ``workdir/checkpoints``: async save, auto-resume, restore onto any mesh.

A checkpoint holds the whole TrainState (params, batch statistics, optimizer state, step, data
RNG, warm-up state, the running metric sums) plus a small JSON item: the W&B run id, the best
test error and training time so far, the fields that define the run (``frozen``), the
``log_every`` of its metric sums, and a SHA-256 ``digest`` of the state's values.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous checkpoints intact and `latest_step` never sees the partial one.
Orbax does not checksum what it reads back, so a file damaged later (a bad disk, a truncated
copy) would restore silently: ``restore_latest`` recomputes the digest, and a checkpoint that
cannot be read or does not match is moved to ``workdir/checkpoints-damaged/`` (nothing is
deleted) and the previous complete one is used, with a one-line warning naming both.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from resnet_jax import sharding

DAMAGED_DIR = "checkpoints-damaged"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message says what to do."""


class NoUsableCheckpoint(RuntimeError):
    """Every checkpoint of a run is damaged."""


def digest(tree: Any) -> str:
    """SHA-256 of the values, dtypes, shapes and tree paths of a replicated state (as this host sees it)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(sharding.host_value(leaf) if isinstance(leaf, jax.Array) else np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _disk_full(e: BaseException) -> bool:
    while e is not None:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


def _quiet_closed_loop_callbacks() -> None:
    """After a failed write, TensorStore still calls back into Orbax's closed asyncio loop, and each call
    prints a traceback ('Event loop is closed') through sys.excepthook or sys.unraisablehook. The
    failure itself is reported in one line, so those (and only those) are not printed."""
    if getattr(sys.excepthook, "quiet_closed_loop", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, tb):
        if not _closed_loop(value):
            excepthook(kind, value, tb)

    def quiet_unraisablehook(unraisable):
        if not _closed_loop(unraisable.exc_value):
            unraisablehook(unraisable)

    quiet_excepthook.quiet_closed_loop = True
    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        _quiet_closed_loop_callbacks()
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save (the state's digest goes into `meta`); returns once the arrays are
        copied off the devices."""
        meta = {**meta, "digest": digest(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._writing(step):
            self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, list[str]]:
        """Restores into `abstract_state` (a TrainState of ShapeDtypeStructs with the target shardings).

        The shardings decide where arrays land, so a run saved on 8 devices restores on 2. A
        training metric added to the step since the checkpoint was saved is not in it: its
        interval sum starts at zero, and its name is returned (the third value) so the loop can
        leave the incomplete interval out of the logs. A metric removed since is dropped.
        Raises ValueError if the values do not match the digest saved with them.
        """
        saved_sums = self.manager.item_metadata(step)["state"].tree["sums"]
        wanted = abstract_state.sums
        replicated = next(iter(wanted.values())).sharding
        target = abstract_state.replace(sums={
            k: wanted.get(k, jax.ShapeDtypeStruct((), np.float32, sharding=replicated)) for k in saved_sums})
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        meta = dict(restored.meta or {})
        if "digest" in meta and digest(restored.state) != meta["digest"]:
            raise ValueError("its values do not match the checksum written when it was saved")
        filled = [k for k in wanted if k not in saved_sums]
        zero = lambda: sharding.put_replicated(np.zeros((), np.float32), replicated)
        sums = {k: restored.state.sums[k] if k in saved_sums else zero() for k in wanted}
        return restored.state.replace(sums=sums), meta, filled

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, list[str], int] | None:
        """(state, meta, filled metrics, step) of the newest checkpoint that restores intact; damaged
        newer ones are moved aside with a warning. None if there is no checkpoint at all."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            try:
                return (*self.restore(step, abstract_state), step)
            except Exception as e:  # noqa: BLE001 - whatever is wrong with the files, try the previous one
                problem = str(e) if isinstance(e, ValueError) and "checksum" in str(e) else \
                    f"it cannot be read: {_first_line(e)}"
            aside = self._set_aside(step)
            damaged.append(step)
            older = [s for s in steps if s < step]
            then = f"resuming from checkpoint {older[0]} instead" if older else "no older checkpoint is left"
            print(f"warning: checkpoint {step} in {self.directory} is damaged ({problem}); moved it to {aside}; "
                  f"{then}", flush=True)
        if damaged:
            raise NoUsableCheckpoint(
                f"every checkpoint in {self.directory} is damaged (steps {', '.join(map(str, damaged))}, moved to "
                f"{os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)}); re-run with --config.resume=false "
                "to start over (the old metrics are set aside, not deleted)")
        return None

    def _set_aside(self, step: int) -> str:
        """Moves checkpoint `step` out of the manager's folder (process 0, once every host has decided)."""
        aside = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        multihost_utils.sync_global_devices(f"checkpoint {step} damaged")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), aside)
        multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        """Blocks until pending async saves are on disk; call before exiting."""
        with self._writing(self.manager.latest_step()):
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager; a second call does nothing."""
        if self.manager is None:
            return
        manager, self.manager = self.manager, None
        try:
            with self._writing(manager.latest_step(), manager):
                manager.wait_until_finished()
        finally:
            try:
                manager.close()  # joins Orbax's writer threads, also after a failed save
            except Exception:  # noqa: BLE001 - the failure itself was reported above
                pass

    @contextlib.contextmanager
    def _writing(self, step, manager=None):
        """Turns a full disk during a save into one line that says what to do."""
        try:
            yield
        except Exception as e:
            if not _disk_full(e):
                raise
            manager = manager or self.manager
            complete = max((s for s in (manager.all_steps() if manager else []) if s != step), default=None)
            raise CheckpointWriteError(
                f"could not write checkpoint {step} in {self.directory}: no space left on device; free some space "
                f"and re-run the same command (it resumes from checkpoint {complete}, the newest complete one)") from None


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree` (e.g. from jax.eval_shape) placed on `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_variables(step_folder: str) -> tuple[dict, dict]:
    """(params, batch_stats) of one checkpoint step folder as host numpy arrays, whatever mesh saved
    it: what fine-tuning, weight export and the Fig. 7 measurements read from a run."""
    checkpointer = ocp.PyTreeCheckpointer()
    state_dir = os.path.join(step_folder, "state")
    tree = checkpointer.metadata(state_dir).item_metadata
    tree = getattr(tree, "tree", tree)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return state["params"], state.get("batch_stats", {})
