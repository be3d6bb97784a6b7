"""The training loop: ``train_and_evaluate(config, workdir)`` trains (or resumes) one run.

It is composed from the parts that do the work: the dataset (``resnet_jax.data``), the model
(``resnet_jax.models``), the optimiser and schedule (``optim``), the jitted step and evaluator
(``step``), checkpoints (``checkpointing``), the run directory (``run_dir``), metrics
(``metric_writers``), diagnostics and preemption. Data parallelism: ``jax.jit`` over a one-axis
``Mesh(('data',))`` of every device of every host (``sharding``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
import uuid

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import (checkpointing, config_checks, data as datasets, diagnostics, finetune, metric_writers, models,
                        optim, preemption, run_dir, sharding, step, workdir_lock)
from resnet_jax.sharding import host_value


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


class ConfigMismatch(ValueError):
    """A resumed run's config changes what the saved run computes."""


# ----------------------------------------------------------------------------- before the loop


def check_resumable(config, workdir: str, step: int) -> None:
    """Refuses to resume a run whose saved fields differ in what it computes (FROZEN_FIELDS): those
    recorded in the checkpoint itself, else (older checkpoints) those of config.json."""
    saved = run_dir.read_checkpoint_meta(workdir, step).get("frozen") or run_dir.read_config(workdir)
    diff = run_dir.frozen_config_diff(saved, config.to_dict()) if saved else []
    if diff:
        raise ConfigMismatch(f"{workdir} holds a run with different {', '.join(diff)}; use a new --workdir, "
                             "or --config.resume=false to start this one over")


def initial_state(config, model, tx, num_classes: int, mesh, ckpt, run_id: str):
    """(state, checkpoint meta, metrics missing from the checkpoint): restored from the newest intact
    checkpoint, else fresh (or fine-tuned from `init_from`)."""
    replicated = sharding.replicated(mesh)
    init = functools.partial(step.init_state, config, model, tx, num_classes)
    restored = ckpt.restore_latest(checkpointing.abstract_with_sharding(jax.eval_shape(init), replicated))
    if restored is not None:
        state, meta, filled, start = restored
        print(f"{config.name}: resuming from step {start} in {os.path.dirname(ckpt.directory)}")
        return state, meta, filled
    state = jax.jit(init, out_shardings=replicated)()
    meta = {"wandb_run_id": run_id}
    if config.get("init_from"):
        state, meta["init_from"] = finetune.start_from_pretrained(state, config.init_from, replicated, config.model)
        report = meta["init_from"]
        source = report.get("weights") or f"step {report['step']}"
        print(f"{config.name}: initialised from {report['path']} ({source}); "
              f"new: {', '.join(report['reinitialized']) or 'nothing'}", flush=True)
    return state, meta, []


def saved_wandb_run_id(workdir: str) -> str | None:
    """The W&B run id of the newest checkpoint that has one (a resumed run continues its W&B run)."""
    for saved in reversed(run_dir.checkpoint_steps(workdir)):
        run_id = run_dir.read_checkpoint_meta(workdir, saved).get("wandb_run_id")
        if run_id:
            return run_id
    return None


def runtime_record(config, mesh, data, init_from: dict | None, segments: list) -> dict:
    """config.json's ``runtime``: where and on what the run trains, and its history of segments."""
    record = {"devices": mesh.size, "device_kind": jax.devices()[0].device_kind, "host": run_dir.host_description(),
              "processes": jax.process_count(), **data.runtime(),
              "bn_statistics_over": config.model.bn_group_size or config.batch_size, "segments": segments}
    if init_from:
        record["init_from"] = init_from
    return record


def segments_so_far(config, workdir: str, start: int) -> list:
    """Each time the run (re)started: at which step, when, and the fields changed since the last time."""
    saved = run_dir.read_config(workdir) if start else None
    segments = list((saved or {}).get("runtime", {}).get("segments", [])) if saved else []
    segment = {"start_step": start, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if saved:
        segment["changed"] = run_dir.config_changes(saved, config.to_dict())
    return segments + [segment]


def resume_summary(meta: dict, workdir: str, start: int) -> dict:
    """Best test error and training time so far (checkpoints before they were kept: from metrics.jsonl)."""
    if "best_test_error" not in meta:
        errors = [r["test/error"] for r in run_dir.read_metrics(workdir)
                  if r.get("step", 0) <= start and isinstance(r.get("test/error"), float)]
        meta["best_test_error"] = min(errors) if errors else None
    meta.setdefault("train_time_s", 0.0)
    return meta


def restart_sums_if_log_every_changed(config, state, meta: dict):
    """A resume with another log_every starts a fresh interval at the resume step (the saved sums
    cover an interval of the old length, which the new boundaries would count twice)."""
    saved = meta.get("log_every", config.log_every)
    if saved == config.log_every:
        return state
    print(f"{config.name}: note: log_every changed from {saved} to {config.log_every}: the first interval after "
          f"the resume averages the steps from step {int(host_value(state.step))} on", flush=True)
    zero = lambda x: sharding.put_replicated(np.zeros(x.shape, x.dtype), x.sharding)
    return state.replace(sums=jax.tree.map(zero, state.sums))


# ----------------------------------------------------------------------------- in the loop


class Throughput:
    """Training images per second between log steps; compilation, evaluation and diagnostics excluded."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.tick, self.tick_step = time.time(), 0

    def restart(self, step_: int) -> None:
        self.tick, self.tick_step = time.time(), step_

    def rate(self, step_: int) -> float | None:
        now = time.time()
        rate = (step_ - self.tick_step) * self.batch_size / (now - self.tick) if step_ > self.tick_step else None
        self.tick, self.tick_step = now, step_
        return rate

    @contextlib.contextmanager
    def excluded(self, state):
        host_value(state.step)  # the queued steps finish first: time only what follows
        start = time.time()
        yield
        self.tick += time.time() - start


def interval_metrics(config, state, data, schedule, done: int, skip=()) -> dict:
    """train/NAME (mean over the log interval of every metric the step returns), lr and epoch."""
    host = sharding.host_tree(state.sums)
    sums = {k: float(host[k]) for k in [*step.metric_names(), *host] if k in host}  # in the step's order
    count = sums.pop("count")
    if not math.isfinite(sums["loss"]):
        raise TrainingDiverged(f"{config.name}: training loss is {sums['loss'] / count} at step {done}; stopped.")
    metrics = {f"train/{k}": v / count for k, v in sums.items() if k not in skip}
    metrics["lr"] = optim.learning_rate(config, done - 1, bool(host_value(state.warmup)), schedule)
    metrics["epoch"] = done * config.batch_size / data.num_train
    return metrics


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _format_metric(name: str, value: float) -> str:
    if name.endswith("error"):
        return f"{'err' if name == 'error' else name} {100 * value:.2f}%"
    return f"{name} {value:.4f}"


def progress_line(config, step_: int, metrics: dict) -> str:
    line = f"{config.name} step {step_}/{config.num_train_steps}"
    line += "".join(f" | {_format_metric(k[len('train/'):], v)}" for k, v in metrics.items() if k.startswith("train/"))
    if "test/error" in metrics:
        line += f" | test {100 * metrics['test/error']:.2f}%"
    if metrics.get("img_per_s"):
        eta = (config.num_train_steps - step_) * config.batch_size / metrics["img_per_s"]
        line += f" | {metrics['img_per_s']:.0f} img/s | ETA {_format_eta(eta)}"
    if "diagnostics/grad_norm_global" in metrics:  # resnet_jax/diagnostics.py
        line += f" | diagnostics: |g| {metrics['diagnostics/grad_norm_global']:.3g}"
        if "diagnostics/grad_to_weight_first_over_last" in metrics:
            line += f", g/w first/last {metrics['diagnostics/grad_to_weight_first_over_last']:.3g}"
        if "diagnostics/branch_ratio_mean" in metrics:
            line += f", |F(x)|/|x| {metrics['diagnostics/branch_ratio_mean']:.2f}"
    return line


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Trainer:
    """What one run's loop works with."""

    config: ml_collections.ConfigDict
    workdir: str
    data: datasets.Dataset
    schedule: object
    step_fn: object
    evaluate: object
    diagnose: diagnostics.Diagnostics | None
    ckpt: checkpointing.Checkpointer
    writer: metric_writers.MetricWriter
    meta: dict
    is_main: bool
    stop: preemption.StopSignal
    finite: object = None  # jitted step.all_finite

    def log(self, done: int, metrics: dict) -> None:
        self.writer.write(done, metrics)
        if self.is_main:
            print(progress_line(self.config, done, metrics), flush=True)

    def metrics_at(self, state, done: int, clock: Throughput | None, skip=()) -> dict:
        """Everything due at step `done`: interval metrics, diagnostics, evaluation."""
        config, metrics = self.config, {}
        final = done == config.num_train_steps
        excluded = clock.excluded if clock else lambda state: contextlib.nullcontext()
        if done % config.log_every == 0 or final:
            metrics = interval_metrics(config, state, self.data, self.schedule, done, skip)
            rate = clock.rate(done) if clock else None
            if rate:
                metrics["img_per_s"] = rate
        if self.diagnose and self.diagnose.due(done):
            with excluded(state):
                metrics.update(self.diagnose(state))
        if done % config.eval_every == 0 or final:
            with excluded(state):
                metrics.update(self.evaluate(state))
            best = self.meta["best_test_error"]
            self.meta["best_test_error"] = min(best if best is not None else 1.0, metrics["test/error"])
        return metrics

    def rebuild_record(self, state, start: int, logged_steps: set) -> None:
        """The record of the resume step, if metrics.jsonl lost it (a torn last line): the checkpoint
        holds the sums of the interval that ended there, and evaluation is deterministic."""
        config = self.config
        unchanged = self.meta.get("log_every", config.log_every) == config.log_every
        due = start % config.log_every == 0 or start % config.eval_every == 0
        missing = bool(unchanged and due and start not in logged_steps)
        if jax.process_count() > 1:  # only process 0 reads metrics.jsonl; every host must agree (evaluation)
            missing = bool(multihost_utils.broadcast_one_to_all(np.asarray(missing)))
        if not missing:
            return
        self.log(start, self.metrics_at(state, start, None))
        if self.is_main:
            print(f"{config.name}: rebuilt the record of step {start} from its checkpoint (no img_per_s)", flush=True)

    def save(self, done: int, state) -> None:
        """Saves a finite state; a diverged one stops the run with the last good checkpoint named."""
        if not bool(host_value(self.finite(state))):
            self.diverged(done, f"the weights are not finite at step {done}; stopped without saving them.")
        self.ckpt.save(done, state, self.meta)

    def diverged(self, done: int, what: str):
        self.ckpt.wait()
        last_good = self.ckpt.latest_step()
        if self.is_main:
            run_dir.mark_diverged(self.workdir, done, last_good)
        where = f"The last good checkpoint is step {last_good} in {self.ckpt.directory}" if last_good is not None \
            else f"No checkpoint was saved before it diverged (in {self.ckpt.directory})"
        raise TrainingDiverged(f"{self.config.name}: {what} {where}; lower --config.learning_rate and re-run "
                               "to resume from there.")

    def run(self, state, start: int, skip=()) -> dict:
        config, last = self.config, {}
        inputs = self.data.train_inputs(start)
        clock, began, trained_before = Throughput(config.batch_size), time.time(), self.meta["train_time_s"]
        for i in range(start, config.num_train_steps):
            state = self.step_fn(state, next(inputs))
            done = i + 1
            if i == start:  # leave compilation out of the images/s figures
                host_value(state.step)
                clock.restart(done)
                if self.is_main:
                    print(f"{config.name}: first step (compilation included) took {time.time() - began:.1f}s",
                          flush=True)
            try:
                metrics = self.metrics_at(state, done, clock, skip if done - start <= config.log_every else ())
            except TrainingDiverged as e:
                self.diverged(done, str(e).split(": ", 1)[1])
            if metrics:
                self.log(done, metrics)
                last = {"step": done, **metrics}
            self.meta["train_time_s"] = trained_before + time.time() - began
            signal_name = self.stop.agreed(done, config.log_every)
            if done % config.checkpoint_every == 0 or done == config.num_train_steps or signal_name:
                self.save(done, state)
            if signal_name:
                self.interrupted(done, signal_name)
        return last

    def interrupted(self, done: int, signal_name: str):
        self.ckpt.close()
        self.writer.close(preempted_by=signal_name)
        print(f"{self.config.name}: stopped by {signal_name} at step {done}; checkpoint saved in {self.ckpt.directory}. "
              "Re-run the same command to resume.", flush=True)
        raise preemption.Interrupted(preemption.exit_code(signal_name))

    def summary(self, last: dict) -> None:
        self.writer.summary({"final/train_error": last.get("train/error"), "final/test_error": last.get("test/error"),
                             "best/test_error": self.meta["best_test_error"],
                             "train_time_s": self.meta["train_time_s"]})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) one run in `workdir`; returns the last logged metrics.

    Nothing is written before the config is checked and the workdir's lock is held.
    """
    mesh = sharding.make_mesh()
    config_checks.validate_config(config, mesh.size)
    is_main = jax.process_index() == 0
    with preemption.StopSignal() as stop, _workdir_held(workdir, is_main):
        if not config.resume and is_main:
            aside = run_dir.set_aside(workdir)
            if aside:
                print(f"resume=false: the previous run in {workdir} was moved to {aside}", flush=True)
        ckpt = checkpointing.Checkpointer(run_dir.checkpoint_dir(workdir), keep=config.keep_checkpoints)
        try:
            return _train(config, workdir, mesh, ckpt, is_main, stop)
        finally:
            ckpt.close()


@contextlib.contextmanager
def _workdir_held(workdir: str, is_main: bool):
    """The workdir exists, is writable and is ours (process 0 holds its lock) while the run trains."""
    lock, error = None, None
    if is_main:
        try:
            run_dir.prepare_workdir(workdir)
            lock = workdir_lock.WorkdirLock(workdir).acquire()
            if lock.note:
                print(f"note: {lock.note}", flush=True)
        except (run_dir.RunDirError, workdir_lock.WorkdirInUse) as e:
            error = e
    if jax.process_count() > 1:  # every host stops if process 0 cannot have the workdir
        failed = multihost_utils.broadcast_one_to_all(np.asarray(error is not None))
        if failed and error is None:
            error = workdir_lock.WorkdirInUse(f"process 0 cannot use {workdir} (see its output)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock:
            lock.release()


def _train(config, workdir: str, mesh, ckpt, is_main: bool, stop) -> dict:
    start = ckpt.latest_step()
    if start is not None:
        check_resumable(config, workdir, start)
        if start >= config.num_train_steps:
            print(f"{config.name}: already finished ({start} of {config.num_train_steps} steps) in {workdir}")
            return {"step": start, "finished": True}
    saved_runtime = run_dir.saved_runtime(workdir) if start is not None else {}
    # A W&B sweep agent names the run it starts ($WANDB_RUN_ID); a resumed run keeps its saved id.
    run_id = saved_wandb_run_id(workdir) or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12]
    wandb_writer = metric_writers.WandbWriter(config, workdir, run_id) if is_main else None  # starts in the background
    data = datasets.get(config, mesh)
    model = models.from_config(config.model, data.num_classes)
    schedule = optim.lr_schedule(config)
    tx = optim.make_optimizer(config, schedule)
    state, meta, filled = initial_state(config, model, tx, data.num_classes, mesh, ckpt, run_id)
    start = int(host_value(state.step))
    meta = resume_summary(meta, workdir, start)
    if is_main:
        init_from = meta.get("init_from") or saved_runtime.get("init_from")
        run_dir.write_config(workdir, config.to_dict(),
                             runtime_record(config, mesh, data, init_from, segments_so_far(config, workdir, start)))
        for note in data.notes(saved_runtime):
            print(f"{config.name}: note: {note}", flush=True)
    writer = metric_writers.MetricWriter(config, workdir, start, meta["wandb_run_id"], is_main, wandb_writer)
    diagnose = diagnostics.Diagnostics(config, model, mesh, data, workdir, is_main) \
        if config.get("diagnostics_every") else None
    trainer = Trainer(config, workdir, data, schedule, step.make_train_step(config, model, tx, mesh, data),
                      step.make_evaluator(data, model, mesh), diagnose, ckpt, writer, meta, is_main, stop,
                      jax.jit(step.all_finite))
    if start:
        trainer.rebuild_record(state, start, writer.logged_steps)
    elif diagnose and diagnose.due(0):
        trainer.log(0, diagnose(state))
    state = restart_sums_if_log_every_changed(config, state, meta)
    stop.defer()  # from here on a signal saves a checkpoint at the next step
    trainer.meta.update(log_every=config.log_every, frozen=run_dir.frozen_fields(config.to_dict()))
    # A metric the checkpoint lacked has a partial sum until the next log boundary: leave it out there.
    last = trainer.run(state, start, skip=filled if start % config.log_every else ())
    if last and is_main:
        trainer.summary(last)
    writer.close()
    return last
