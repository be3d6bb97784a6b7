"""The data-parallel training step: sharding-invariant, paper optimizer, warm-up, metric sums, config checks."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import config_checks, models, optim, run_dir, sharding, step
from resnet_jax.config_args import load_config_module
from resnet_jax.data import cifar

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def small_config(**overrides):
    c = load_config_module(CONFIGS / "cifar10.py").get_config("depth=8")
    c.batch_size = 16
    c.log_every = 2
    for k, v in overrides.items():
        if k.startswith("model."):
            c.model[k[6:]] = v
        else:
            c[k] = v
    return c


def random_data(mesh, batch_size=16, n=64, seed=0):
    """A random on-device dataset of n 32x32 images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return cifar.build(images, labels, images[:16], labels[:16], num_classes=10, batch_size=batch_size,
                       eval_batch_size=8, mesh=mesh)


def run_steps(config, devices, steps=2):
    mesh = sharding.make_mesh(devices)
    model = models.from_config(config.model, 10)
    tx = optim.make_optimizer(config)
    state = jax.jit(lambda: step.init_state(config, model, tx, 10), out_shardings=NamedSharding(mesh, P()))()
    data = random_data(mesh, config.batch_size)
    step_fn = step.make_train_step(config, model, tx, mesh, data)
    for _ in range(steps):
        state = step_fn(state, data.train)
    return jax.device_get(state)


def test_sharded_step_equals_single_device_step():
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    config = small_config()
    one = run_steps(config, jax.devices()[:1])
    eight = run_steps(config, jax.devices())
    assert int(eight.step) == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), one.params, eight.params)
    # Global batch-norm statistics: the running mean/var after sharded steps equal the full-batch ones.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
                 one.batch_stats, eight.batch_stats)
    np.testing.assert_allclose(one.sums["loss"], eight.sums["loss"], rtol=1e-5)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_bn_group_statistics_change_the_step():
    """Statistics over groups of 4 (like the paper's 64 per GPU) are not the global ones."""
    grouped = run_steps(small_config(**{"model.bn_group_size": 4}), jax.devices(), steps=1)
    whole = run_steps(small_config(), jax.devices(), steps=1)
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), grouped.batch_stats, whole.batch_stats)
    assert max(jax.tree.leaves(diff)) > 1e-4


def test_warmup_is_on_for_110_layers_and_scales_the_update():
    c110 = load_config_module(CONFIGS / "cifar10.py").get_config("depth=110")
    assert optim.uses_warmup(c110) and not optim.uses_warmup(small_config())
    c = small_config(warmup=True)
    mesh = sharding.make_mesh(jax.devices()[:1])
    model, tx = models.from_config(c.model, 10), optim.make_optimizer(c)
    state = step.init_state(c, model, tx, 10)
    assert bool(state.warmup)
    data = random_data(mesh, c.batch_size)
    step_fn = step.make_train_step(c, model, tx, mesh, data)
    warm = step_fn(state, data.train)
    cold = step_fn(step.init_state(c, model, tx, 10).replace(warmup=jnp.asarray(False)), data.train)
    start = step.init_state(c, model, tx, 10).params
    delta = lambda s: np.asarray(s.params["head"]["kernel"] - start["head"]["kernel"]) if "head" in s.params else \
        np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(start))])
    np.testing.assert_allclose(delta(warm), 0.1 * delta(cold), rtol=1e-4, atol=2e-7)  # params - init cancels digits
    # Warm-up ends once the smoothed training error falls below 80%.
    nearly = step.init_state(c, model, tx, 10).replace(error_ema=jnp.asarray(0.0))
    assert not bool(step_fn(nearly, data.train).warmup)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_metric_sums_restart_at_each_log_boundary():
    state = run_steps(small_config(log_every=2), jax.devices(), steps=3)
    assert float(state.sums["count"]) == 1.0  # step index 2 started a new interval
    state = run_steps(small_config(log_every=5), jax.devices(), steps=3)
    assert float(state.sums["count"]) == 3.0


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 12, "batch_size 12 is not divisible by the 8 devices"),
    ("eval_batch_size", 100, "eval_batch_size 100 is not divisible by the 8 devices"),
    ("dataset", "mnist", "unknown dataset 'mnist'"),
    ("model.depth", 21, "6n\\+2"),
    ("model.bn_group_size", 5, "bn_group_size 5 must divide batch_size 16"),
])
def test_bad_config_gets_a_clear_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        config_checks.validate_config(small_config(**{field: value}), 8)


def test_frozen_fields_diff_names_model_and_data_fields_only():
    a = small_config().to_dict()
    b = small_config(num_train_steps=5, learning_rate=0.5, **{"model.residual": False, "seed": 3}).to_dict()
    assert run_dir.frozen_config_diff(a, b) == ["model.residual", "seed"]
    assert run_dir.frozen_config_diff(a, a) == []
