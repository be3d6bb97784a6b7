"""What training, evaluation and diagnostics need of a dataset: the ``Dataset`` protocol.

Two kinds implement it: datasets held on the devices (``cifar.OnDeviceData``: CIFAR-10/100,
SVHN; each batch drawn and augmented inside the step) and datasets streamed from the hosts
(``tfds_stream.StreamedData``: ImageNet and other JPEG TFDS sets; decoded and cropped by
tf.data on every host). The step, the evaluator, diagnostics, evaluate and fine-tuning only use
what is written here, so a new kind of dataset is one new module that implements it plus one
line in ``resnet_jax.data.REGISTRY``.

The contract that keeps resume exact: the batch of step s depends only on (seed, s) (and, for
streamed data, the number of hosts), never on iterator state.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Protocol

import jax
import numpy as np


class Examples(NamedTuple):
    """Fixed, unaugmented examples (uint8 images) for diagnostics: the same for the whole run."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray


class Dataset(Protocol):
    num_classes: int
    num_train: int        # examples in the training split (all hosts)
    num_test: int         # examples in the split that test/ metrics are computed on
    test_split: str       # its TFDS name, for reports
    steps_per_epoch: int

    def train_inputs(self, start_step: int) -> Iterator[Any]:
        """What the jitted step receives at each step from `start_step` on (device arrays)."""

    def train_batch(self, inputs: Any, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Inside the step: (normalised, augmented float32 images [B, H, W, 3], int labels [B]) of
        step `step`, from one item of `train_inputs`; `rng` is the run's data key."""

    def normalize(self, images: jax.Array) -> jax.Array:
        """Inside jitted code: uint8 evaluation images -> the float32 inputs of the net."""

    def eval_batches(self) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """(uint8 images, labels, mask) batches, sharded over 'data', that cover the test split
        exactly once (mask 0 on padding). Images may be [B, K, H, W, 3]: K crops per example."""

    def fixed_examples(self, size: int) -> Examples:
        """The first `size` examples of each split, on every host, for diagnostics."""

    def runtime(self) -> dict:
        """What config.json's runtime record says of the data (sizes, steps per epoch)."""

    def notes(self, saved_runtime: dict) -> list[str]:
        """Lines to tell the user when a run starts or resumes (e.g. the data order changed)."""
