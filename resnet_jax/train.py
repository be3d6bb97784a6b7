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

from resnet_jax import (checkpointing, config_checks, data as datasets, diagnostics, finetune, metric_writers, models,
                        optim, preemption, run_dir, sharding, step)
from resnet_jax.sharding import host_value


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


class ConfigMismatch(ValueError):
    """A resumed run's config changes what the saved run computes."""


# ----------------------------------------------------------------------------- before the loop


def check_resumable(config, workdir: str) -> None:
    """Refuses to resume a run whose saved config differs in what it computes (FROZEN_FIELDS)."""
    saved = run_dir.read_config(workdir)
    diff = run_dir.frozen_config_diff(saved, config.to_dict()) if saved else []
    if diff:
        raise ConfigMismatch(f"{workdir} holds a run with different {', '.join(diff)}; use a new --workdir, "
                             "or --config.resume=false to start this one over")


def initial_state(config, model, tx, num_classes: int, mesh, ckpt, start: int | None):
    """(state, checkpoint meta, metrics missing from the checkpoint): fresh, fine-tuned or restored."""
    replicated = sharding.replicated(mesh)
    init = functools.partial(step.init_state, config, model, tx, num_classes)
    if start is not None:
        state, meta, filled = ckpt.restore(start, checkpointing.abstract_with_sharding(jax.eval_shape(init), replicated))
        print(f"{config.name}: resuming from step {start} in {os.path.dirname(ckpt.directory)}")
        return state, meta, filled
    state = jax.jit(init, out_shardings=replicated)()
    meta = {"wandb_run_id": uuid.uuid4().hex[:12]}
    if config.get("init_from"):
        state, meta["init_from"] = finetune.start_from_pretrained(state, config.init_from, replicated)
        report = meta["init_from"]
        print(f"{config.name}: initialised from {report['path']} (step {report['step']}); "
              f"new: {', '.join(report['reinitialized']) or 'nothing'}", flush=True)
    return state, meta, []


def runtime_record(config, mesh, data, init_from: dict | None) -> dict:
    """config.json's ``runtime``: where and on what the run trains."""
    record = {"devices": mesh.size, "device_kind": jax.devices()[0].device_kind, "host": run_dir.host_description(),
              "processes": jax.process_count(), **data.runtime(),
              "bn_statistics_over": config.model.bn_group_size or config.batch_size}
    if init_from:
        record["init_from"] = init_from
    return record


def resume_summary(meta: dict, workdir: str, start: int) -> dict:
    """Best test error and training time so far (checkpoints before they were kept: from metrics.jsonl)."""
    if "best_test_error" not in meta:
        errors = [r["test/error"] for r in run_dir.read_metrics(workdir)
                  if r.get("step", 0) <= start and isinstance(r.get("test/error"), float)]
        meta["best_test_error"] = min(errors) if errors else None
    meta.setdefault("train_time_s", 0.0)
    return meta


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
    sums = {k: float(v) for k, v in sharding.host_tree(state.sums).items()}
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

    def log(self, done: int, metrics: dict) -> None:
        self.writer.write(done, metrics)
        if self.is_main:
            print(progress_line(self.config, done, metrics), flush=True)

    def metrics_at(self, state, done: int, clock: Throughput, skip=()) -> dict:
        """Everything due at step `done`: interval metrics, diagnostics, evaluation."""
        config, metrics = self.config, {}
        final = done == config.num_train_steps
        if done % config.log_every == 0 or final:
            metrics = interval_metrics(config, state, self.data, self.schedule, done, skip)
            rate = clock.rate(done)
            if rate:
                metrics["img_per_s"] = rate
        if self.diagnose and self.diagnose.due(done):
            with clock.excluded(state):
                metrics.update(self.diagnose(state))
        if done % config.eval_every == 0 or final:
            with clock.excluded(state):
                metrics.update(self.evaluate(state))
            best = self.meta["best_test_error"]
            self.meta["best_test_error"] = min(best if best is not None else 1.0, metrics["test/error"])
        return metrics

    def run(self, state, start: int, skip=()) -> dict:
        config, last = self.config, {}
        inputs = self.data.train_inputs(start)
        clock, began, trained_before = Throughput(config.batch_size), time.time(), self.meta["train_time_s"]
        with preemption.StopSignal() as stop:
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
                    self.ckpt.wait()
                    raise TrainingDiverged(f"{e} The last good checkpoint is step {self.ckpt.latest_step()} in "
                                           f"{self.ckpt.directory}.") from None
                if metrics:
                    self.log(done, metrics)
                    last = {"step": done, **metrics}
                self.meta["train_time_s"] = trained_before + time.time() - began
                signal_name = stop.agreed(done, config.log_every)
                if done % config.checkpoint_every == 0 or done == config.num_train_steps or signal_name:
                    self.ckpt.save(done, state, self.meta)
                if signal_name:
                    self.stop(done, signal_name)
        return last

    def stop(self, done: int, signal_name: str):
        self.ckpt.close()
        self.writer.close()
        print(f"{self.config.name}: stopped by {signal_name} at step {done}; checkpoint saved in "
              f"{self.ckpt.directory}. Re-run the same command to resume.", flush=True)
        raise preemption.Interrupted(preemption.exit_code(signal_name))

    def summary(self, last: dict) -> None:
        self.writer.summary({"final/train_error": last.get("train/error"), "final/test_error": last.get("test/error"),
                             "best/test_error": self.meta["best_test_error"],
                             "train_time_s": self.meta["train_time_s"]})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) one run in `workdir`; returns the last logged metrics."""
    mesh = sharding.make_mesh()
    config_checks.validate_config(config, mesh.size)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if not config.resume and is_main:
        aside = run_dir.set_aside(workdir)
        if aside:
            print(f"resume=false: the previous run in {workdir} was moved to {aside}", flush=True)
    ckpt = checkpointing.Checkpointer(run_dir.checkpoint_dir(workdir), keep=config.keep_checkpoints)
    try:
        return _train(config, workdir, mesh, ckpt, is_main)
    finally:
        ckpt.close()


def _train(config, workdir: str, mesh, ckpt, is_main: bool) -> dict:
    start = ckpt.latest_step()
    if start is not None:
        check_resumable(config, workdir)
        if start >= config.num_train_steps:
            print(f"{config.name}: already finished ({start} of {config.num_train_steps} steps) in {workdir}")
            return {"step": start, "finished": True}
    saved_runtime = run_dir.saved_runtime(workdir) if start is not None else {}
    data = datasets.get(config, mesh)
    model = models.from_config(config.model, data.num_classes)
    schedule = optim.lr_schedule(config)
    tx = optim.make_optimizer(config, schedule)
    state, meta, filled = initial_state(config, model, tx, data.num_classes, mesh, ckpt, start)
    start = int(host_value(state.step))
    meta = resume_summary(meta, workdir, start)
    if is_main:
        init_from = meta.get("init_from") or saved_runtime.get("init_from")
        run_dir.write_config(workdir, config.to_dict(), runtime_record(config, mesh, data, init_from))
        for note in data.notes(saved_runtime):
            print(f"{config.name}: note: {note}", flush=True)
    writer = metric_writers.MetricWriter(config, workdir, start, meta["wandb_run_id"], is_main)
    diagnose = diagnostics.Diagnostics(config, model, mesh, data, workdir, is_main) \
        if config.get("diagnostics_every") else None
    trainer = Trainer(config, workdir, data, schedule, step.make_train_step(config, model, tx, mesh, data),
                      step.make_evaluator(data, model, mesh), diagnose, ckpt, writer, meta, is_main)
    if diagnose and start == 0 and diagnose.due(0):
        trainer.log(0, diagnose(state))
    # A metric the checkpoint lacked has a partial sum until the next log boundary: leave it out there.
    last = trainer.run(state, start, skip=filled if start % config.log_every else ())
    if last and is_main:
        trainer.summary(last)
    writer.close()
    return last
