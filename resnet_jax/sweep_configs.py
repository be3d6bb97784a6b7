"""Which runs a config launches, and the exact config each run will train with: the part of the
sweep logic that resnet_jax.sweep (launch.sh's planner) and resnet_jax.wandb_sweep (W&B Sweeps)
share. A config module that defines ``get_sweep(arg) -> list[str]`` is a sweep: each of its runs is
``CONFIG:ARG,run=NAME``. Light: no jax, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from resnet_jax.config_args import load_config_module


class LaunchError(ValueError):
    """A launch that cannot go ahead; the message says what to do instead."""


# ----------------------------------------------------------------------------- configs


def split_spec(spec: str) -> tuple[str, str]:
    """``"configs/x.py:a=1,b"`` -> ``("configs/x.py", "a=1,b")`` (as ml_collections splits it)."""
    path, _, arg = spec.partition(":")
    return path, arg


def load_module(path: str):
    if not path.endswith(".py"):
        raise LaunchError(f"config {path!r} is not a Python file; configs are files such as configs/cifar10.py")
    try:
        return load_config_module(path)
    except FileNotFoundError as e:
        here = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(here) else []
        hint = f" (in {here}: {', '.join(known)})" if known else ""
        raise LaunchError(f"unknown config: {e}{hint}") from None


def _arg_items(arg: str) -> list[str]:
    return [s.strip() for s in arg.split(",") if s.strip()]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    config: str       # the --config= value of this run: path[:arg]
    subdir: bool      # True: the run lives in WORKDIR/name (sweep); False: in WORKDIR itself


def list_runs(spec: str) -> tuple[list[RunSpec], bool]:
    """The runs `spec` launches and whether it is a sweep.

    For a sweep config, ``run=NAME`` in the argument picks that one run of it.
    """
    path, arg = split_spec(spec)
    module = load_module(path)
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        if not hasattr(module, "get_config"):
            raise LaunchError(f"config {path!r} defines neither get_config nor get_sweep")
        return [RunSpec(name="", config=spec, subdir=False)], False
    items = _arg_items(arg)
    picked = [i.partition("=")[2].strip() for i in items if i.partition("=")[0].strip() == "run"]
    base = ",".join(i for i in items if i.partition("=")[0].strip() != "run")
    try:
        names = list(get_sweep(base or None))
    except ValueError as e:
        raise LaunchError(f"{spec}: {e}") from None
    if picked:
        unknown = [p for p in picked if p not in names]
        if unknown:
            raise LaunchError(f"{spec}: run={unknown[0]!r} is not in this sweep; valid: {', '.join(names)}")
        names = [n for n in names if n in picked]
    join = "," if base else ""
    return [RunSpec(name=n, config=f"{path}:{base}{join}run={n}", subdir=True) for n in names], True


def _check_override_names(config, overrides: Sequence[str]) -> None:
    """A clear error for ``--config.no.such.field`` (ml_collections says only ``AttributeError``)."""
    for o in overrides:
        m = re.match(r"^--(no)?config\.([A-Za-z0-9_.]+)(=.*)?$", o)
        if not m:
            raise LaunchError(f"bad override {o!r}: overrides look like --config.FIELD=VALUE, "
                              "e.g. --config.num_train_steps=2000 or --config.model.dtype=bfloat16")
        node, walked = config, []
        for part in m.group(2).split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = ".".join(walked) or "the config"
                raise LaunchError(f"bad override {o!r}: {where} has no field {part!r}; "
                                  f"fields: {', '.join(sorted(keys)) or '(none)'}")
            node, walked = node[part], walked + [part]


def resolve_config(config_spec: str, overrides: Sequence[str] = ()):
    """The ConfigDict `python -m resnet_jax.main --config=SPEC OVERRIDES` will train with."""
    from absl import flags
    from ml_collections import config_flags

    path, arg = split_spec(config_spec)
    module = load_module(path)
    try:
        base = module.get_config(arg or None) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as e:
        raise LaunchError(f"{config_spec}: {e}") from None
    _check_override_names(base, overrides)
    if not overrides:
        return base
    argv = ["launch", f"--config={config_spec}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:
        raise LaunchError(f"bad override: {str(e).splitlines()[0]}") from None
    return values.config
