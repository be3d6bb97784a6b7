"""Network order as data: the layers and blocks of a net in the order the data flows through them.

Module names say nothing about order (``stage10`` sorts before ``stage2``, and a new family may
name its modules differently), so the order is read off the net itself: one abstract forward pass
records the modules in the order they are called (``nn.intercept_methods``), and the net's
``block_modules()`` says which top-level modules are blocks and how a scanned module's stacked
axis maps to block names. Nothing is computed (``jax.eval_shape``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from resnet_jax.models.counting import abstract_variables, default_input_shape


@dataclasses.dataclass(frozen=True)
class Located:
    """A layer or block: its name, the path to it in a variables / intermediates tree, and its index
    on the stacked axis of a scanned module (None: not stacked)."""

    name: str
    path: tuple[str, ...]
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class NetworkOrder:
    """``blocks``: every block; ``kernels``: every module with a kernel (conv, dense); both in network
    order, scanned modules split into their blocks (names as if unrolled: stage2_block3)."""

    blocks: tuple[Located, ...]
    kernels: tuple[Located, ...]


def module_calls(model: nn.Module, input_shape=None) -> list[tuple[str, ...]]:
    """Paths of the submodules an (abstract) forward pass calls, in the order of their first call."""
    input_shape = tuple(input_shape or default_input_shape(model))
    calls = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:
            calls.setdefault(tuple(context.module.path), None)
        return next_fun(*args, **kwargs)

    variables = abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return list(calls)


def _has_kernel(params, path) -> bool:
    for key in path:
        if key not in params:
            return False
        params = params[key]
    return "kernel" in params


def network_order(model: nn.Module, input_shape=None) -> NetworkOrder:
    """The blocks and kernels of ``model`` in network order (see the module docstring)."""
    params = abstract_variables(model, input_shape)["params"]
    modules = model.block_modules()
    stacked = {m.name: m.blocks for m in modules if m.scanned}
    blocks = tuple(
        Located(name, (m.name,), i if m.scanned else None) for m in modules for i, name in enumerate(m.blocks))
    by_module: dict[str, list[tuple[str, ...]]] = {}  # top-level module -> its kernels' paths, in call order
    for path in module_calls(model, input_shape):
        if _has_kernel(params, path):
            by_module.setdefault(path[0], []).append(path)
    kernels = []
    for top, paths in by_module.items():
        if top in stacked:
            kernels += [Located("/".join((name,) + p[1:]), p, i) for i, name in enumerate(stacked[top]) for p in paths]
        else:
            kernels += [Located("/".join(p), p) for p in paths]
    return NetworkOrder(blocks, tuple(kernels))
