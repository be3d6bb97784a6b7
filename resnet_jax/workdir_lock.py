"""One training process per run directory: WORKDIR/lock.json names the holder (host, pid, since when).

Two processes writing one workdir interleave checkpoints, metrics.jsonl and config.json, and
neither notices. So the process that trains (process 0 of a multi-host run) creates the lock
file atomically (``O_CREAT | O_EXCL``, which also holds on NFS and the shared file systems of
TPU pods) and refreshes its modification time every ``HEARTBEAT_S`` seconds while it runs.

A lock left behind by a process that died (SIGKILL, a preempted VM) must not block the resume,
so a lock is stale, and is taken over with a note, when:

* it was written on this host (same host name and boot id) and its pid is gone, or is now a
  different process (its start time differs: the pid was reused);
* it was written on this host before the last reboot (another boot id);
* it was written on another host and its heartbeat stopped ``STALE_S`` seconds ago: nothing on
  this host can check another host's pids, but a live holder touches the file every
  ``HEARTBEAT_S`` seconds, so a file that old belongs to a process that is gone.

Anything else is a live holder, and the second process stops with one line that names it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

LOCK_FILE = "lock.json"
HEARTBEAT_S = float(os.environ.get("RESNET_JAX_LOCK_HEARTBEAT_S", "30"))
STALE_S = float(os.environ.get("RESNET_JAX_LOCK_STALE_S", "300"))  # 10 missed heartbeats


class WorkdirInUse(RuntimeError):
    """Another live process trains in this workdir."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""  # alive, start time unknown (no /proc)


def this_process() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(), "start_time": _start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def stale_reason(holder: dict, age_s: float, me: dict | None = None) -> str | None:
    """Why the lock of `holder` (its file `age_s` seconds since the last heartbeat) is stale, or None."""
    me = me or this_process()
    if holder.get("host") != me["host"]:
        if age_s > STALE_S:
            return f"its heartbeat on host {holder.get('host')} stopped {age_s:.0f} s ago"
        return None
    if holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"]:
        return "it was written before this host rebooted"
    started = _start_time(int(holder.get("pid", -1)))
    if started is None:
        return f"process {holder.get('pid')} is gone"
    if holder.get("start_time") and started and started != holder["start_time"]:
        return f"pid {holder.get('pid')} is now another process"
    return None


class WorkdirLock:
    """Held while a run trains in `workdir`; a context manager."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.record = this_process()
        self._stop = threading.Event()
        self._thread = None
        self.note = None  # why a stale lock was taken over, if one was

    def acquire(self) -> "WorkdirLock":
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="workdir-lock")
                self._thread.start()
                return self
            holder, age = self._read_holder()
            if holder is None:
                continue  # released (or torn while being written) just now: try again
            reason = stale_reason(holder, age, self.record)
            if reason is None:
                raise WorkdirInUse(
                    f"{os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
                    f"since {holder.get('since')} ({self.path}); wait for that run to finish or stop it, or use "
                    "another --workdir")
            self.note = f"took over the lock of pid {holder.get('pid')} on {holder.get('host')}: {reason}"
            try:
                os.replace(self.path, f"{self.path}.stale-{os.getpid()}")
                os.remove(f"{self.path}.stale-{os.getpid()}")
            except FileNotFoundError:
                pass  # another process took it over first; the next _create decides
        raise WorkdirInUse(f"could not take the lock {self.path}: other processes keep taking it; use another --workdir")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        return True

    def _read_holder(self) -> tuple[dict | None, float]:
        try:
            age = time.time() - os.stat(self.path).st_mtime
            with open(self.path) as f:
                return json.load(f), age
        except FileNotFoundError:
            return None, 0.0
        except (OSError, json.JSONDecodeError):
            if age > 5:  # a torn lock file that nobody finished writing
                return {"host": "?", "pid": "?", "since": "?"}, float("inf")
            time.sleep(0.2)
            return None, 0.0

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the workdir's file system went away: the run itself will say so

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path) as f:
                mine = json.load(f).get("pid") == self.record["pid"]
            if mine:
                os.remove(self.path)
        except (OSError, json.JSONDecodeError):
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
