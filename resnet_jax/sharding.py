"""The device mesh and moving arrays between the hosts and it.

Data parallelism is `jax.jit` over a one-axis ``Mesh(('data',))`` of every device of every host:
batches are sharded ``P('data')``, the training state is replicated ``P()``.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def put_replicated(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Places a host array that is identical on every process onto `sharding` (works multi-host)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def host_value(x) -> np.ndarray:
    """A replicated global array as numpy, on any host."""
    return np.asarray(x.addressable_data(0))


def host_tree(tree):
    """`host_value` of every leaf of a replicated tree."""
    return jax.tree.map(host_value, tree)
