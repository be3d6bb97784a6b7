"""Results are files first: ``metrics.jsonl`` (one JSON object per logged step), mirrored to W&B.

Only process 0 writes. W&B must never stop or slow training: without network or an API key it
runs offline (sync later with ``wandb sync``), and any failure of it is a warning, not an error.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import urllib.parse
import warnings
from typing import Any, Mapping

import numpy as np

from resnet_jax import run_dir


class JsonlWriter:
    """Appends records to workdir/metrics.jsonl, first dropping what a resumed run will re-log."""

    def __init__(self, workdir: str, resume_step: int):
        records, damaged = run_dir.read_metrics_and_damage(workdir)
        kept = [r for r in records if r["step"] <= resume_step]
        self.steps = {r["step"] for r in kept}
        run_dir.write_metrics(workdir, kept)  # atomic: a kill here leaves the old or the new file
        later = len(records) - len(kept)
        if damaged or (later and resume_step):
            dropped = [f"{len(damaged)} damaged line(s) (line {', '.join(map(str, damaged))})"] if damaged else []
            dropped += [f"{later} record(s) after step {resume_step} (the run re-logs them)"] if later else []
            print(f"note: {run_dir.METRICS_FILE} in {workdir}: dropped {' and '.join(dropped)}", flush=True)
        self.file = open(os.path.join(workdir, run_dir.METRICS_FILE), "a")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):  # per-layer diagnostics: plain lists
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def has_wandb_api_key() -> bool:
    """Whether W&B has credentials here ($WANDB_API_KEY, or `wandb login` in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        with open(os.path.expanduser("~/.netrc")) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server answers (behind a proxy we cannot tell, and assume so)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    url = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def wandb_mode(configured: str | None) -> str:
    """online | offline | disabled: the config, else $WANDB_MODE, else online only with an API key."""
    mode = configured or os.environ.get("WANDB_MODE")
    if mode:
        if mode not in ("online", "offline", "disabled", "dryrun"):
            raise ValueError(f"wandb mode {mode!r}: use online, offline or disabled")
        return "offline" if mode == "dryrun" else mode
    return "online" if has_wandb_api_key() else "offline"


def wandb_tags(config) -> list[str]:
    m = config.model
    tags = [f"depth={m.depth}", "residual" if m.residual else "plain", f"shortcut={m.shortcut}", config.dataset,
            f"family={m.family}", f"seed={config.seed}"]
    if m.get("widen_factor"):
        tags.append(f"width={m.widen_factor}")
    if m.get("norm") and m.norm != "batch":
        tags.append(f"norm={m.norm}")
    return tags + [t for t in config.wandb.tags if t not in tags]


def wandb_metrics(metrics: Mapping[str, Any]) -> dict:
    """Scalars as they are; a per-layer list (``diagnostics/grad_norm``, in network order) becomes
    one scalar per layer, ``KEY/0000``, ``KEY/0001``, ... (a dashboard plots ``KEY/.*``), plus
    ``KEY_hist``, a ``wandb.Histogram`` of its values (how they spread over the layers, per step)."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, (list, tuple)):
            out[key] = value
            continue
        values = [float(v) for v in value]
        out.update({f"{key}/{i:04d}": v for i, v in enumerate(values)})
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            import wandb  # only here and in WandbWriter: W&B is optional and slow to import

            out[f"{key}_hist"] = wandb.Histogram(np_histogram=np.histogram(finite, bins=min(64, len(finite))))
    return out


class WandbWriter:
    """One W&B run per workdir; a restarted run continues the same run (same id, resume='allow').

    ``wandb.init`` takes seconds (and up to its timeout on a bad network), so it runs on a
    background thread, started before the data loads and the step compiles; the first write
    waits for it.
    """

    def __init__(self, config, workdir: str, run_id: str):
        self.run = None
        self._thread = threading.Thread(target=self._start, args=(config, workdir, run_id), daemon=True,
                                        name="wandb-init")
        self._thread.start()

    def _start(self, config, workdir: str, run_id: str) -> None:
        mode = wandb_mode(config.wandb.mode)
        if mode == "disabled":
            return
        if mode == "online" and not wandb_reachable():
            print(f"W&B: {os.environ.get('WANDB_BASE_URL', 'api.wandb.ai')} is unreachable: logging offline to "
                  f"{workdir}/wandb; upload later with `wandb sync {workdir}/wandb/offline-run-*`", flush=True)
            mode = "offline"
        try:
            self.run = self._init(config, workdir, run_id, mode)
        except Exception as e:  # noqa: BLE001 - W&B trouble must never cost a training run
            if mode != "online":
                warnings.warn(f"W&B disabled for this run: wandb.init failed ({type(e).__name__}: {e})")
                return
            print(f"W&B: wandb.init failed online ({type(e).__name__}); logging offline to {workdir}/wandb", flush=True)
            try:
                self.run = self._init(config, workdir, run_id, "offline")
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"W&B disabled for this run: wandb.init failed ({type(e).__name__}: {e})")

    @staticmethod
    def _init(config, workdir: str, run_id: str, mode: str):
        import wandb  # see wandb_metrics

        return wandb.init(
            project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
            job_type=config.wandb.get("job_type"), name=config.name, tags=wandb_tags(config), config=config.to_dict(),
            id=run_id,
            resume="allow", mode=mode, dir=workdir,
            settings=wandb.Settings(init_timeout=30, console="off", silent=True))

    def _started(self):
        self._thread.join()
        return self.run

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._started() is not None:
            try:
                self.run.log(wandb_metrics(metrics), step=int(step))
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"W&B log failed at step {step}: {e}")

    def summary(self, values: Mapping[str, Any]) -> None:
        if self._started() is not None:
            self.run.summary.update(dict(values))

    def close(self, preempted_by: str | None = None) -> None:
        """`preempted_by`: the signal that stopped the run (it resumes later). W&B then marks the run
        preempting and gets the process's exit code, so a W&B sweep re-queues it instead of counting
        it finished."""
        if self._started() is not None:
            if preempted_by:
                self.run.mark_preempting()
            self.run.finish(exit_code=128 + signal.Signals[preempted_by] if preempted_by else None)
            self.run = None


class MetricWriter:
    """metrics.jsonl + W&B on process 0; a no-op on the other processes."""

    def __init__(self, config, workdir: str, resume_step: int, run_id: str, is_main: bool,
                 wandb_writer: WandbWriter | None = None):
        """`wandb_writer`: one started earlier (its init runs while the data loads)."""
        if not is_main:
            self.writers = []
            return
        self.writers = [JsonlWriter(workdir, resume_step), wandb_writer or WandbWriter(config, workdir, run_id)]

    @property
    def logged_steps(self) -> set:
        """Steps metrics.jsonl already has a record of (process 0; empty elsewhere)."""
        return self.writers[0].steps if self.writers else set()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write(step, metrics)

    def summary(self, values: Mapping[str, Any]) -> None:
        for w in self.writers:
            if isinstance(w, WandbWriter):
                w.summary(values)

    def close(self, preempted_by: str | None = None) -> None:
        for w in self.writers:
            w.close(preempted_by) if isinstance(w, WandbWriter) else w.close()
