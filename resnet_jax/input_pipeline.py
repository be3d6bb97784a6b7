"""Input pipelines: which one a dataset uses, and CIFAR's (TFDS -> uint8 arrays on the devices).

CIFAR-10/100 are held on the devices (below); ImageNet-style datasets are streamed from the
hosts (resnet_jax/imagenet_input.py). `load(config, mesh)` picks by dataset name.

CIFAR is small (150 MB as uint8), so the whole training split lives on every device and each
training batch is gathered and augmented inside the jitted train step. The host is never the
bottleneck, and the batch at step s is a pure function of (seed, s): resuming needs no
iterator state.
"""
from __future__ import annotations

import dataclasses
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

DATASETS = {"cifar10": 10, "cifar100": 100}                      # held on the devices
STREAMED = {"imagenet2012": 1000, "imagenet2012_subset": 1000, "imagenette": 10}  # streamed from the hosts
PAD = 4  # the paper: pad 4 px each side, random 32x32 crop


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared locally nor downloadable."""


def _tfds():
    """Imports TFDS with TensorFlow kept off the GPUs (it would otherwise grab their memory)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    return tfds


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the dataset's host answers; assumed so behind a proxy, which we cannot probe."""
    import socket
    import urllib.parse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def num_classes(dataset: str, override: int | None = None) -> int:
    """Classes of a known dataset; any other TFDS image dataset (JPEG 'image', 'label') needs `override`."""
    known = {**DATASETS, **STREAMED}
    if override:
        return int(override)
    if dataset not in known:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(known)} (or any TFDS dataset with "
                         "'image' and 'label' features, streamed, with --config.num_classes=N)")
    return known[dataset]


def is_streamed(dataset: str) -> bool:
    """Whether the dataset is streamed from the hosts (everything but CIFAR) rather than held on device."""
    return dataset not in DATASETS


def is_streamed_data(data) -> bool:
    """Whether a loaded dataset (from `load`) is streamed from the hosts."""
    return not isinstance(data, CifarData)


def load(config, mesh):
    """The dataset of `config` on `mesh`: CifarData (on the devices) or imagenet_input.StreamedData."""
    if is_streamed(config.dataset):
        from resnet_jax import imagenet_input

        return imagenet_input.load(config, mesh)
    return load_cifar(config, mesh)


def split_names(val_split: bool) -> tuple[str, str]:
    """(train, test) TFDS splits; with val_split, the paper's 45k/5k split of the training set."""
    return ("train[:90%]", "train[90%:]") if val_split else ("train", "test")


def load_split(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 32, 32, 3], labels int32 [N]) of one TFDS split."""
    num_classes(dataset)
    tfds = _tfds()
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        _prepare(builder, dataset)
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    return images.astype(np.uint8), labels.astype(np.int32)


def _prepare(builder, dataset: str, manual_dir: str | None = None) -> None:
    """Downloads and prepares the dataset, or says in one line how to provide it offline."""
    import tensorflow_datasets as tfds

    if tfds.core.DatasetBuilder.as_dataset.__module__.endswith("testing.mocking"):
        return  # inside tfds.testing.mock_data: nothing to prepare
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        _prepare_manual(builder, dataset, manual_dir)
        return
    missing = (f"{dataset} is not prepared in {builder.data_dir!r} and could not be downloaded "
               "({why}). Without network, copy a TFDS-prepared '" + dataset + "' folder (from "
               "~/tensorflow_datasets of a machine that has it) and pass --config.data_dir=ITS_PARENT_FOLDER.")
    if not _reachable(builder.info.homepage):  # fail in seconds, not after minutes of retries
        raise DatasetUnavailableError(missing.format(why=f"no network: {builder.info.homepage} is unreachable"))
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise DatasetUnavailableError(missing.format(why=f"{type(e).__name__}: {e}"[:300])) from None


MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


def _prepare_manual(builder, dataset: str, manual_dir: str | None) -> None:
    """Datasets behind a licence (imagenet2012): prepared from files the user downloaded by hand."""
    import tensorflow_datasets as tfds

    manual_dir = manual_dir or os.path.join(str(builder.data_dir_root), "downloads", "manual")
    needed = MANUAL_FILES.get(dataset, ())
    missing = [f for f in needed if not os.path.exists(os.path.join(manual_dir, f))]
    if missing or not os.path.isdir(manual_dir):
        raise DatasetUnavailableError(
            f"{dataset} is not prepared in {builder.data_dir!r}, and it cannot be downloaded automatically: "
            f"download {' and '.join(missing or needed) or 'its files'} by hand (register at {builder.info.homepage}), "
            f"put them in {manual_dir!r} (or set --config.manual_dir=DIR), and re-run: the first run prepares the "
            f"dataset (hours for imagenet2012). Or point --config.data_dir at a folder holding a prepared '{dataset}'.")
    print(f"preparing {dataset} from {manual_dir} into {builder.data_dir} (once; imagenet2012 takes hours)", flush=True)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


@flax.struct.dataclass
class DeviceData:
    """A split held on the devices: uint8 images, labels, and the per-pixel training mean."""

    images: jax.Array  # uint8 [N, 32, 32, 3]
    labels: jax.Array  # int32 [N]
    mean: jax.Array    # float32 [32, 32, 3], in [0, 1] units

    @property
    def num_examples(self) -> int:
        return self.labels.shape[0]


def pixel_mean(images: np.ndarray) -> np.ndarray:
    """Per-pixel mean of the training images in [0, 1] units (the paper subtracts it; no std)."""
    return (images.astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)


def put_replicated(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Places a host array identical on every process onto `sharding` (works multi-host)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_device(images: np.ndarray, labels: np.ndarray, mean: np.ndarray, sharding) -> DeviceData:
    return DeviceData(*(put_replicated(a, sharding) for a in (images, labels, mean)))


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


def normalize(images: jax.Array, mean: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1] minus the per-pixel training mean."""
    return images.astype(jnp.float32) / 255.0 - mean


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """The paper's augmentation: zero-pad 4 px (zero = the mean image), random 32x32 crop, random flip."""
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * PAD + 1)
    crop = lambda image, yx: jax.lax.dynamic_slice(image, (yx[0], yx[1], 0), (h, w, c))
    images = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def train_batch(data: DeviceData, key: jax.Array, step: jax.Array, batch_size: int):
    """(images float32 [B, 32, 32, 3], labels [B]) for `step`: a pure function of (key, step)."""
    order_key, augment_key = jax.random.split(key)
    idx = batch_indices(order_key, step, data.num_examples, batch_size)
    images = normalize(data.images[idx], data.mean)
    return augment(jax.random.fold_in(augment_key, step), images), data.labels[idx]


# ----------------------------------------------------------------------------- exact evaluation


@flax.struct.dataclass
class EvalData:
    """A split cut into equal batches [num_batches, B, ...]; `mask` marks the real (unpadded) examples."""

    images: jax.Array
    labels: jax.Array
    mask: jax.Array


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


@dataclasses.dataclass(frozen=True)
class CifarData:
    """Everything training needs of a dataset, on the devices."""

    train: DeviceData
    test: EvalData
    num_classes: int
    num_train: int
    num_test: int


def load_cifar(config, mesh: jax.sharding.Mesh) -> CifarData:
    """Loads train and test splits onto `mesh`: train replicated, test batches sharded over 'data'."""

    train_split, test_split = split_names(config.val_split)
    train = load_split(config.dataset, train_split, config.data_dir)
    test = load_split(config.dataset, test_split, config.data_dir)
    return cifar_data(*train, *test, num_classes(config.dataset), config.eval_batch_size, mesh)


def cifar_data(train_images, train_labels, test_images, test_labels, classes: int, eval_batch_size: int,
               mesh: jax.sharding.Mesh) -> CifarData:
    """Host arrays onto `mesh`: train replicated (with its pixel mean), test batches sharded over 'data'."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    train = to_device(train_images, train_labels, pixel_mean(train_images), NamedSharding(mesh, P()))
    batches = eval_batches(test_images, test_labels, eval_batch_size)
    test = EvalData(*(put_replicated(a, NamedSharding(mesh, P(None, "data"))) for a in batches))
    return CifarData(train, test, classes, len(train_labels), len(test_labels))
