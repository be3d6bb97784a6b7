"""Small image datasets held on the devices (CIFAR-10/100, SVHN): TFDS -> uint8 arrays on every device.

CIFAR is small (150 MB as uint8), so the whole training split lives on every device and each
training batch is gathered and augmented inside the jitted train step. The host is never the
bottleneck, and the batch at step s is a pure function of (seed, s): resuming needs no
iterator state.

The paper's recipe (section 4.2): per-pixel mean subtraction, 4 pixels of zero padding on each
side, a random 32x32 crop and a random horizontal flip (``flip=False`` for digits).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import sharding
from resnet_jax.data import array_cache, tfds_prepare
from resnet_jax.data.base import Examples

PAD = 4  # the paper: pad 4 px each side, random 32x32 crop


def split_names(val_split: bool) -> tuple[str, str]:
    """(train, test) TFDS splits; with val_split, the paper's 45k/5k split of the training set."""
    return ("train[:90%]", "train[90%:]") if val_split else ("train", "test")


def load_split(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, H, W, 3], labels int32 [N]) of one TFDS split (from the array cache
    when the prepared files are unchanged: no TensorFlow import)."""
    entry = array_cache.entry_path(dataset, split, data_dir)
    cached = array_cache.load(entry)
    if cached is not None:
        return cached
    images, labels = _read_tfds_split(dataset, split, data_dir)
    array_cache.save(entry, images, labels)
    return images, labels


def _read_tfds_split(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    builder = tfds_prepare.prepared_builder(dataset, data_dir)
    tfds = tfds_prepare.tfds()
    with tfds_prepare.reading(builder, split):
        chunks = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    return images.astype(np.uint8), labels.astype(np.int32)


@flax.struct.dataclass
class DeviceData:
    """A training split held on the devices: uint8 images and labels."""

    images: jax.Array  # uint8 [N, 32, 32, 3]
    labels: jax.Array  # int32 [N]

    @property
    def num_examples(self) -> int:
        return self.labels.shape[0]


def pixel_mean(images: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the training images in [0, 1] units (the paper subtracts it; no std)."""
    return (images.astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)


def to_device(images: np.ndarray, labels: np.ndarray, sharding_: jax.sharding.Sharding) -> DeviceData:
    return DeviceData(*(sharding.put_replicated(a, sharding_) for a in (images, labels)))


# ----------------------------------------------------------------------------- on-device training batches


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    if batch_size > num_examples:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
    return num_examples // batch_size


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Example indices of the batch at `step`: epoch e is a fresh permutation from (key, e).

    Each epoch visits every example at most once; the last incomplete batch is dropped.
    """
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, position = jnp.divmod(step, per_epoch)
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)


def normalize(images: jax.Array, mean) -> jax.Array:
    """uint8 images -> float32 in [0, 1] minus the per-pixel training mean."""
    return images.astype(jnp.float32) / 255.0 - mean


def augment(key: jax.Array, images: jax.Array, flip: bool = True) -> jax.Array:
    """The paper's augmentation: zero-pad 4 px (zero = the mean image), random crop, random flip."""
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * PAD + 1)
    crop = lambda image, yx: jax.lax.dynamic_slice(image, (yx[0], yx[1], 0), (h, w, c))
    images = jax.vmap(crop)(padded, offsets)
    if not flip:
        return images
    flipped = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flipped, images[:, :, ::-1, :], images)


def train_batch(data: DeviceData, key: jax.Array, step: jax.Array, batch_size: int, mean, flip: bool = True):
    """(images float32 [B, 32, 32, 3], labels [B]) for `step`: a pure function of (key, step)."""
    order_key, augment_key = jax.random.split(key)
    idx = batch_indices(order_key, step, data.num_examples, batch_size)
    images = normalize(data.images[idx], mean)
    return augment(jax.random.fold_in(augment_key, step), images, flip), data.labels[idx]


# ----------------------------------------------------------------------------- exact evaluation


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Pads the split to whole batches (mask = 0 on padding), so evaluation counts every example once."""
    n = len(labels)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = lambda a: a.reshape((num_batches, batch_size) + a.shape[1:])
    return shape(images), shape(labels), shape(mask)


# ----------------------------------------------------------------------------- the dataset, as training sees it


@dataclasses.dataclass(frozen=True)
class OnDeviceData:
    """A dataset held on the devices (see resnet_jax.data.base.Dataset)."""

    train: DeviceData
    test_batches: tuple       # ((images, labels, mask), ...) each sharded over 'data'
    mean: np.ndarray          # per-pixel training mean, a constant of the compiled programs
    num_classes: int
    num_train: int
    num_test: int
    batch_size: int
    test_split: str
    fixed: Examples           # the splits on the host, for diagnostics
    flip: bool = True

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_train, self.batch_size)

    def train_inputs(self, start_step: int) -> Iterator[DeviceData]:
        return itertools.repeat(self.train)  # the whole split; the step draws its batch

    def train_batch(self, inputs: DeviceData, rng, step):
        return train_batch(inputs, rng, step, self.batch_size, self.mean, self.flip)

    def normalize(self, images):
        return normalize(images, self.mean)

    def eval_batches(self):
        return iter(self.test_batches)

    def fixed_examples(self, size: int) -> Examples:
        return Examples(*(a[:size] for a in self.fixed))

    def runtime(self) -> dict:
        return {"num_train": self.num_train, "num_test": self.num_test}

    def notes(self, saved_runtime: dict) -> list[str]:
        return []


def build(train_images, train_labels, test_images, test_labels, *, num_classes: int, batch_size: int,
          eval_batch_size: int, mesh: jax.sharding.Mesh, test_split: str = "test", flip: bool = True) -> OnDeviceData:
    """Host arrays onto `mesh`: train replicated, test batches sharded over 'data'."""
    train = to_device(train_images, train_labels, sharding.replicated(mesh))
    batched = eval_batches(test_images, test_labels, eval_batch_size)
    batch = sharding.batch_sharded(mesh)
    test = tuple(tuple(sharding.put_replicated(a[i], batch) for a in batched) for i in range(len(batched[0])))
    fixed = Examples(train_images, train_labels, test_images)  # the host arrays (no copy), for diagnostics
    return OnDeviceData(train, test, pixel_mean(train_images), num_classes, len(train_labels), len(test_labels),
                        batch_size, test_split, fixed, flip)


def load(config, mesh: jax.sharding.Mesh, num_classes: int, flip: bool = True) -> OnDeviceData:
    """The train and test splits of `config.dataset` onto `mesh` (the 45k/5k split with val_split)."""
    train_split, test_split = split_names(config.val_split)
    train = load_split(config.dataset, train_split, config.data_dir)
    test = load_split(config.dataset, test_split, config.data_dir)
    return build(*train, *test, num_classes=num_classes, batch_size=config.batch_size,
                 eval_batch_size=config.eval_batch_size, mesh=mesh, test_split=test_split, flip=flip)
