"""Everything about a run directory: its file names, how they are written, and how they are read.

    WORKDIR/config.json            the config the run trains with, plus a ``runtime`` record
    WORKDIR/metrics.jsonl          one JSON object per logged step
    WORKDIR/checkpoints/STEP/      Orbax checkpoints (``checkpointing.py`` writes them)
    WORKDIR/diagnostics_layers.json  names of the entries of the per-layer diagnostics lists
    WORKDIR/previous-<time>/       a run set aside by ``resume=false``

Training, evaluation, fine-tuning, sweeps and the experiments all read runs through here. This
module must stay light (no jax, no TensorFlow): launch.sh and the experiments import it.
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Iterable

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAYERS_FILE = "diagnostics_layers.json"

# Fields that define what a run computes; resuming with any of them changed is refused.
FROZEN_FIELDS = ("dataset", "val_split", "seed", "batch_size", "model", "normalization",
                 "train_split", "image_size", "train_resize", "shuffle_buffer")  # the last four: streamed data


class RunDirError(ValueError):
    """A run directory's file cannot be read or written; the message names the file and what to do."""


def prepare_workdir(workdir: str) -> None:
    """Creates WORKDIR (if needed), or says in one line why it cannot hold a run."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunDirError(f"--workdir={workdir} is a file, not a directory; give a directory for the run")
    try:
        os.makedirs(workdir, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise RunDirError(f"--workdir={workdir} is inside a file ({_first_file_above(workdir)}); "
                          "give a directory for the run") from None
    except OSError as e:
        raise RunDirError(f"cannot create --workdir={workdir}: {e.strerror}; give a writable directory") from None
    if not os.access(workdir, os.W_OK) or _read_only_fs(workdir):
        raise RunDirError(f"--workdir={workdir} is not writable (read-only file system or no permission); "
                          "give a writable directory")


def _first_file_above(path: str) -> str:
    path = os.path.abspath(path)
    while path != os.path.dirname(path) and not os.path.isfile(path):
        path = os.path.dirname(path)
    return path


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ----------------------------------------------------------------------------- writing


def atomic_write_text(path: str, text: str) -> None:
    """Writes `path` so that a kill at any moment leaves the old file or the new one, never half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, value: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def write_metrics(workdir: str, records: Iterable[dict]) -> None:
    """Replaces metrics.jsonl with `records`, atomically."""
    atomic_write_text(os.path.join(workdir, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in records))


def write_config(workdir: str, config: dict, runtime: dict) -> None:
    """config.json: the run's config and the ``runtime`` record (devices, host, data sizes...)."""
    atomic_write_json(os.path.join(workdir, CONFIG_FILE), {**config, "runtime": runtime})


def mark_diverged(workdir: str, step: int, last_good: int | None) -> None:
    """Records in config.json that the run diverged (reports say "diverged", not "running")."""
    record = read_config(workdir) or {}
    runtime = record.pop("runtime", {})
    runtime["diverged"] = {"step": step, "last_good_checkpoint": last_good}
    write_config(workdir, record, runtime)


def set_aside(workdir: str) -> str | None:
    """Moves a previous run's files to WORKDIR/previous-<time>/ (resume=false: nothing is deleted)."""
    names = [n for n in (CHECKPOINTS, METRICS_FILE, CONFIG_FILE, LAYERS_FILE) if os.path.exists(os.path.join(workdir, n))]
    if not names:
        return None
    aside = os.path.join(workdir, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(aside)
    for name in names:
        os.replace(os.path.join(workdir, name), os.path.join(aside, name))
    return aside


# ----------------------------------------------------------------------------- reading


def read_json(path: str) -> dict | None:
    """A JSON file, or None if it does not exist; a torn file is an error that names it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is damaged ({e}); restore it from a backup, or delete it "
                          "(it is rewritten when the run starts again)") from None


def read_config(workdir: str) -> dict | None:
    """The run's config.json (with its ``runtime`` record), or None if it has none yet."""
    return read_json(os.path.join(workdir, CONFIG_FILE))


def saved_runtime(workdir: str) -> dict:
    return (read_config(workdir) or {}).get("runtime", {})


def read_metrics(workdir: str) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl; a torn line (killed mid-write) is skipped."""
    return read_metrics_and_damage(workdir)[0]


def read_metrics_and_damage(workdir: str) -> tuple[list[dict], list[int]]:
    """(records, line numbers of the lines that are not a complete record) of WORKDIR/metrics.jsonl."""
    path = os.path.join(workdir, METRICS_FILE)
    records, damaged = [], []
    if not os.path.exists(path):
        return records, damaged
    with open(path, errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif line.strip():
                damaged.append(number)
    return records, damaged


def last_metrics_step(workdir: str) -> int | None:
    """The step of the last complete record of metrics.jsonl (None without one)."""
    steps = [int(r["step"]) for r in read_metrics(workdir) if isinstance(r.get("step"), int)]
    return steps[-1] if steps else None


def read_layer_names(workdir: str) -> dict | None:
    """Names of the entries of the per-layer diagnostics lists ({'grad': [...], 'response': [...], 'block': [...]})."""
    try:
        return read_json(os.path.join(workdir, LAYERS_FILE))
    except RunDirError:
        return None


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def step_folder(path: str) -> tuple[str, int] | None:
    """(checkpoint step folder, step) that `path` names: a workdir (its latest checkpoint), its
    checkpoints/ folder, or one WORKDIR/checkpoints/STEP folder; None if it names no checkpoint."""
    path = os.path.abspath(path)
    workdir = os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS else path
    steps = checkpoint_steps(workdir)
    if steps:
        return os.path.join(checkpoint_dir(workdir), str(steps[-1])), steps[-1]
    if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
        return path, int(os.path.basename(path))
    return None


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in WORKDIR/checkpoints, ascending.

    Orbax names a committed checkpoint by its step; a save in progress lives in a temporary
    folder with a non-numeric name until it is renamed, so it is never listed.
    """
    root = checkpoint_dir(workdir)
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def read_checkpoint_meta(workdir: str, step: int) -> dict:
    """The JSON item saved with checkpoint `step` (W&B id, frozen fields, digest, ...); {} if unreadable."""
    try:
        return read_json(os.path.join(checkpoint_dir(workdir), str(step), "meta", "metadata")) or {}
    except RunDirError:
        return {}


def pick_checkpoint(workdir: str, step: int | None = None) -> int:
    """`step` if WORKDIR has a checkpoint for it, else (step None) the latest; errors say what there is."""
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"no checkpoint for step {step}; available: {', '.join(map(str, steps))} "
                         f"(in {checkpoint_dir(workdir)})")
    return step


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METRICS_FILE)) or os.path.isfile(os.path.join(path, CONFIG_FILE))


# ----------------------------------------------------------------------------- comparing configs


def flatten(d: dict, prefix: str = "") -> dict:
    """{"model": {"depth": 56}} -> {"model.depth": 56}; tuples become lists (as JSON has them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def frozen_fields(config: dict) -> dict:
    """The dotted FROZEN_FIELDS of a config dict: what a checkpoint records of the run it belongs to."""
    return {k: v for k, v in flatten(config).items() if k.split(".")[0] in FROZEN_FIELDS}


def config_changes(saved: dict, current: dict, ignore=("resume", "runtime")) -> dict:
    """{dotted field: [saved value, current value]} of every field a resumed run changed."""
    a, b = flatten({k: v for k, v in saved.items() if k not in ignore}), \
        flatten({k: v for k, v in current.items() if k not in ignore})
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if k in a and a.get(k) != b.get(k)}


def frozen_config_diff(saved: dict, current: dict) -> list[str]:
    """Dotted names of FROZEN_FIELDS that differ between a saved config and the current one.

    A field the saved run did not have at all (added to the configs since it was saved) is not a
    change: new fields default to what older code did.
    """
    a, b = flatten(saved), flatten(current)
    keys = [k for k in sorted(set(a) | set(b)) if k.split(".")[0] in FROZEN_FIELDS and k in a]
    return [k for k in keys if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------- the runtime record


def host_description() -> str:
    """CPU model and core count of this host, for the hardware column of reports."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
