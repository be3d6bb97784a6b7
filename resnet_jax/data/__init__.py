"""Datasets by name: ``get(config, mesh)`` returns the ``Dataset`` (data/base.py) of a run.

A new dataset is one line in ``REGISTRY`` when an existing kind fits it (e.g. a 32x32 TFDS set
held on the devices like CIFAR), or one module implementing the ``Dataset`` protocol plus one
line. A TFDS dataset that is not registered is streamed (JPEG ``image`` and ``label`` features)
and needs ``--config.num_classes``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from resnet_jax.data import cifar, tfds_stream
from resnet_jax.data.base import Dataset, Examples
from resnet_jax.data.tfds_prepare import DatasetDamagedError, DatasetUnavailableError

__all__ = ["Dataset", "DatasetDamagedError", "DatasetUnavailableError", "Examples", "REGISTRY", "get", "num_classes"]


@dataclasses.dataclass(frozen=True)
class Entry:
    load: Callable  # (config, mesh, num_classes) -> Dataset
    num_classes: int


REGISTRY: dict[str, Entry] = {
    "cifar10": Entry(cifar.load, 10),
    "cifar100": Entry(cifar.load, 100),
    "svhn_cropped": Entry(functools.partial(cifar.load, flip=False), 10),  # digits: crops, no flips
    "imagenet2012": Entry(tfds_stream.load, 1000),
    "imagenet2012_subset": Entry(tfds_stream.load, 1000),
    "imagenette": Entry(tfds_stream.load, 10),
}


def num_classes(dataset: str, override: int | None = None) -> int:
    """Classes of a registered dataset; any other TFDS image dataset needs `override`."""
    if override:
        return int(override)
    if dataset not in REGISTRY:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(REGISTRY)} (or any TFDS dataset with "
                         "'image' and 'label' features, streamed, with --config.num_classes=N)")
    return REGISTRY[dataset].num_classes


def get(config, mesh) -> Dataset:
    """The dataset of `config` on `mesh` (CIFAR-like sets on the devices, JPEG sets streamed)."""
    classes = num_classes(config.dataset, config.get("num_classes"))
    load = REGISTRY[config.dataset].load if config.dataset in REGISTRY else tfds_stream.load
    return load(config, mesh, classes)
