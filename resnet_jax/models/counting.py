"""Sizes of a net without running it: parameters, multiply-adds (read off the traced jaxpr), and the
row of ``python -m resnet_jax.models``."""

from __future__ import annotations

import math

import jax
import jax.extend
import jax.numpy as jnp

from resnet_jax.models.nets import ImageNetResNet
from resnet_jax.models.registry import create_model, family_name


def count_params(params) -> int:
    """Number of scalars in a pytree (arrays or ``jax.ShapeDtypeStruct``s)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def default_input_shape(model) -> tuple[int, int, int, int]:
    return (1, 224, 224, 3) if isinstance(model, ImageNetResNet) else (1, 32, 32, 3)


def abstract_variables(model, input_shape=None):
    """``jax.eval_shape`` of ``model.init``: shapes only, nothing materialised."""
    input_shape = input_shape or default_input_shape(model)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _jaxpr_macs(jaxpr) -> int:
    """Multiply-adds of conv_general_dilated and dot_general in a jaxpr, through
    nested jaxprs (jit, custom_vjp, remat, ...) and scan (times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
        elif prim == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        mult = eqn.params.get("length", 1) if prim == "scan" else 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += mult * _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += mult * _jaxpr_macs(sub)
    return total


def count_macs(model, input_shape=None) -> int:
    """Multiply-adds per image of the forward pass (inference mode): every conv
    and dense layer, nothing else (BN, ReLU, additions, pooling are not counted,
    as in the paper's FLOPs). Analytic: read off the traced jaxpr, no compute."""
    input_shape = tuple(input_shape or default_input_shape(model))
    variables = abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _jaxpr_macs(closed.jaxpr) // input_shape[0]


def describe(name: str, **overrides) -> dict:
    """Layers, parameters and multiply-adds of a registry model (for Table 1 / 6, WRN Table 4)."""
    model = create_model(name, **overrides)
    params = count_params(abstract_variables(model)["params"])
    return {
        "name": name,
        "family": family_name(model),
        "block": model.block_name,
        "norm": model.norm,
        "layers": model.depth,
        "residual": model.residual,
        "shortcut": model.shortcut if model.residual else "-",
        "blocks": sum(model.stages()),
        "scan": model.use_scan,
        "params": params,
        "macs": count_macs(model),
    }
