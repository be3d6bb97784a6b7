"""Parse the `:key=value,...` argument of a config file (``configs/cifar10.py:depth=56,residual=false``).

Each config declares its accepted keys with typed defaults, so a typo or a bad value fails
at once with a one-line message listing what is valid.
"""
from __future__ import annotations

from typing import Any, Mapping

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
