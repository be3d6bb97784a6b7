"""A clean console: our lines only, unless --verbose (or RESNET_JAX_VERBOSE=1) asks for the rest.

TensorFlow prints C++ log lines while it is imported ("oneDNN custom operations are on",
"All log messages before absl::InitializeLog() ..."), twice per process, before any line of
ours; TF_CPP_MIN_LOG_LEVEL does not reach them. They are written to the process's stderr by
C++, so they are silenced by pointing file descriptor 2 elsewhere for the duration of the
import only: errors raised afterwards, and Python exceptions of the import itself, still reach
the user.
"""
from __future__ import annotations

import contextlib
import os

VERBOSE_ENV = "RESNET_JAX_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def set_verbose(on: bool) -> None:
    """For this process and the ones it starts (launch.sh's runs, local_cluster's hosts)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 goes to /dev/null inside the block (nothing changes with --verbose)."""
    if verbose():
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
