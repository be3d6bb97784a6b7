"""Parse the `:key=value,...` argument of a config file (``configs/cifar10.py:depth=56,residual=false``).

Each config declares its accepted keys with typed defaults, so a typo or a bad value fails
at once with a one-line message listing what is valid.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(key: str, text: str, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"config argument {key}={text!r}: expected true or false")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"config argument {key}={text!r}: expected a number like {default!r}") from None
    return text


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any], flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Returns `defaults` updated from ``"key=value,key=value,flag"``.

    Bare words must be one of `flags` and are returned as ``{flag: True}``.
    """
    values = dict(defaults)
    values.update({f: False for f in flags})
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            if key not in flags:
                raise ValueError(
                    f"unknown config argument {key!r}; valid: {', '.join(list(defaults) + list(flags))}")
            values[key] = True
            continue
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid: {', '.join(list(defaults) + list(flags))}")
        values[key] = _convert(key, text.strip(), defaults[key])
    return values


def seed_runs(nets: Sequence[str], seeds: int) -> list[str]:
    """The run names of a sweep of `nets` over `seeds` seeds: the nets themselves for one seed (as
    before seeds existed), else ``NET/seed-K`` for K = 0..seeds-1, seed by seed, so that a sweep cut
    short has every net at the seeds it reached."""
    if seeds < 1:
        raise ValueError(f"config argument seeds={seeds}: expected 1 or more")
    if seeds == 1:
        return list(nets)
    return [f"{net}/seed-{k}" for k in range(seeds) for net in nets]


def split_seed(run: str) -> tuple[str, int | None]:
    """``"plain-56/seed-2"`` -> ``("plain-56", 2)``; ``"plain-56"`` -> ``("plain-56", None)``."""
    net, sep, seed = run.partition("/seed-")
    if sep and not seed.isdigit():
        raise ValueError(f"run={run!r}: expected NET/seed-K with K a number, e.g. plain-56/seed-2")
    return net, int(seed) if sep else None


def name_sweep_run(config, run: str, group: str) -> None:
    """Names a sweep's run so that W&B groups the sweep and aggregates the seeds of one net: group =
    the sweep, job type = the net, run name = `run`; a ``NET/seed-K`` run trains with seed K."""
    net, seed = split_seed(run)
    config.name = run
    config.wandb.group = group
    config.wandb.job_type = net
    if seed is not None:
        config.seed = seed


def load_config_module(path: str):
    """Imports a config file by path (configs are files, not a package: they may live anywhere)."""
    import importlib.util
    import pathlib

    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} not found; configs live in configs/, e.g. configs/cifar10.py")
    spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
