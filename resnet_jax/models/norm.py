"""Normalisation layers by name: batch norm (optionally over groups of the batch), group norm, none.

``make_norm(kind, ...)`` returns the ``norm`` a block is built with, or None for ``"none"``; a net
without normalisation then gives every conv a bias instead (see ``nets``). Both layers compute their
statistics in float32 whatever the compute dtype and name their parameters ``scale`` / ``bias`` as
flax does, so a ``"group"`` net has exactly the parameters of its ``"batch"`` twin.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

ModuleDef = Any

NORMS = ("batch", "group", "none")


class BatchNorm(nn.Module):
    """Batch norm whose batch statistics can cover groups of the batch.

    ``group_size=None`` (or 0): statistics over the whole (global) batch, the same
    as ``flax.linen.BatchNorm``; under ``jax.jit`` with the batch sharded over
    devices the mean over the batch axis is already global, no ``axis_name``.
    ``group_size=N``: each run of N consecutive examples is normalised with its
    own statistics, as on the paper's 2 GPUs x 64 images; the running averages
    are updated with the mean of the groups' statistics. A batch smaller than N
    is one group.

    Statistics and the normalisation are computed in float32 whatever the
    compute ``dtype``; parameters ``scale``/``bias`` and ``batch_stats``
    ``mean``/``var`` are float32 and named as in flax. The running variance is
    the biased batch variance, as in flax.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    group_size: int | None = None
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)

        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            y = x32 * mul + (bias - ra_mean.value * mul)
            return y.astype(self.dtype)

        n = x.shape[0]
        g = n if not self.group_size or self.group_size >= n else self.group_size
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of bn_group_size {g}")
        xg = x32.reshape((n // g, g) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))  # everything but the group and channel axes
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)  # two-pass: no cancellation
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (xg * mul + (bias - mean * mul)).reshape(x.shape)

        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(-1, c).mean(0)
            ra_var.value = m * ra_var.value + (1 - m) * var.reshape(-1, c).mean(0)
        return y.astype(self.dtype)


class GroupNorm(nn.Module):
    """Group norm (Wu & He 2018): per example, over H, W and groups of channels; no batch statistics,
    so training and evaluation compute the same function.

    ``num_groups`` = 32 as in the paper, or gcd(32, channels) for layers narrower than that (the
    16-channel CIFAR layers: 16 groups of one channel), so every CIFAR width works.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        groups = math.gcd(self.num_groups, c)
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups))
        axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)  # H, W and the channels of a group
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


def make_norm(kind: str, *, train: bool, dtype: Any, momentum: float = 0.9, epsilon: float = 1e-5,
              bn_group_size: int | None = None) -> ModuleDef | None:
    """The normalisation layer of a net (a module constructor taking ``name`` and ``scale_init``), or
    None for ``"none"``. ``train`` selects batch statistics (else the running averages)."""
    if kind == "batch":
        return functools.partial(BatchNorm, use_running_average=not train, momentum=momentum, epsilon=epsilon,
                                 group_size=bn_group_size or None, dtype=dtype)
    if kind == "group":
        return functools.partial(GroupNorm, epsilon=epsilon, dtype=dtype)
    if kind == "none":
        return None
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def normalize(norm: ModuleDef | None, x, name: str, **kwargs):
    """``norm(name=name, **kwargs)(x)``, or x itself in a net without normalisation."""
    return x if norm is None else norm(name=name, **kwargs)(x)
