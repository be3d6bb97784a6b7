"""Stopping cleanly on SIGTERM / SIGINT: the loop saves a checkpoint and exits 128 + signal."""
from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Interrupted(SystemExit):
    """Raised after a signal: checkpoint saved, exit code 128 + signal number."""


class StopSignal:
    """SIGTERM/SIGINT before training starts stop the run at once, with a line (nothing is trained
    yet, so nothing is lost); once ``defer()`` is called (the loop runs), they set a flag instead,
    and the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.received = None
        self.previous = {}
        self.deferred = False

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def defer(self) -> None:
        self.deferred = True

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        if not self.deferred:
            print(f"stopped by {self.received} before training started; nothing was lost. Re-run the same command "
                  "to start (or resume).", flush=True)
            raise Interrupted(128 + signum)

    def agreed(self, step: int, every: int) -> str | None:
        """The signal to stop on at this step, the same on every host.

        One process stops at once. Hosts get the signal at different steps, so they agree at
        multiples of `every` (an all-gather) and all save the same step together.
        """
        if jax.process_count() == 1:
            return self.received
        if step % every:
            return None
        got = multihost_utils.process_allgather(np.asarray(self.received is not None))
        return (self.received or "SIGTERM") if np.any(got) else None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def exit_code(signal_name: str) -> int:
    return 128 + getattr(signal, signal_name)
