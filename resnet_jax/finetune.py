"""Start a run from a trained net: load its backbone, re-create the head if the classes differ.

``config.init_from`` names a run's workdir (its latest checkpoint) or one checkpoint folder
(``WORKDIR/checkpoints/STEP``). Parameters and batch statistics are copied by name; the
classifier (``fc``) is kept only when its shape still fits. Anything else that does not match
is an error that names the parameters, so a wrong architecture never trains silently.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

from resnet_jax import run_dir, sharding

HEAD = "fc"


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoint step folder, step) from a workdir, its checkpoints/ folder, or one step folder."""
    path = os.path.abspath(path)
    workdir = os.path.dirname(path) if os.path.basename(path) == run_dir.CHECKPOINTS else path
    steps = run_dir.checkpoint_steps(workdir)
    if steps:
        return os.path.join(run_dir.checkpoint_dir(workdir), str(steps[-1])), steps[-1]
    if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
        return path, int(os.path.basename(path))
    raise FileNotFoundError(f"init_from={path!r}: no checkpoint there; give a run's workdir or WORKDIR/checkpoints/STEP")


def load_variables(path: str) -> tuple[dict, dict, int]:
    """(params, batch_stats, step) of a checkpoint as host numpy arrays, whatever mesh saved it."""
    folder, step = resolve_checkpoint(path)
    checkpointer = ocp.PyTreeCheckpointer()
    state_dir = os.path.join(folder, "state")
    tree = checkpointer.metadata(state_dir).item_metadata
    tree = getattr(tree, "tree", tree)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return state["params"], state.get("batch_stats", {}), step


def merge_pretrained(target: dict, source: dict, what: str) -> tuple[dict, list[str]]:
    """`target` with every leaf taken from `source`, except head leaves whose shape changed.

    Returns (merged tree, names of re-initialised head leaves). Raises ValueError naming the
    leaves that are missing, unexpected or of another shape outside the head.
    """
    flat_t = traverse_util.flatten_dict(target, sep="/")
    flat_s = traverse_util.flatten_dict(source, sep="/")
    merged, fresh, problems = {}, [], []
    for name, value in flat_t.items():
        is_head = name.split("/")[0] == HEAD
        if name not in flat_s:
            (fresh if is_head else problems).append(name if is_head else f"{name} missing in checkpoint")
            merged[name] = value
        elif np.shape(flat_s[name]) != np.shape(value):
            if is_head:
                fresh.append(name)
                merged[name] = value
            else:
                problems.append(f"{name} {np.shape(flat_s[name])} in checkpoint vs {np.shape(value)} here")
        else:
            merged[name] = np.asarray(flat_s[name], dtype=np.asarray(value).dtype)
    problems += [f"{name} only in checkpoint" for name in flat_s if name not in flat_t]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ValueError(f"the checkpoint's {what} do not match this model: {shown}")
    return traverse_util.unflatten_dict(merged, sep="/"), fresh


def param_labels(params: Any) -> Any:
    """'head' for the classifier's parameters, 'backbone' for the rest (for optax.multi_transform)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: "head" if k[0] == HEAD else "backbone" for k in flat})


def split_optimizer(head: optax.GradientTransformation, backbone: optax.GradientTransformation | None):
    """The head's optimizer, and the backbone's (None: frozen, its parameters never change)."""
    return optax.multi_transform({"head": head, "backbone": backbone or optax.set_to_zero()}, param_labels)


def start_from_pretrained(state, path: str, sharding_) -> tuple[Any, dict]:
    """`state` with the backbone (and the head, where it fits) of the checkpoint at `path`, and a
    report for config.json: where it came from and which leaves were re-initialised."""
    params, stats, step = load_variables(path)
    params, fresh = merge_pretrained(jax.device_get(state.params), params, "parameters")
    stats, _ = merge_pretrained(jax.device_get(state.batch_stats), stats, "batch statistics")
    place = lambda tree: jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), sharding_), tree)
    report = {"path": os.path.abspath(path), "step": step, "reinitialized": fresh}
    return state.replace(params=place(params), batch_stats=place(stats)), report
