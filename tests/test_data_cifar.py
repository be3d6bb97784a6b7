"""The on-device pipeline (CIFAR): deterministic batches from (seed, step), the paper's augmentation, exact eval."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data
from resnet_jax.data import cifar as ip
from resnet_jax.data import tfds_prepare

MEAN = np.full((32, 32, 3), 0.5, np.float32)


def _data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return ip.DeviceData(jnp.asarray(images), jnp.asarray(labels))


def train_batch(d, key, step, batch_size):
    return ip.train_batch(d, key, step, batch_size, MEAN)


def test_batch_is_a_pure_function_of_seed_and_step():
    key = jax.random.PRNGKey(3)
    a, b = _data(), _data()  # two fresh pipelines over the same data
    for step in (0, 7, 123):
        xa, ya = jax.jit(train_batch, static_argnums=3)(a, key, jnp.asarray(step), 8)
        xb, yb = jax.jit(train_batch, static_argnums=3)(b, key, jnp.asarray(step), 8)
        np.testing.assert_array_equal(np.asarray(xa), np.asarray(xb))
        x_eager, _ = train_batch(b, key, jnp.asarray(step), 8)  # same batch, up to float fusion
        np.testing.assert_allclose(np.asarray(xa), np.asarray(x_eager), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    x0, _ = train_batch(a, key, jnp.asarray(0), 8)
    x1, _ = train_batch(a, key, jnp.asarray(1), 8)
    assert not np.array_equal(np.asarray(x0), np.asarray(x1))
    other, _ = train_batch(a, jax.random.PRNGKey(4), jnp.asarray(0), 8)
    assert not np.array_equal(np.asarray(x0), np.asarray(other))


def test_each_epoch_visits_every_example_once():
    key = jax.random.PRNGKey(0)
    n, b = 50, 8  # 6 full batches per epoch, 2 examples dropped
    for epoch in range(2):
        idx = np.concatenate([np.asarray(ip.batch_indices(key, jnp.asarray(epoch * 6 + s), n, b)) for s in range(6)])
        assert len(set(idx.tolist())) == 48
    e0 = np.asarray(ip.batch_indices(key, jnp.asarray(0), n, b))
    e1 = np.asarray(ip.batch_indices(key, jnp.asarray(6), n, b))
    assert not np.array_equal(e0, e1)  # a fresh permutation each epoch


def test_crops_stay_inside_the_padded_image_and_flips_flip():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(64, 32, 32, 3)).astype(np.float32) + 5.0  # never zero: padding is recognisable
    out = np.asarray(ip.augment(jax.random.PRNGKey(0), jnp.asarray(images)))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flipped_count = 0
    for i in range(len(images)):
        found = None
        for dy in range(9):
            for dx in range(9):
                window = padded[i, dy:dy + 32, dx:dx + 32]
                if np.array_equal(out[i], window):
                    found = "plain"
                elif np.array_equal(out[i], window[:, ::-1]):
                    found = "flip"
        assert found, f"example {i} is not a 32x32 window (or its mirror) of the padded image"
        flipped_count += found == "flip"
    assert 16 < flipped_count < 48  # about half are flipped
    offsets_seen = {tuple(np.argwhere(out[i].sum(-1) != 0).min(0)) for i in range(len(images))}
    assert len(offsets_seen) > 5  # crops really move


def test_normalize_subtracts_the_per_pixel_training_mean():
    images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 255)])
    mean = ip.pixel_mean(images)
    np.testing.assert_allclose(mean, 0.5, atol=1e-6)
    out = np.asarray(ip.normalize(jnp.asarray(images), jnp.asarray(mean)))
    np.testing.assert_allclose(out[0], -0.5, atol=1e-6)
    np.testing.assert_allclose(out[1], 0.5, atol=1e-6)


def test_eval_batches_count_every_example_exactly_once():
    images = np.arange(1017, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    labels = np.arange(1017, dtype=np.int32)
    bi, bl, bm = ip.eval_batches(images, labels, 200)
    assert bi.shape == (6, 200, 32, 32, 3) and bm.sum() == 1017
    np.testing.assert_array_equal(bl.reshape(-1)[bm.reshape(-1) == 1], labels)


def test_digits_are_cropped_but_never_flipped():
    images = jnp.asarray(np.random.default_rng(2).normal(size=(32, 32, 32, 3)).astype(np.float32) + 5.0)
    out = np.asarray(ip.augment(jax.random.PRNGKey(0), images, flip=False))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(len(out)):
        assert any(np.array_equal(out[i], padded[i, dy:dy + 32, dx:dx + 32]) for dy in range(9) for dx in range(9))


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid: cifar10, cifar100"):
        data.num_classes("mnist")


def test_missing_dataset_without_network_says_how_to_point_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_prepare, "reachable", lambda url, timeout=5.0: False)
    with pytest.raises(data.DatasetUnavailableError, match="--config.data_dir"):
        ip.load_split("cifar10", "train", str(tmp_path))


def test_loads_the_real_tfds_subset(tfds_data_dir):
    images, labels = ip.load_split("cifar10", "test", tfds_data_dir)
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1017,) and set(np.unique(labels)) == set(range(10))
    train, _ = ip.load_split("cifar10", "train[:90%]", tfds_data_dir)
    held, _ = ip.load_split("cifar10", "train[90%:]", tfds_data_dir)
    assert len(train) + len(held) == 5085  # the paper's 45k/5k split, as fractions


def test_a_dataset_added_by_one_registry_line_trains_and_evaluates():
    """SVHN (cropped digits) is one line in resnet_jax.data.REGISTRY: the on-device kind without flips.
    Its TFDS format is exercised on mock data (nothing can be downloaded here)."""
    import pathlib

    from resnet_jax import models, optim, sharding, step
    from resnet_jax.config_args import load_config_module

    config = load_config_module(pathlib.Path(__file__).parents[1] / "configs" / "cifar10.py").get_config(
        "depth=8,dataset=svhn_cropped")
    config.batch_size, config.eval_batch_size = 16, 16
    mesh = sharding.make_mesh()
    tfds = tfds_prepare.tfds()
    with tfds.testing.mock_data(num_examples=48):
        svhn = data.get(config, mesh)
    assert (svhn.num_classes, svhn.num_train, svhn.num_test, svhn.flip) == (10, 48, 48, False)
    model = models.from_config(config.model, svhn.num_classes)
    tx = optim.make_optimizer(config)
    state = jax.jit(lambda: step.init_state(config, model, tx, 10), out_shardings=sharding.replicated(mesh))()
    train_step = step.make_train_step(config, model, tx, mesh, svhn)
    inputs = svhn.train_inputs(0)
    for _ in range(3):
        state = train_step(state, next(inputs))
    metrics = step.make_evaluator(svhn, model, mesh)(state)
    assert int(state.step) == 3 and 0 <= metrics["test/error"] <= 1 and np.isfinite(metrics["test/loss"])


def test_array_cache_serves_an_unchanged_split_without_tensorflow(tfds_data_dir, tmp_path, monkeypatch):
    import shutil
    import subprocess
    import sys

    data_dir = tmp_path / "tfds"
    shutil.copytree(f"{tfds_data_dir}/cifar10", data_dir / "cifar10")
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_JAX_DATA_CACHE", str(cache))
    first = ip.load_split("cifar10", "test", str(data_dir))
    entries = sorted(cache.glob("cifar10-test-*.npz"))
    assert len(entries) == 1
    # A fresh process reads it back without importing TensorFlow, bit for bit.
    code = ("import sys, numpy as np; from resnet_jax.data import cifar; "
            f"im, lb = cifar.load_split('cifar10', 'test', {str(data_dir)!r}); "
            "assert 'tensorflow' not in sys.modules; np.save(sys.argv[1], im); np.save(sys.argv[2], lb)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "im.npy"), str(tmp_path / "lb.npy")], check=True,
                   env={**__import__("os").environ, "RESNET_JAX_DATA_CACHE": str(cache)})
    np.testing.assert_array_equal(np.load(tmp_path / "im.npy"), first[0])
    np.testing.assert_array_equal(np.load(tmp_path / "lb.npy"), first[1])
    assert first[0].dtype == np.uint8 and first[1].dtype == np.int32
    # A changed file of the prepared dataset is a new entry, read through TFDS again.
    shard = next((data_dir / "cifar10").rglob("*test.tfrecord*"))
    shard.touch()
    again = ip.load_split("cifar10", "test", str(data_dir))
    np.testing.assert_array_equal(again[0], first[0])
    assert len(sorted(cache.glob("cifar10-test-*.npz"))) == 2
    # A torn entry is read around, not trusted.
    for entry in cache.glob("*.npz"):
        entry.write_bytes(b"torn")
    np.testing.assert_array_equal(ip.load_split("cifar10", "test", str(data_dir))[1], first[1])


def test_array_cache_off_and_split_names_differ(tfds_data_dir, tmp_path, monkeypatch):
    from resnet_jax.data import array_cache

    monkeypatch.setenv("RESNET_JAX_DATA_CACHE", "")
    assert array_cache.entry_path("cifar10", "train", tfds_data_dir) is None
    monkeypatch.setenv("RESNET_JAX_DATA_CACHE", str(tmp_path))
    a = array_cache.entry_path("cifar10", "train[:90%]", tfds_data_dir)
    b = array_cache.entry_path("cifar10", "train[90%:]", tfds_data_dir)
    assert a != b and a.startswith(str(tmp_path))
    assert array_cache.entry_path("cifar10", "train", str(tmp_path / "nothing_prepared")) is None
