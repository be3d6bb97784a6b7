"""Getting a TFDS dataset ready: prepared already, downloadable, behind a licence, or unavailable.

Every failure ends in one line that says what to do (set ``--config.data_dir``, download the tar
files by hand, ...), and a machine without network fails in seconds, not after minutes of TFDS
retries.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import urllib.parse

from resnet_jax import console

MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared locally nor downloadable."""


class DatasetDamagedError(DatasetUnavailableError):
    """A prepared dataset's files cannot be read (truncated, overwritten, missing)."""


def tfds():
    """TFDS, imported with TensorFlow kept off the GPUs (it would otherwise grab their memory).

    Imported here, not at module top: TensorFlow takes seconds to import, and the runs that
    never read a TFDS dataset (benchmarks, tests on synthetic data) should not pay for it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if console.verbose() else "3")
    with console.native_stderr_silenced():  # TensorFlow's C++ start-up lines (resnet_jax/console.py)
        import tensorflow as tf
        import tensorflow_datasets

    tf.config.set_visible_devices([], "GPU")
    return tensorflow_datasets


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the dataset's host answers; assumed so behind a proxy, which we cannot probe.
    RESNET_JAX_OFFLINE=1 says no without asking (nodes whose DNS hangs instead of failing)."""
    if os.environ.get("RESNET_JAX_OFFLINE") == "1":
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_mock_data() -> bool:
    """Inside ``tfds.testing.mock_data``: nothing is prepared, the builder fakes its examples."""
    return tfds().core.DatasetBuilder.as_dataset.__module__.endswith("testing.mocking")


def prepared_builder(dataset: str, data_dir: str | None, manual_dir: str | None = None):
    """The TFDS builder of `dataset`, downloaded and prepared first if it is not yet."""
    builder = tfds().builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        prepare(builder, dataset, manual_dir)
    return builder


def prepare(builder, dataset: str, manual_dir: str | None = None) -> None:
    """Downloads and prepares the dataset, or says in one line how to provide it offline."""
    if in_mock_data():
        return
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        prepare_manual(builder, dataset, manual_dir)
        return
    missing = (f"{dataset} is not prepared in {builder.data_dir!r} and could not be downloaded "
               "({why}). Without network, copy a TFDS-prepared '" + dataset + "' folder (from "
               "~/tensorflow_datasets of a machine that has it) and pass --config.data_dir=ITS_PARENT_FOLDER.")
    if not reachable(builder.info.homepage):  # fail in seconds, not after minutes of retries
        raise DatasetUnavailableError(missing.format(why=f"no network: {builder.info.homepage} is unreachable"))
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise DatasetUnavailableError(missing.format(why=f"{type(e).__name__}: {e}"[:300])) from None


def prepare_manual(builder, dataset: str, manual_dir: str | None) -> None:
    """Datasets behind a licence (imagenet2012): prepared from files the user downloaded by hand."""
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
    builder.download_and_prepare(download_config=tfds().download.DownloadConfig(manual_dir=manual_dir))


@contextlib.contextmanager
def reading(builder, split: str):
    """Turns TensorFlow's read errors (a truncated or overwritten tfrecord, a missing shard) into one
    line naming the files and how to prepare them again."""
    import tensorflow as tf  # already imported by whoever made `builder`

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise damaged(builder, split, e) from None


def damaged(builder, split: str, e: Exception) -> DatasetDamagedError:
    base = str(split).split("[")[0]
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(str(builder.data_dir), f"*-{base}.*")))
    name = builder.info.name
    what = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(e, "message", "") or str(e))
    what = (what.strip().splitlines() or [""])[0].split(" [Op:")[0][:160]
    return DatasetDamagedError(
        f"{name} in {builder.data_dir} is damaged: reading its {base} split failed ({type(e).__name__}: {what}); "
        f"its {base} files: {', '.join(files) or 'none found'}. Delete {builder.data_dir} and prepare {name} again "
        "(with network, TFDS downloads it; offline, copy a good prepared folder and pass --config.data_dir)")
