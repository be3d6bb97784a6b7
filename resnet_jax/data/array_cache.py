"""Decoded small datasets kept as .npz files, so that a run whose TFDS files have not changed does
not import TensorFlow (~5 s) nor decode the split again (~2 s for CIFAR-10).

A cache entry is named by a hash of the dataset, the split and every file of the prepared dataset
(path, size, modification time): preparing the dataset again, damaging or replacing a file makes a
new entry, read through TFDS (which then reports damage as before). RESNET_JAX_DATA_CACHE chooses
the folder (default ~/.cache/resnet_jax/datasets); RESNET_JAX_DATA_CACHE= (empty) turns it off. A
cache that cannot be written (read-only home) is skipped silently: it only saves time.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

import numpy as np


def cache_dir() -> str:
    return os.environ.get("RESNET_JAX_DATA_CACHE", os.path.expanduser("~/.cache/resnet_jax/datasets"))


def tfds_root(data_dir: str | None) -> str:
    """Where TFDS looks for prepared datasets when `data_dir` is not given."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _mocked() -> bool:
    """Inside tfds.testing.mock_data the files on disk are not what TFDS returns."""
    if "tensorflow_datasets" not in sys.modules:
        return False
    from resnet_jax.data import tfds_prepare

    return tfds_prepare.in_mock_data()


def entry_path(dataset: str, split: str, data_dir: str | None) -> str | None:
    """The cache file of one split, or None when there is no cache or nothing prepared to key it on."""
    root = cache_dir()
    prepared = os.path.join(tfds_root(data_dir), dataset)
    if not root or not os.path.isdir(prepared) or _mocked():
        return None
    files = []
    for folder, _, names in os.walk(prepared):
        for name in sorted(names):
            path = os.path.join(folder, name)
            st = os.stat(path)
            files.append((os.path.relpath(path, prepared), st.st_size, st.st_mtime_ns))
    if not files:
        return None
    key = hashlib.sha256(json.dumps([dataset, split, os.path.realpath(prepared), sorted(files)]).encode()).hexdigest()
    safe_split = "".join(c if c.isalnum() else "_" for c in split)
    return os.path.join(root, f"{dataset}-{safe_split}-{key[:24]}.npz")


def load(path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None or not os.path.isfile(path):
        return None
    try:
        with np.load(path) as f:
            return f["images"], f["labels"]
    except (OSError, ValueError, KeyError, EOFError):  # a torn or foreign file: read TFDS again
        return None


def save(path: str | None, images: np.ndarray, labels: np.ndarray) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)  # atomic: concurrent runs of a sweep never read half a file
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
