"""Start a run from a trained net: load its backbone, re-create the head if the classes differ.

``config.init_from`` names a run's workdir (its latest checkpoint), one checkpoint folder
(``WORKDIR/checkpoints/STEP``), or a weights file in torchvision's layout (``.safetensors`` or
``.pth``: published torchvision / timm weights, or our own exports; see resnet_jax.pretrained).
Parameters and batch statistics are copied by name; the classifier (``fc``) is kept only when
its shape still fits. A weights file is first checked against the run's model (depth, shortcut
option, v1/v1.5 bottlenecks), and refused in one line that says which setting to change; any
other mismatch is an error that names the parameters, so a wrong architecture never trains silently.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import optax
from flax import traverse_util

from resnet_jax import checkpointing, pretrained, run_dir, sharding

HEAD = "fc"
IMAGENET_STEM = (7, 7)  # the stem kernel of torchvision's (and our ImageNet) ResNets; CIFAR nets have 3x3
_BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")
_STACKED = re.compile(r"^stage(\d+)_blocks$")


class InitFromNotFound(ValueError, FileNotFoundError):
    """init_from names nothing there. A ValueError, so that main prints its one line instead of a traceback."""


def is_weights_file(path: str) -> bool:
    """A weights file (read by resnet_jax.pretrained), not a run's folder."""
    return os.path.isfile(path)


def check_init_from(path: str) -> None:
    """Refuses an init_from that names nothing (cheap: before any data or model is built)."""
    if not os.path.exists(path):
        raise InitFromNotFound(f"init_from={os.path.abspath(path)!r}: no such file or folder; give a weights file "
                               "(.safetensors, .pth), a run's workdir or WORKDIR/checkpoints/STEP")


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """(checkpoint step folder, step) from a workdir, its checkpoints/ folder, or one step folder."""
    path = os.path.abspath(path)
    check_init_from(path)
    found = run_dir.step_folder(path)
    if found:
        return found
    raise InitFromNotFound(f"init_from={path!r}: no checkpoint there; give a run's workdir, WORKDIR/checkpoints/STEP "
                           "or a weights file (.safetensors, .pth)")


def load_variables(path: str) -> tuple[dict, dict, int]:
    """(params, batch_stats, step) of a checkpoint as host numpy arrays, whatever mesh saved it."""
    folder, step = resolve_checkpoint(path)
    params, batch_stats = checkpointing.read_variables(folder)
    return params, batch_stats, step


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


# ----------------------------------------------------------------------------- weights files


def architecture(params: dict) -> dict:
    """What a params tree says of its net: {"imagenet": 7x7 stem?, "depth": torchvision depth or None,
    "shortcut": "A" (no projections), "B" (where the shape changes) or "C" (every block)}."""
    stages, projections = {}, []
    for name, sub in params.items():
        block, stacked = _BLOCK.match(name), _STACKED.match(name)
        if block:
            stage, index = int(block.group(1)), int(block.group(2))
            stages[stage] = max(stages.get(stage, 0), index)
            projections.append("proj_conv" in sub)
        elif stacked:  # blocks 2..n of a stage, stacked on axis 0
            count = int(np.shape(jax.tree.leaves(sub)[0])[0])
            stages[int(stacked.group(1))] = max(stages.get(int(stacked.group(1)), 0), count + 1)
            projections += ["proj_conv" in sub] * count
    stem = np.shape(params.get("stem_conv", {}).get("kernel", np.zeros((0, 0))))[:2]
    counts = tuple(stages.get(i, 0) for i in range(1, 5))
    bottleneck = "conv3" in params.get("stage1_block1", {})
    shortcut = "A" if not any(projections) else "C" if all(projections) else "B"
    depth = pretrained.depth_of(counts, bottleneck) if len(stages) == 4 else None
    return {"imagenet": tuple(stem) == IMAGENET_STEM, "depth": depth, "shortcut": shortcut}


def _imagenet_arg(depth: int) -> str:
    """The config argument for the net that torchvision's resnet{depth} weights fit (our 18/34 default to A)."""
    return f"--config=configs/imagenet.py:depth={depth}" + (",shortcut=B" if depth < 50 else "")


def weights_mismatch(info: pretrained.WeightsInfo, params: dict, model_config=None) -> str | None:
    """Why weights do not fit this run's model, as what to set; None if they fit.

    Depth, stem and shortcut option are read off the model's own params tree; residual and
    v1/v1.5 (same shapes either way) need the run's ``config.model``.
    """
    net = architecture(params)
    weights = f"resnet{info.depth} weights"
    if model_config is not None and not model_config.get("residual", True):
        return f"{weights} are a residual net; this run's model is plain (residual=false): use {_imagenet_arg(info.depth)}"
    if not net["imagenet"] or net["depth"] is None:
        return f"{weights} fit torchvision's ImageNet ResNets only; this run's model is none of them: " \
               f"use {_imagenet_arg(info.depth)}"
    if net["depth"] != info.depth:
        return f"{weights}; this run's model is resnet{net['depth']}: use {_imagenet_arg(info.depth)}"
    if net["shortcut"] != pretrained.SHORTCUT:
        return f"{weights} have projection shortcuts where the shape changes (option B); this run's model has " \
               f"option {net['shortcut']}: use --config=configs/imagenet.py:depth={info.depth},shortcut=B"
    stride = model_config.get("stride_in_3x3") if model_config is not None else None
    if pretrained.architectures()[info.depth][1] and stride is not None and bool(stride) != info.stride_in_3x3:
        version = "v1.5 (stride in the 3x3 conv)" if info.stride_in_3x3 else "v1 (stride in the first 1x1 conv)"
        return f"{weights} are {version} [{info.stride_source}]; this run's model is " \
               f"{'v1.5' if stride else 'v1'}: set --config.model.stride_in_3x3={str(info.stride_in_3x3).lower()}"
    return None


def load_weights_file(path: str, params: dict, model_config=None) -> tuple[dict, dict, dict]:
    """(params, batch_stats, report) of a weights file, in the layout of `params` (this run's model)."""
    try:
        weights, stats, info = pretrained.load(path, scan=pretrained.is_scanned(params))
    except ImportError as e:  # a .pth without torch: a ValueError, so that main prints the one line
        raise ValueError(str(e)) from None
    problem = weights_mismatch(info, params, model_config)
    if problem:
        raise ValueError(f"init_from={path}: {problem}")
    metadata = {k: v for k, v in info.metadata.items() if k != "format"}
    step = metadata.get("step")
    report = {"path": os.path.abspath(path), "step": int(step) if str(step).isdigit() else None,
              "weights": info.describe(), "normalization": info.normalization, "metadata": metadata}
    return weights, stats, report


def load_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(params, batch_stats, report) of a run's checkpoint."""
    params, stats, step = load_variables(path)
    return params, stats, {"path": os.path.abspath(path), "step": step}


# ----------------------------------------------------------------------------- the run's first state


def start_from_pretrained(state, path: str, sharding_, model_config=None) -> tuple[Any, dict]:
    """`state` with the backbone (and the head, where it fits) of the checkpoint or weights file at
    `path`, and a report for config.json: where it came from, what it is, which leaves were
    re-initialised. `model_config` (the run's ``config.model``) adds the checks that the params
    tree cannot make (v1/v1.5, plain nets)."""
    target_params = jax.device_get(state.params)
    if is_weights_file(path):
        params, stats, report = load_weights_file(path, target_params, model_config)
    else:
        params, stats, report = load_checkpoint(path)
    params, fresh = merge_pretrained(target_params, params, "parameters")
    stats, _ = merge_pretrained(jax.device_get(state.batch_stats), stats, "batch statistics")
    place = lambda tree: jax.tree.map(lambda a: sharding.put_replicated(np.asarray(a), sharding_), tree)
    report["reinitialized"] = fresh
    return state.replace(params=place(params), batch_stats=place(stats)), report
