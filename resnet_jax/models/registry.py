"""Nets by name: the families, the named nets (name -> (family, fields)), ``create_model`` and
``from_config`` (the net of a run's ``config.model``). Block types by name are ``blocks.BLOCKS``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from resnet_jax.models.nets import IMAGENET_STAGES, CifarResNet, ImageNetResNet, WideResNet

FAMILIES = {"cifar": CifarResNet, "imagenet": ImageNetResNet, "wrn": WideResNet}

_REGISTRY: dict[str, tuple[str, dict]] = {}
for _d in (20, 32, 44, 56, 110, 1202):
    _REGISTRY[f"resnet{_d}"] = ("cifar", {"depth": _d, "residual": True})
for _d in (20, 32, 44, 56, 110):
    _REGISTRY[f"plain{_d}"] = ("cifar", {"depth": _d, "residual": False})
for _d in IMAGENET_STAGES:
    _REGISTRY[f"resnet{_d}"] = ("imagenet", {"depth": _d, "residual": True})
    _REGISTRY[f"plain{_d}"] = ("imagenet", {"depth": _d, "residual": False})
# Pre-activation nets (He et al. 2016b). 110: option A, the twin of resnet110;
# 164/1001: bottleneck with projection shortcuts (no BN) as in the authors' code.
# (The flags, not block names: readers of a net's or a config's `preact` see the truth.)
_REGISTRY["preact_resnet110"] = ("cifar", {"depth": 110, "preact": True})
_REGISTRY["preact_resnet164"] = ("cifar", {"depth": 164, "preact": True, "bottleneck": True, "shortcut": "B"})
_REGISTRY["preact_resnet1001"] = ("cifar", {"depth": 1001, "preact": True, "bottleneck": True, "shortcut": "B"})
# Wide ResNets (WRN paper Table 4 / 5: WRN-40-4, WRN-16-8, WRN-28-10) and their plain twins.
for _d, _k in ((16, 8), (28, 10), (40, 4)):
    _REGISTRY[f"wrn{_d}_{_k}"] = ("wrn", {"depth": _d, "widen_factor": _k})
    _REGISTRY[f"plain_wrn{_d}_{_k}"] = ("wrn", {"depth": _d, "widen_factor": _k, "residual": False})

#: The registry names accepted by ``create_model`` (plus the families in ``FAMILIES``).
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def family_name(model: nn.Module) -> str:
    """The ``FAMILIES`` name of a net ("cifar", "imagenet", "wrn")."""
    return next(name for name, cls in FAMILIES.items() if type(model) is cls)


def create_model(name: str, *, num_classes: int | None = None, **overrides) -> nn.Module:
    """Build a registry model (``MODEL_NAMES``) or a family (``FAMILIES``: "cifar", "imagenet", "wrn").

    ``overrides`` set any module field, e.g. ``create_model("resnet56",
    residual=False, shortcut="B")``, ``create_model("cifar", depth=74, block="preact")`` or
    ``create_model("wrn", depth=16, widen_factor=4, norm="none")``.
    ``dtype`` may be a string ("float32", "bfloat16") or a jnp dtype. Raises
    ValueError (listing what is valid) for an unknown name or field or an
    impossible depth.
    """
    if name in FAMILIES:
        family, cfg = name, {}
    elif name in _REGISTRY:
        family, cfg = _REGISTRY[name]
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES + tuple(FAMILIES))}")
    cls = FAMILIES[family]
    valid = _fields(cls)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; valid fields: {', '.join(valid)}")
    cfg = {**cfg, **overrides}
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if "depth" not in cfg:
        raise ValueError(f"create_model({name!r}) needs depth=...")
    if "dtype" in cfg:
        try:
            cfg["dtype"] = jnp.dtype(cfg["dtype"])
        except TypeError as e:
            raise ValueError(f"invalid dtype {cfg['dtype']!r}: {e}") from None
    return cls(**cfg)


def from_config(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The net of a run's ``config.model`` (a ConfigDict, or the dict of a saved config.json).

    ``family`` names the family; every other entry is a field of it (configs written before
    blocks had names carry ``preact`` / ``bottleneck``, which still pick the block).
    ``bn_group_size`` 0 (or absent) means statistics over the global batch.
    """
    fields = {k: v for k, v in model_config.items() if k != "family"}
    fields["bn_group_size"] = fields.get("bn_group_size") or None
    return create_model(model_config["family"], num_classes=num_classes, **fields)
