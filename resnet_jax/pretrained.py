"""Published ImageNet weights in, our trained nets out: torchvision-layout ResNet state dicts <-> our variables.

torchvision's (and timm's) ResNet-18..152 state dicts load into ``ImageNetResNet`` params and batch
statistics, and our trees export back to a torchvision-layout ``.safetensors`` that
``torchvision.models.resnetN().load_state_dict(..., strict=True)`` accepts. The mapping:

=============================================  ==============================================
torchvision                                    ours
=============================================  ==============================================
``conv1.weight`` (O, I, H, W)                  ``stem_conv/kernel`` (H, W, I, O)
``bn1.weight / bias``                          ``stem_bn/scale / bias`` (params)
``bn1.running_mean / running_var``             ``stem_bn/mean / var`` (batch_stats)
``bn1.num_batches_tracked``                    ignored (written as 0 on export)
``layerN.M.convK / bnK``                       ``stage{N}_block{M+1}/convK / bnK``
``layerN.M.downsample.0 / .1``                 ``.../proj_conv / proj_bn`` (shortcut option B)
``fc.weight`` (C, F), ``fc.bias``              ``fc/kernel`` (F, C), ``fc/bias``
=============================================  ==============================================

Scanned nets (resnet101/152 by default) hold blocks 2..n of a stage stacked on axis 0 under
``stage{N}_blocks``; ``load`` stacks and ``export_safetensors`` unstacks.

v1 or v1.5: a bottleneck's stride can sit in its first 1x1 conv (the paper's v1) or in its 3x3
conv (v1.5, torchvision's and timm's choice); both have the same shapes, so the keys cannot tell.
``load`` takes it from the file's metadata when we wrote the file, else assumes v1.5
(``stride_in_3x3=True``) as every torchvision / timm ResNet is; pass ``stride_in_3x3=False`` for
v1 weights (e.g. converted from the authors' Caffe models). It changes nothing for 18/34.

Inputs: torchvision weights expect RGB in [0, 1] normalised by ``IMAGENET_MEAN_RGB`` and
``IMAGENET_STD_RGB``; our own runs subtract the mean only (``normalize(images, kind)``).

Using them: ``--config.init_from=FILE`` fine-tunes from them (resnet_jax.finetune, which checks them
against the run's model first), ``python -m resnet_jax.evaluate --weights=FILE`` evaluates them.

CLI::

    python -m resnet_jax.pretrained info FILE                   # depth, classes, v1/v1.5, parameters
    python -m resnet_jax.pretrained export --workdir=RUN --out=FILE.safetensors
    python -m resnet_jax.pretrained convert IN.pth OUT.safetensors   # needs torch
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from resnet_jax import checkpointing, cli, models, run_dir

#: The torchvision ResNets (all of them ImageNet nets with option-B shortcuts).
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)
SHORTCUT = "B"
STEM_WIDTH = 64

#: Per-channel RGB mean and std of ImageNet in [0, 1] units: torchvision's weights were trained on
#: (x / 255 - mean) / std. Our own runs subtract the mean only (resnet_jax.data.tfds_stream, which uses
#: ``normalize`` below with the config's ``normalization``).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("mean", "torchvision")

#: Shown per kind of problem in an error before "(and N more)".
_SHOWN = 4


# ----------------------------------------------------------------------------- preprocessing


def normalize(images: Any, kind: str) -> jnp.ndarray:
    """uint8 RGB images (..., 3) -> float32 as a net expects them.

    ``"mean"``: [0, 1] minus the ImageNet mean (our runs, the paper's mean subtraction);
    ``"torchvision"``: then divided by the ImageNet std, as torchvision's and timm's weights need.
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalization kind must be one of {NORMALIZATIONS}, got {kind!r}")
    x = jnp.asarray(images).astype(jnp.float32) / 255.0 - jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)
    if kind == "torchvision":
        x = x / jnp.asarray(IMAGENET_STD_RGB, jnp.float32)
    return x


def normalization_of(metadata: Mapping[str, str]) -> str:
    """The ``normalize`` kind weights with this .safetensors metadata were trained on: what our exports
    record, else "torchvision" (published torchvision / timm weights carry no such entry)."""
    kind = metadata.get("normalization")
    return kind if kind in NORMALIZATIONS else "torchvision"


# ----------------------------------------------------------------------------- the layout


@dataclasses.dataclass(frozen=True)
class Slot:
    """One tensor of the layout: its torchvision key and shape, and where it lives in our (unscanned) trees."""

    torch_key: str
    collection: str  # "params" or "batch_stats"
    path: tuple[str, ...]
    torch_shape: tuple[int, ...]


@functools.cache
def architectures() -> dict[int, tuple[tuple[int, ...], bool]]:
    """depth -> (blocks per stage, bottleneck) of each torchvision ResNet, as our models define them."""
    nets = {d: models.create_model(f"resnet{d}") for d in TORCHVISION_DEPTHS}
    return {d: (tuple(net.stages()), bool(net.bottleneck)) for d, net in nets.items()}


def _conv(torch_key: str, path: tuple[str, ...], out_ch: int, in_ch: int, k: int) -> list[Slot]:
    return [Slot(f"{torch_key}.weight", "params", path + ("kernel",), (out_ch, in_ch, k, k))]


def _bn(torch_key: str, path: tuple[str, ...], ch: int) -> list[Slot]:
    return [
        Slot(f"{torch_key}.weight", "params", path + ("scale",), (ch,)),
        Slot(f"{torch_key}.bias", "params", path + ("bias",), (ch,)),
        Slot(f"{torch_key}.running_mean", "batch_stats", path + ("mean",), (ch,)),
        Slot(f"{torch_key}.running_var", "batch_stats", path + ("var",), (ch,)),
    ]


def _block(layer: int, index: int, in_ch: int, features: int, stride: int, bottleneck: bool) -> list[Slot]:
    """The slots of torchvision's ``layer{layer}.{index}`` (a BasicBlock or Bottleneck)."""
    t, ours = f"layer{layer}.{index}", (f"stage{layer}_block{index + 1}",)
    if bottleneck:  # 1x1, 3x3, 1x1 x4
        convs = [(features, in_ch, 1), (features, features, 3), (4 * features, features, 1)]
    else:
        convs = [(features, in_ch, 3), (features, features, 3)]
    slots = []
    for i, (out_ch, cin, k) in enumerate(convs, 1):
        slots += _conv(f"{t}.conv{i}", ours + (f"conv{i}",), out_ch, cin, k)
        slots += _bn(f"{t}.bn{i}", ours + (f"bn{i}",), out_ch)
    out_ch = convs[-1][0]
    if stride != 1 or in_ch != out_ch:  # option B: project where the shape changes
        slots += _conv(f"{t}.downsample.0", ours + ("proj_conv",), out_ch, in_ch, 1)
        slots += _bn(f"{t}.downsample.1", ours + ("proj_bn",), out_ch)
    return slots


def torchvision_layout(depth: int, num_classes: int) -> list[Slot]:
    """Every tensor of torchvision's ``resnet{depth}(num_classes=...)`` but ``num_batches_tracked``, in order."""
    if depth not in TORCHVISION_DEPTHS:
        raise ValueError(f"no torchvision ResNet of depth {depth}: valid depths are {TORCHVISION_DEPTHS}")
    stages, bottleneck = architectures()[depth]
    slots = _conv("conv1", ("stem_conv",), STEM_WIDTH, 3, 7) + _bn("bn1", ("stem_bn",), STEM_WIDTH)
    in_ch = STEM_WIDTH
    for layer, n in enumerate(stages, 1):
        features = STEM_WIDTH * 2 ** (layer - 1)
        for index in range(n):
            stride = 2 if layer > 1 and index == 0 else 1
            slots += _block(layer, index, in_ch, features, stride, bottleneck)
            in_ch = 4 * features if bottleneck else features
    slots.append(Slot("fc.weight", "params", ("fc", "kernel"), (num_classes, in_ch)))
    slots.append(Slot("fc.bias", "params", ("fc", "bias"), (num_classes,)))
    return slots


def bn_keys(slots: list[Slot]) -> list[str]:
    """The ``num_batches_tracked`` keys torchvision's state dict has beside the layout's BN tensors."""
    return [s.torch_key[: -len(".running_mean")] + ".num_batches_tracked" for s in slots
            if s.torch_key.endswith(".running_mean")]


# ----------------------------------------------------------------------------- tensor conversions


def _to_ours(array: np.ndarray) -> np.ndarray:
    """OIHW conv kernel -> HWIO, (out, in) fc weight -> (in, out); vectors as they are. float32."""
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def _to_torch(array: Any) -> np.ndarray:
    """The inverse of ``_to_ours``."""
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy array of a numpy/jax array or a torch tensor (float32 if floating: bf16 has no numpy dtype in torch)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        return value.numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------- scanned stages


_STACKED = re.compile(r"^stage(\d+)_blocks$")


def stack_scanned_blocks(tree: dict, stages: tuple[int, ...]) -> dict:
    """Unscanned layout -> scanned: blocks 2..n of each stage stacked on axis 0 under ``stage{i}_blocks``."""
    tree = dict(tree)
    for i, n in enumerate(stages, 1):
        blocks = [tree.pop(f"stage{i}_block{b}") for b in range(2, n + 1) if f"stage{i}_block{b}" in tree]
        if blocks:
            tree[f"stage{i}_blocks"] = _stack(blocks)
    return tree


def unstack_scanned_blocks(tree: dict) -> dict:
    """Scanned layout -> unscanned (``stage{i}_block{2..n}``); an unscanned tree comes back as it is."""
    out = {}
    for name, sub in tree.items():
        match = _STACKED.match(name)
        if not match:
            out[name] = sub
            continue
        leaves = traverse_util.flatten_dict(sub)
        for j in range(int(np.shape(next(iter(leaves.values())))[0])):
            block = {k: np.asarray(v)[j] for k, v in leaves.items()}
            out[f"stage{match.group(1)}_block{j + 2}"] = traverse_util.unflatten_dict(block)
    return out


def is_scanned(tree: Mapping) -> bool:
    """Whether a params (or batch_stats) tree has the scanned layout (``stage{i}_blocks``)."""
    return any(_STACKED.match(name) for name in tree)


def _stack(blocks: list[dict]) -> dict:
    flat = [traverse_util.flatten_dict(b) for b in blocks]
    return traverse_util.unflatten_dict({k: np.stack([f[k] for f in flat]) for k in flat[0]})


# ----------------------------------------------------------------------------- checks


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _shape(shape) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def layout_problems(present: Mapping[str, tuple], expected: Mapping[str, tuple]) -> list[str]:
    """'missing ...', 'unexpected ...' and 'K has shape S, expected E' phrases for an error line."""
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in present if k not in expected]
    misshaped = [f"{k} has shape {_shape(present[k])}, expected {_shape(expected[k])}"
                 for k in expected if k in present and tuple(present[k]) != tuple(expected[k])]
    problems = [f"missing {_listed(missing)}"] if missing else []
    problems += [f"unexpected {_listed(unexpected)}"] if unexpected else []
    return problems + misshaped[:_SHOWN] + ([f"and {len(misshaped) - _SHOWN} more misshaped"]
                                            if len(misshaped) > _SHOWN else [])


# ----------------------------------------------------------------------------- torchvision -> ours


_LAYER_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")


def block_counts(keys) -> tuple[tuple[int, ...], bool]:
    """(blocks in layer1..4, bottleneck?) read off torchvision-style keys."""
    counts = [0, 0, 0, 0]
    for key in keys:
        match = _LAYER_BLOCK.match(key)
        if match:
            layer, index = int(match.group(1)), int(match.group(2))
            counts[layer - 1] = max(counts[layer - 1], index + 1)
    bottleneck = any(_LAYER_BLOCK.match(k) and ".conv3." in k for k in keys)
    return tuple(counts), bottleneck


def depth_of(counts: tuple[int, ...], bottleneck: bool) -> int | None:
    """The torchvision ResNet with these blocks per stage (basic or bottleneck), or None."""
    return next((d for d, a in architectures().items() if a == (tuple(counts), bottleneck)), None)


def detect_depth(keys) -> int | None:
    """The torchvision ResNet whose blocks these keys have, or None."""
    return depth_of(*block_counts(keys))


def _clean(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """numpy values, without ``num_batches_tracked`` and without DataParallel's ``module.`` prefix."""
    keys = list(state_dict)
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    return {k[len(strip):]: _as_numpy(v) for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}


def _resolve_depth(state: dict, depth: int | None, source: str) -> tuple[int, int | None]:
    """(depth to load as, depth the keys look like)."""
    detected = detect_depth(state)
    if depth is None and detected is None:
        counts, bottleneck = block_counts(state)
        if not any(counts):
            raise ValueError(f"{source}: no torchvision ResNet keys (layer1.0.conv1.weight, ...) in it; "
                             f"its first keys: {_listed(list(state))}")
        kinds = ", ".join(f"resnet{d} {a[0]}" for d, a in architectures().items())
        raise ValueError(f"{source}: {'bottleneck' if bottleneck else 'basic'} blocks {counts} per layer match no "
                         f"torchvision ResNet ({kinds}); pass depth= to check it against one")
    return (depth or detected), detected


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What a set of weights is, and how to build the model they fit: ``info.create_model()``."""

    depth: int
    num_classes: int
    stride_in_3x3: bool  # True: v1.5 (stride in the 3x3 conv, torchvision/timm); no effect on 18/34
    stride_source: str  # where stride_in_3x3 came from: "argument", "file metadata" or "default (...)"
    scan: bool  # the layout of the returned trees (stage{i}_blocks stacked) and of the model to build
    num_params: int
    shortcut: str = SHORTCUT
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the .safetensors header's

    @property
    def model_name(self) -> str:
        return f"resnet{self.depth}"

    @property
    def normalization(self) -> str:
        """The ``normalize`` kind the weights expect: the file's metadata (our exports), else torchvision's."""
        return normalization_of(self.metadata)

    @property
    def model_kwargs(self) -> dict:
        """``models.create_model("imagenet", **info.model_kwargs)`` (or ``create_model(info.model_name, ...)``)."""
        return {"depth": self.depth, "num_classes": self.num_classes, "residual": True, "shortcut": self.shortcut,
                "stride_in_3x3": self.stride_in_3x3, "scan": self.scan}

    def create_model(self, **overrides):
        """The matching ``ImageNetResNet``; ``overrides`` (e.g. ``dtype``) go to ``models.create_model``."""
        return models.create_model("imagenet", **{**self.model_kwargs, **overrides})

    def describe(self) -> str:
        version = "v1.5 (stride in the 3x3 conv)" if self.stride_in_3x3 else "v1 (stride in the first 1x1 conv)"
        if not architectures()[self.depth][1]:
            version = "basic blocks (v1 = v1.5)"
        return (f"{self.model_name}: {self.num_classes} classes, {version} [{self.stride_source}], "
                f"{self.num_params:,} parameters, shortcut {self.shortcut}")


DEFAULT_STRIDE_SOURCE = "default (torchvision/timm weights are v1.5)"


def from_torchvision(state_dict: Mapping[str, Any], *, depth: int | None = None, stride_in_3x3: bool = True,
                     scan: bool | None = None, source: str = "state dict",
                     stride_source: str = "argument", metadata: Mapping[str, str] | None = None
                     ) -> tuple[dict, dict, WeightsInfo]:
    """(params, batch_stats, info) of a torchvision-layout ResNet state dict (numpy arrays or torch tensors).

    ``depth`` None: read off the keys; given: checked against them. ``scan``: the layout to return
    (None: the model's default, scanned for 101/152). Raises a one-line ValueError naming every
    missing, unexpected or misshaped tensor.
    """
    state = _clean(state_dict)
    depth, detected = _resolve_depth(state, depth, source)
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1000
    slots = torchvision_layout(depth, num_classes)
    problems = layout_problems({k: v.shape for k, v in state.items()}, {s.torch_key: s.torch_shape for s in slots})
    if problems:
        hint = f" (its keys are those of resnet{detected}: load it as that)" if detected not in (None, depth) else ""
        raise ValueError(f"{source}: resnet{depth} weights{hint}: " + "; ".join(problems))
    trees = {"params": {}, "batch_stats": {}}
    for slot in slots:
        trees[slot.collection][slot.path] = _to_ours(state[slot.torch_key])
    model = models.create_model(f"resnet{depth}", scan=scan)
    params, batch_stats = (traverse_util.unflatten_dict(trees[c]) for c in ("params", "batch_stats"))
    if model.use_scan:
        params, batch_stats = (stack_scanned_blocks(t, tuple(model.stages())) for t in (params, batch_stats))
    info = WeightsInfo(depth=depth, num_classes=num_classes, stride_in_3x3=bool(stride_in_3x3),
                       stride_source=stride_source, scan=bool(model.use_scan), num_params=models.count_params(params),
                       metadata=dict(metadata or {}))
    return params, batch_stats, info


# ----------------------------------------------------------------------------- files


def _file_kind(path: str) -> str:
    """"safetensors" or "torch", by the file's first bytes (names lie: .bin, .pt, .ckpt, ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(10)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first: the
    # length's low byte can be 0x80, which also opens a pickle.
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= os.path.getsize(path):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:2] == b"\x80\x02":  # torch.save's zip archive, or its legacy pickle
        return "torch"
    raise ValueError(f"{path}: neither a .safetensors nor a torch .pth file, or truncated "
                     f"(it starts with {head[:8]!r}); re-download or re-export it")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
            return tensors, dict(f.metadata() or {})
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path}: not a readable .safetensors file ({_one_line(e)}); "
                         "is it truncated? re-download or re-export it") from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional and heavy (~2 s, ~1 GB): only .pth files need it
    except ImportError:
        raise ImportError(f"{path}: reading a torch .pth file needs torch: pip install 'resnet_jax[torch]' "
                          "(or convert it to .safetensors where torch is installed)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise ValueError(f"{path}: not a readable torch state dict ({_one_line(e)}); is it truncated? "
                         "re-download it, or save model.state_dict() rather than the model") from None
    return {k: _as_numpy(v) for k, v in _unwrap_checkpoint(obj, path).items()}


def _unwrap_checkpoint(obj: Any, path: str) -> Mapping[str, Any]:
    """The state dict in a .pth: the file's dict itself, or its 'state_dict' / 'model' entry (training checkpoints)."""
    if isinstance(obj, Mapping) and all(hasattr(v, "shape") for v in obj.values()):
        return obj
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return _unwrap_checkpoint(obj[key], path)
    what = f"a dict with keys {_listed([str(k) for k in obj])}" if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{path}: holds {what}, not a state dict of tensors")


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by torchvision key, the .safetensors metadata or {}) of a .safetensors or torch .pth file."""
    path = os.fspath(path)
    if _file_kind(path) == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path), {}


def read_metadata(path: str) -> dict[str, str]:
    """The .safetensors header's metadata without reading a tensor ({} for a torch .pth file)."""
    path = os.fspath(path)
    if _file_kind(path) != "safetensors":
        return {}
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            return dict(f.metadata() or {})
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path}: not a readable .safetensors file ({_one_line(e)}); "
                         "is it truncated? re-download or re-export it") from None


def normalization_note(init_from: str | None, kind: str) -> str | None:
    """A line for a run that feeds the weights file `init_from` other inputs than they were trained on
    (None: the same ones, or `init_from` is no file, e.g. a run's folder)."""
    if not init_from or not os.path.isfile(init_from):
        return None
    expected = normalization_of(read_metadata(init_from))
    if expected == kind:
        return None
    return (f"init_from {init_from} was trained on normalization={expected!r} inputs; this run feeds {kind!r}: "
            f"add --config.normalization={expected} to feed it what it was trained on")


def _stride_from(metadata: Mapping[str, str], stride_in_3x3: bool | None) -> tuple[bool, str]:
    if stride_in_3x3 is not None:
        return bool(stride_in_3x3), "argument"
    if metadata.get("stride_in_3x3") in ("true", "false"):
        return metadata["stride_in_3x3"] == "true", "file metadata"
    return True, DEFAULT_STRIDE_SOURCE


def load(path: str, *, depth: int | None = None, stride_in_3x3: bool | None = None,
         scan: bool | None = None) -> tuple[dict, dict, WeightsInfo]:
    """(params, batch_stats, info) of a torchvision-layout ``.safetensors`` (numpy only) or ``.pth`` (needs torch).

    ``stride_in_3x3`` None: the file's metadata if we wrote it, else True (v1.5, as torchvision
    and timm weights). Build the model with ``info.create_model()``.
    """
    state, metadata = read_state_dict(path)
    stride, stride_source = _stride_from(metadata, stride_in_3x3)
    return from_torchvision(state, depth=depth, stride_in_3x3=stride, scan=scan, source=os.fspath(path),
                            stride_source=stride_source, metadata=metadata)


# ----------------------------------------------------------------------------- ours -> torchvision


def _our_depth(params: Mapping) -> int:
    """The torchvision depth of an (unscanned) params tree, by its blocks per stage."""
    counts = [0, 0, 0, 0]
    for name in params:
        match = re.match(r"^stage([1-4])_block(\d+)$", name)
        if match:
            counts[int(match.group(1)) - 1] = max(counts[int(match.group(1)) - 1], int(match.group(2)))
    bottleneck = "conv3" in params.get("stage1_block1", {})
    depth = depth_of(tuple(counts), bottleneck)
    if depth is None:
        known = "/".join(map(str, TORCHVISION_DEPTHS))
        raise ValueError(f"these variables are no torchvision ResNet: {'bottleneck' if bottleneck else 'basic'} "
                         f"blocks {tuple(counts)} per stage (torchvision has resnet{known})")
    return depth


def to_torchvision(params: Mapping, batch_stats: Mapping) -> dict[str, np.ndarray]:
    """torchvision's state dict (numpy, float32; ``num_batches_tracked`` = 0) of our ImageNet ResNet variables.

    Scanned or unrolled trees alike. Raises a one-line ValueError naming what does not fit torchvision's
    layout (e.g. option A/C shortcuts, a plain net, a CIFAR net).
    """
    trees = {"params": unstack_scanned_blocks(dict(params)), "batch_stats": unstack_scanned_blocks(dict(batch_stats))}
    if "fc" not in trees["params"] or "stem_conv" not in trees["params"]:
        raise ValueError("these variables are no ImageNet ResNet (no stem_conv/fc params): nothing to export")
    depth = _our_depth(trees["params"])
    flat = {(c,) + path: np.asarray(v) for c, t in trees.items() for path, v in traverse_util.flatten_dict(t).items()}
    num_classes = int(np.shape(flat[("params", "fc", "kernel")])[-1])
    slots = torchvision_layout(depth, num_classes)
    state, present = {}, {}
    for slot in slots:
        where = (slot.collection,) + slot.path
        if where in flat:
            state[slot.torch_key] = _to_torch(flat[where])
            present[slot.torch_key] = state[slot.torch_key].shape
    used = {(s.collection,) + s.path for s in slots}
    extra = ["/".join(k) for k in flat if k not in used]
    problems = layout_problems(present, {s.torch_key: s.torch_shape for s in slots})
    problems = [p.replace("missing ", "missing torchvision's ", 1) for p in problems]
    problems += [f"unexpected {_listed(extra)}"] if extra else []
    if problems:
        raise ValueError(f"resnet{depth} variables do not fit torchvision's layout (residual, shortcut option B): "
                         + "; ".join(problems))
    state.update({k: np.zeros((), np.int64) for k in bn_keys(slots)})
    return state


def export_safetensors(params: Mapping, batch_stats: Mapping, path: str, *, stride_in_3x3: bool | None = None,
                       metadata: Mapping[str, str] | None = None) -> WeightsInfo:
    """Write our variables as a torchvision-layout ``.safetensors`` (atomically); returns what was written.

    ``stride_in_3x3`` (when known) goes into the file's metadata, so ``load`` rebuilds a v1 net as
    v1; torchvision itself only has v1.5. ``metadata``: more str -> str entries for the header.
    """
    state = to_torchvision(params, batch_stats)
    depth = detect_depth(state)
    header = {"format": "pt", "arch": f"resnet{depth}", "num_classes": str(state["fc.bias"].shape[0]),
              "library": "resnet_jax", **(metadata or {})}
    if stride_in_3x3 is not None:
        header["stride_in_3x3"] = "true" if stride_in_3x3 else "false"
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    safetensors.numpy.save_file(state, tmp, metadata={k: str(v) for k, v in header.items()})
    os.replace(tmp, path)
    stride, source = _stride_from(header, stride_in_3x3)
    return WeightsInfo(depth=depth, num_classes=int(state["fc.bias"].shape[0]), stride_in_3x3=stride,
                       stride_source=source, scan=is_scanned(params),
                       num_params=models.count_params(dict(params)), metadata=header)


# ----------------------------------------------------------------------------- CLI


def _run_config(workdir: str) -> dict:
    """The run's config.json (in the workdir, or above a WORKDIR/checkpoints/STEP folder), or {}."""
    folder = os.path.abspath(workdir)
    for _ in range(3):
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        folder = os.path.dirname(folder)
    return {}


def export_run(workdir: str, out: str) -> WeightsInfo:
    """Export a run's latest checkpoint (or WORKDIR/checkpoints/STEP) as torchvision-layout safetensors."""
    config = _run_config(workdir)
    model = config.get("model", {})
    if model and (model.get("family") != "imagenet" or not model.get("residual", True)
                  or model.get("shortcut", SHORTCUT) != SHORTCUT):
        raise ValueError(f"{workdir}: a {model.get('family')} net (residual={model.get('residual')}, shortcut "
                         f"{model.get('shortcut')}) has no torchvision layout: only residual ImageNet nets with "
                         "shortcut B export")
    found = run_dir.step_folder(workdir)
    if found is None:
        raise ValueError(f"{workdir}: no checkpoint there; give a run's workdir or WORKDIR/checkpoints/STEP")
    params, batch_stats = checkpointing.read_variables(found[0])
    step = found[1]
    stride = model.get("stride_in_3x3")
    extra = {"step": str(step), "run": str(config.get("name", os.path.basename(os.path.abspath(workdir)))),
             "normalization": str(config.get("normalization", "mean"))}  # our runs subtract the mean only
    if config.get("dataset"):
        extra["dataset"] = str(config["dataset"])
    return export_safetensors(params, batch_stats, out, stride_in_3x3=stride, metadata=extra)


def _parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__, prog="python -m resnet_jax.pretrained")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="depth, classes, v1/v1.5 and parameter count of a weights file")
    info.add_argument("file")
    export = sub.add_parser("export", help="a run's checkpoint -> torchvision-layout .safetensors")
    export.add_argument("--workdir", required=True,
                        help="a run's workdir (its latest checkpoint) or WORKDIR/checkpoints/STEP")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    convert = sub.add_parser("convert", help="a .pth (or .safetensors) -> checked torchvision-layout .safetensors")
    convert.add_argument("src")
    convert.add_argument("out")
    convert.add_argument("--v1", action="store_true", help="the weights are v1 (stride in the first 1x1 conv)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            _, _, info = load(args.file)
            print(f"{args.file}: {info.describe()}")
            extra = {k: v for k, v in info.metadata.items() if k not in ("format",)}
            if extra:
                print(f"  metadata: {json.dumps(extra, sort_keys=True)}")
        elif args.command == "export":
            info = export_run(args.workdir, args.out)
            print(f"wrote {args.out}: {info.describe()}")
            if not info.stride_in_3x3 and architectures()[info.depth][1]:
                print("  note: v1 bottlenecks; torchvision's ResNets are v1.5, so torchvision computes another "
                      "function with these weights (resnet_jax.pretrained.load reads v1 back from the metadata)")
        else:
            params, batch_stats, info = load(args.src, stride_in_3x3=False if args.v1 else None)
            info = export_safetensors(params, batch_stats, args.out, stride_in_3x3=info.stride_in_3x3,
                                      metadata={"converted_from": os.path.basename(args.src)})
            print(f"wrote {args.out}: {info.describe()}")
    except (ValueError, ImportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
