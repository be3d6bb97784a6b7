"""Test set-up: 8 fake CPU devices, so sharding and multi-device BN are really exercised.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""
import os
import tempfile
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One XLA compilation cache for the test session: subprocess runs of the same net compile once.
os.environ.setdefault("RESNET_JAX_TEST_CACHE", tempfile.mkdtemp(prefix="resnet_jax_xla_cache_"))
# Decoded CIFAR splits, shared by the session's processes (resnet_jax/data/array_cache.py).
os.environ.setdefault("RESNET_JAX_DATA_CACHE", tempfile.mkdtemp(prefix="resnet_jax_data_cache_"))

import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/helpers.py
# Real CIFAR-10 subset prepared by TFDS (5085 train / 1017 test); absent outside this workplace.
SHARED_TFDS = REPO.parent / "shared" / "data" / "tfds"


@pytest.fixture(scope="session")
def tfds_data_dir():
    if not (SHARED_TFDS / "cifar10").is_dir():
        pytest.skip(f"real CIFAR-10 subset not found at {SHARED_TFDS} (only present in the dev workplace)")
    return str(SHARED_TFDS)


@pytest.fixture(scope="session")
def data_flag(tfds_data_dir):
    """The main flag that points a run at the real CIFAR-10 subset."""
    return f"--config.data_dir={tfds_data_dir}"
