"""Streamed JPEG datasets (ImageNet and any TFDS set with a JPEG 'image' and a 'label'): JPEGs
streamed from TFDS by tf.data on every host, fed as global arrays.

ImageNet (140 GB) cannot live on the devices as CIFAR does. Each host reads its own part of
every split (``tfds.even_splits``, as ``tfds.split_for_jax_process``), decodes and augments its
share of each batch on its CPUs, and the shares become one global batch sharded over 'data'
(``jax.make_array_from_process_local_data``). Normalisation (``config.normalization``: the
per-channel mean subtracted, or torchvision's mean and std for its weights) and the PCA colour
augmentation are cheap per-image arithmetic: they run on the devices, inside the train step.

The paper's augmentation (section 3.4): the image resized with its shorter side random in
[256, 480], a random 224x224 crop, a random horizontal flip. The host decodes only the window of
the JPEG that the crop covers and resizes it to 224x224 (the geometry of resizing the whole image
and then cropping, to within ~1.5 source pixels at the crop's far edge, and ~2x cheaper). Evaluation: the 224 centre crop
of the image resized to shorter side 256, or 10 crops (corners, centre and their flips).

Deterministic order, so that resume is exact: epoch e reads the host's files in an order and
through a shuffle buffer seeded by (seed, e, host), and each example's crop and flip are seeded
by (seed, e, host, its position in the epoch). The batch at step s is a function of (seed, s,
number of hosts): a resumed run skips the records of the steps already done (read, not decoded)
and continues bit-identically. On another number of hosts it continues with an equally valid
but different order.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import pretrained, sharding
from resnet_jax.data import tfds_prepare
from resnet_jax.data.base import Examples

# Per-channel ImageNet mean (and std), in [0, 1] units, kept in resnet_jax.pretrained with the
# normalisations (the paper subtracts a per-pixel mean; with random crops of random scale the two
# agree to within a few grey levels).
MEAN_RGB = pretrained.IMAGENET_MEAN_RGB
# AlexNet's PCA colour augmentation ("lighting"), RGB eigenvalues and eigenvectors of the ImageNet
# pixel covariance in [0, 1] units (as in fb.resnet.torch, which the paper's authors released).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
PCA_STD = 0.1


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Crop size and resize ranges (the paper's by default; smaller ones make tests cheap)."""

    image_size: int = 224
    min_resize: int = 256     # training: shorter side random in [min_resize, max_resize]
    max_resize: int = 480
    eval_resize: int = 256    # evaluation: shorter side, then the centre (or 10) image_size crops

    @classmethod
    def from_config(cls, config) -> Geometry:
        return cls(int(config.image_size), int(config.train_resize[0]), int(config.train_resize[1]),
                   int(config.eval_resize))

    def check(self) -> None:
        if not self.image_size <= self.min_resize <= self.max_resize:
            raise ValueError(f"need image_size <= train_resize[0] <= train_resize[1], got {self.image_size}, "
                             f"({self.min_resize}, {self.max_resize})")
        if self.eval_resize < self.image_size:
            raise ValueError(f"eval_resize {self.eval_resize} is smaller than image_size {self.image_size}")


# ----------------------------------------------------------------------------- geometry (TensorFlow, per image)


def _tf():
    """TensorFlow, imported late: `load` hides the GPUs from it first (tfds_prepare.tfds)."""
    import tensorflow as tf

    return tf


def image_shape(encoded):
    """(height, width) of an encoded image, reading only the header of a JPEG."""
    tf = _tf()
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))[:2])


def decode_window(encoded, window):
    """The (top, left, height, width) window of an encoded image, as uint8 RGB; a JPEG decodes only it."""
    tf = _tf()

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    return tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.decode_and_crop_jpeg(encoded, window, channels=3), other)


def source_window(height, width, short_side, top, left, size):
    """The window of the original image that a size x size crop at (top, left) of the image resized
    to shorter side `short_side` covers, rounded to whole pixels: (top, left, height, width)."""
    tf = _tf()
    scale = tf.cast(short_side, tf.float32) / tf.cast(tf.minimum(height, width), tf.float32)
    extent = tf.cast(tf.round(size / scale), tf.int32)
    crop_h, crop_w = tf.minimum(extent, height), tf.minimum(extent, width)
    y = tf.minimum(tf.cast(tf.round(tf.cast(top, tf.float32) / scale), tf.int32), height - crop_h)
    x = tf.minimum(tf.cast(tf.round(tf.cast(left, tf.float32) / scale), tf.int32), width - crop_w)
    return tf.stack([y, x, crop_h, crop_w])


def resized_size(height, width, short_side):
    """(height, width) of the image resized so that its shorter side is `short_side`."""
    tf = _tf()
    scale = tf.cast(short_side, tf.float32) / tf.cast(tf.minimum(height, width), tf.float32)
    return (tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32),
            tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))


def _to_uint8(image):
    tf = _tf()
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image, size: int):
    tf = _tf()
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def resized_crop(encoded, short_side, top, left, size: int, shape=None):
    """The size x size crop at (top, left) of the image resized to shorter side `short_side`:
    float32 [size, size, 3]. Only the window it covers is decoded and resized. `shape`: the
    image's (height, width) if already read."""
    tf = _tf()
    height, width = tf.unstack(image_shape(encoded) if shape is None else shape)
    crop = decode_window(encoded, source_window(height, width, short_side, top, left, size))
    return _resize(tf.cast(crop, tf.float32), size)


def train_image(encoded, seed, geometry: Geometry):
    """The paper's training crop of one image: uint8 [S, S, 3]. `seed`: int64 [2], stateless."""
    tf = _tf()
    s_short, s_top, s_left, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    height, width = tf.unstack(image_shape(encoded))
    short = tf.random.stateless_uniform([], s_short, geometry.min_resize, geometry.max_resize + 1, tf.int32)
    new_h, new_w = resized_size(height, width, short)
    size = geometry.image_size
    top = tf.random.stateless_uniform([], s_top, 0, tf.maximum(new_h - size, 0) + 1, tf.int32)
    left = tf.random.stateless_uniform([], s_left, 0, tf.maximum(new_w - size, 0) + 1, tf.int32)
    image = resized_crop(encoded, short, top, left, size, shape=(height, width))
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    return _to_uint8(image)


def eval_image(encoded, geometry: Geometry):
    """The centre image_size crop of the image resized to shorter side eval_resize: uint8 [S, S, 3]."""
    height, width = _tf().unstack(image_shape(encoded))
    new_h, new_w = resized_size(height, width, geometry.eval_resize)
    size = geometry.image_size
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return _to_uint8(resized_crop(encoded, geometry.eval_resize, top, left, size, shape=(height, width)))


def ten_crop_images(encoded, geometry: Geometry):
    """The 10 crops of the paper's 10-crop testing: 4 corners and centre, and their flips: uint8 [10, S, S, 3]."""
    tf = _tf()
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    height, width = tf.unstack(tf.shape(image)[:2])
    new_h, new_w = resized_size(height, width, geometry.eval_resize)
    resized = tf.image.resize(tf.cast(image, tf.float32), (new_h, new_w), method="bilinear", antialias=True)
    size = geometry.image_size
    corners = [(0, 0), (0, new_w - size), (new_h - size, 0), (new_h - size, new_w - size),
               ((new_h - size) // 2, (new_w - size) // 2)]
    crops = [tf.image.crop_to_bounding_box(resized, y, x, size, size) for y, x in corners]
    crops += [tf.image.flip_left_right(c) for c in crops]
    return _to_uint8(tf.stack(crops))


# ----------------------------------------------------------------------------- splits and hosts


def host_split(split: str, process_index: int, process_count: int):
    """This host's part of `split` (TFDS even split: sizes differ by at most one example)."""
    tfds = tfds_prepare.tfds()
    return tfds.even_splits(split, process_count)[process_index] if process_count > 1 else split


def count_examples(builder, split) -> int:
    """Examples in a (sub)split: from the dataset's metadata, else (mock data) by reading the records."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError, AttributeError):
        tfds = tfds_prepare.tfds()
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def host_sizes(builder, split, process_count: int) -> list[int]:
    return [count_examples(builder, host_split(split, i, process_count)) for i in range(process_count)]


def epoch_seed(seed: int, epoch: int, process_index: int) -> int:
    """A well-mixed 31-bit seed for one host's epoch."""
    return int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0] >> 1)


def records(builder, split, *, shuffle_seed: int | None):
    """(encoded image, label) records of a split, files in a seeded order (or in order if None)."""
    tfds = tfds_prepare.tfds()
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def train_epoch_dataset(builder, split, *, seed: int, epoch: int, skip_batches: int, host_batch: int,
                        steps_per_epoch: int, geometry: Geometry, process_index: int, process_count: int,
                        shuffle_buffer: int):
    """One host's batches of one epoch, from batch `skip_batches` on: (uint8 [b, S, S, 3], int32 [b])."""
    tf = _tf()
    key = epoch_seed(seed, epoch, process_index)
    ds = records(builder, host_split(split, process_index, process_count), shuffle_seed=key)
    ds = ds.shuffle(shuffle_buffer, seed=key, reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch * host_batch).enumerate().skip(skip_batches * host_batch)

    def prepare(position, record):
        image, label = record
        seed_pair = tf.stack([tf.constant(key, tf.int64), position])
        return train_image(image, seed_pair, geometry), tf.cast(label, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_host_batches(builder, split, *, start_step: int, steps_per_epoch: int, **kwargs) -> Iterator:
    """One host's training batches from `start_step` on, forever, as numpy."""
    tfds = tfds_prepare.tfds()
    epoch, position = divmod(start_step, steps_per_epoch)
    while True:
        ds = train_epoch_dataset(builder, split, epoch=epoch, skip_batches=position,
                                 steps_per_epoch=steps_per_epoch, **kwargs)
        with tfds_prepare.reading(builder, split):
            yield from tfds.as_numpy(ds)
        epoch, position = epoch + 1, 0


def eval_dataset(builder, split, *, host_batch: int, num_batches: int, num_examples: int, geometry: Geometry,
                 process_index: int, process_count: int, ten_crop: bool = False):
    """One host's evaluation batches (images, labels, mask), padded with mask 0 to `num_batches`."""
    tf = _tf()
    prepare = ten_crop_images if ten_crop else eval_image
    ds = records(builder, host_split(split, process_index, process_count), shuffle_seed=None)
    ds = ds.map(lambda image, label: (prepare(image, geometry), tf.cast(label, tf.int32), tf.constant(1.0)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shape = ((10,) if ten_crop else ()) + (geometry.image_size, geometry.image_size, 3)
    padding = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32), tf.constant(0.0)))
    ds = ds.concatenate(padding.repeat(num_batches * host_batch - num_examples))
    return ds.batch(host_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- on the devices


def normalize(images: jax.Array, kind: str = "mean") -> jax.Array:
    """uint8 images -> float32: [0, 1] minus the per-channel ImageNet mean ("mean"), then divided by
    the ImageNet std ("torchvision", what torchvision's weights expect)."""
    return pretrained.normalize(images, kind)


def lighting(key: jax.Array, images: jax.Array, std: float = PCA_STD, kind: str = "mean") -> jax.Array:
    """AlexNet's PCA colour augmentation: each image shifted by a random combination of the RGB
    principal components (weights ~ N(0, std) times the eigenvalues), in the units of `kind`'s images."""
    alpha = jax.random.normal(key, (images.shape[0], 3)) * std
    shift = (alpha * jnp.asarray(PCA_EIGVAL)) @ jnp.asarray(PCA_EIGVEC).T
    if kind == "torchvision":  # the shift is in [0, 1] units; these images are divided by the std
        shift = shift / jnp.asarray(pretrained.IMAGENET_STD_RGB)
    return images + shift[:, None, None, :].astype(images.dtype)


def device_batch(inputs, rng, step, color_augmentation: bool, normalization: str = "mean"):
    """What the step does to a decoded batch: normalisation and the optional PCA colour
    augmentation (seeded by (seed, step))."""
    images, labels = inputs
    images = normalize(images, normalization)
    if color_augmentation:
        images = lighting(jax.random.fold_in(jax.random.fold_in(rng, 1), step), images, kind=normalization)
    return images, labels


def check_normalization(kind: str) -> str:
    """`kind`, if it is one of pretrained.NORMALIZATIONS (a mistyped one would fail inside the jitted step)."""
    if kind not in pretrained.NORMALIZATIONS:
        raise ValueError(f"normalization={kind!r}: use --config.normalization=mean (our runs) or =torchvision "
                         "(torchvision / timm weights)")
    return kind


# ----------------------------------------------------------------------------- the dataset, as training sees it


@dataclasses.dataclass
class StreamedData:
    """A streamed dataset (see resnet_jax.data.base.Dataset): sizes and splits resolved, nothing read yet."""

    builder: Any
    train_split: str
    test_split: str
    num_classes: int
    num_train: int
    num_test: int
    steps_per_epoch: int
    geometry: Geometry
    mesh: jax.sharding.Mesh
    batch_size: int
    eval_batch_size: int
    seed: int
    shuffle_buffer: int
    ten_crop: bool = False
    color_augmentation: bool = False
    test_host_sizes: tuple = ()
    train_examples: int = 0  # what the config's epoch -> step conversion assumes (0: not set)
    normalization: str = "mean"  # pretrained.NORMALIZATIONS: how uint8 images become the net's inputs
    normalization_note: str | None = None  # told when the run starts: init_from expects another normalisation

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(sharding.batch_sharded(self.mesh), local)

    def train_inputs(self, start_step: int, prefetch: int = 2) -> Iterator[tuple[jax.Array, jax.Array]]:
        """Global (uint8 images, labels) training batches from `start_step` on; `prefetch` of them
        already on the devices."""
        host_batches = train_host_batches(
            self.builder, self.train_split, start_step=start_step, steps_per_epoch=self.steps_per_epoch,
            seed=self.seed, host_batch=self.batch_size // self.process_count, geometry=self.geometry,
            process_index=self.process_index, process_count=self.process_count, shuffle_buffer=self.shuffle_buffer)
        queue = []
        for images, labels in host_batches:
            queue.append((self._global(images), self._global(labels)))
            if len(queue) > prefetch:
                yield queue.pop(0)

    def train_batch(self, inputs, rng, step):
        return device_batch(inputs, rng, step, self.color_augmentation, self.normalization)

    def normalize(self, images):
        return normalize(images, self.normalization)

    def eval_batches(self) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """Global (images, labels, mask) batches covering the test split exactly once."""
        host_batch = self.eval_batch_size // self.process_count
        num_batches = -(-max(self.test_host_sizes) // host_batch)
        ds = eval_dataset(self.builder, self.test_split, host_batch=host_batch, num_batches=num_batches,
                          num_examples=self.test_host_sizes[self.process_index], geometry=self.geometry,
                          process_index=self.process_index, process_count=self.process_count,
                          ten_crop=self.ten_crop)
        with tfds_prepare.reading(self.builder, self.test_split):
            for batch in tfds_prepare.tfds().as_numpy(ds):
                yield tuple(self._global(a) for a in batch)

    def fixed_examples(self, size: int) -> Examples:
        """The first `size` test examples, centre-cropped, on every host (for gradients and responses)."""
        images, labels = first_examples(self.builder, self.test_split, size, self.geometry)
        return Examples(images, labels, images)

    def runtime(self) -> dict:
        return {"num_train": self.num_train, "num_test": self.num_test, "steps_per_epoch": self.steps_per_epoch}

    def notes(self, saved_runtime: dict) -> list[str]:
        """What a user should know about this run's data: init_from weights that expect another
        normalisation (when the run starts), an epoch count that assumes another dataset size, or a
        resume on another number of hosts (the data order then differs)."""
        out = [self.normalization_note] if self.normalization_note and not saved_runtime else []
        if self.train_examples and self.train_examples != self.num_train:
            out.append(f"the schedule assumes {self.train_examples} training examples, the dataset has "
                       f"{self.num_train}; set --config.train_examples={self.num_train} to count epochs of it")
        saved = saved_runtime.get("processes")
        if saved and saved != self.process_count:
            out.append(f"resuming on {self.process_count} hosts, saved on {saved}: the data order from here on "
                       "differs from an uninterrupted run (each host reads its own part of the data)")
        return out


def first_examples(builder, split, size: int, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The first `size` examples of a split, centre-cropped: (uint8 images, int32 labels)."""
    tf = _tf()
    ds = records(builder, split, shuffle_seed=None).take(size)
    ds = ds.map(lambda image, label: (eval_image(image, geometry), tf.cast(label, tf.int32)))
    with tfds_prepare.reading(builder, split):
        images, labels = next(iter(tfds_prepare.tfds().as_numpy(ds.batch(size))))
    return images, labels


def load(config, mesh: jax.sharding.Mesh, num_classes: int) -> StreamedData:
    """The streamed dataset of `config` on `mesh`: sizes and splits resolved, nothing read yet."""
    processes = jax.process_count()
    normalization = check_normalization(config.get("normalization") or "mean")
    if config.batch_size % processes:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {processes} hosts")
    builder = tfds_prepare.prepared_builder(config.dataset, config.data_dir, config.get("manual_dir"))
    geometry = Geometry.from_config(config)
    geometry.check()
    train_split, test_split = config.get("train_split", "train"), config.get("test_split", "validation")
    train_sizes = host_sizes(builder, train_split, processes)
    test_sizes = host_sizes(builder, test_split, processes)
    host_batch = config.batch_size // processes
    if min(train_sizes) < host_batch:
        raise ValueError(f"{config.dataset} {train_split} has {sum(train_sizes)} examples, fewer than one "
                         f"batch of {config.batch_size}; lower --config.batch_size")
    return StreamedData(
        builder=builder, train_split=train_split, test_split=test_split, num_classes=num_classes,
        num_train=sum(train_sizes), num_test=sum(test_sizes), steps_per_epoch=min(train_sizes) // host_batch,
        geometry=geometry, mesh=mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        seed=config.seed, shuffle_buffer=config.shuffle_buffer, ten_crop=bool(config.get("ten_crop")),
        color_augmentation=bool(config.get("color_augmentation")), test_host_sizes=tuple(test_sizes),
        train_examples=int(config.get("train_examples") or 0), normalization=normalization,
        normalization_note=pretrained.normalization_note(config.get("init_from"), normalization))
