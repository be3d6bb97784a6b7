"""Learning-rate schedules by name; the logged lr is the value the optimiser uses."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.config_args import load_config_module

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def config(**overrides):
    c = load_config_module(CONFIGS / "cifar10.py").get_config("depth=8")
    for k, v in overrides.items():
        c[k] = v
    return c


def test_paper_learning_rate_schedule():
    c = config()
    assert [optim.learning_rate(c, s, False) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert optim.learning_rate(c, 0, True) == pytest.approx(0.01)
    schedule = optim.lr_schedule(c)
    assert float(schedule(32_000)) == pytest.approx(0.01) and float(schedule(100)) == pytest.approx(0.1)


def test_cosine_schedule_with_linear_warmup():
    c = config(schedule="cosine", linear_warmup_steps=100, num_train_steps=1100)
    lr = lambda s: optim.learning_rate(c, s, False)
    assert lr(0) == pytest.approx(0.001) and lr(49) == pytest.approx(0.05)  # ramp: (s + 1) / 100
    assert lr(100) == pytest.approx(0.1)  # the cosine starts at the end of the ramp
    assert lr(600) == pytest.approx(0.05, rel=1e-5) and lr(1100) == pytest.approx(0.0, abs=1e-9)
    cosine = optax.cosine_decay_schedule(0.1, 1000)
    np.testing.assert_allclose([lr(s) for s in range(100, 1100, 97)], [float(cosine(s - 100)) for s in range(100, 1100, 97)],
                               rtol=1e-6)


def test_logged_lr_is_what_the_optimiser_applies():
    """One SGD step without momentum history or weight decay moves params by exactly -lr * grad."""
    c = config(schedule="cosine", linear_warmup_steps=3, num_train_steps=10, weight_decay=0.0, momentum=0.0)
    schedule = optim.lr_schedule(c)
    tx = optim.make_optimizer(c, schedule)
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    grads = {"w": jnp.full(3, 2.0)}
    for s in range(5):
        updates, opt_state = tx.update(grads, opt_state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), -2.0 * optim.learning_rate(c, s, False, schedule), rtol=1e-6)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid: step, cosine"):
        optim.lr_schedule(config(schedule="linear"))
    assert set(optim.SCHEDULES) >= {"step", "cosine"}
    assert jax.numpy.isfinite(optim.lr_schedule(config())(0))
