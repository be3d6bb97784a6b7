"""Training as a library: TrainState, train_step, evaluate, train_and_evaluate(config, workdir).

Data parallelism is `jax.jit` over a one-axis ``Mesh(('data',))`` of every device of every host:
the batch is sharded ``P('data')``, the state replicated ``P()`` and donated. Batch-norm
statistics therefore cover the global batch with no axis_name (or groups of it, with
``config.model.bn_group_size``).

Everything a step does depends only on the state and the step number (the batch at step s is a
function of (seed, s); the metric sums of the current log interval live in the state), so a
run resumed from a checkpoint continues bit-identically.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time
import uuid
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import checkpointing, finetune, input_pipeline, metric_writers, models

# Fields that define what a run computes; resuming with any of them changed is refused.
FROZEN_FIELDS = ("dataset", "val_split", "seed", "batch_size", "model",
                 "train_split", "image_size", "train_resize", "shuffle_buffer")  # the last four: streamed data


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


class ConfigMismatch(ValueError):
    """A resumed run's config changes what the saved run computes."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array        # uint32[2] from the seed: data order and augmentation
    warmup: jax.Array     # bool: still at the warm-up learning rate
    error_ema: jax.Array  # smoothed training error, which ends the warm-up
    sums: dict            # loss / error / count summed since the last log step


# ----------------------------------------------------------------------------- pieces


def make_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def make_model(config, num_classes: int):
    fields = {k: v for k, v in config.model.items() if k != "family"}
    fields["bn_group_size"] = fields.get("bn_group_size") or None
    return models.create_model(config.model.family, num_classes=num_classes, **fields)


def lr_boundaries(config) -> tuple[int, ...]:
    """Steps at which the lr is divided: `lr_boundaries` (CIFAR, in iterations as the paper counts
    them) or `lr_boundary_epochs` times `steps_per_epoch` (ImageNet, where the paper counts epochs)."""
    if config.get("lr_boundary_epochs"):
        return tuple(int(round(e * config.steps_per_epoch)) for e in config.lr_boundary_epochs)
    return tuple(int(b) for b in config.lr_boundaries)


def lr_schedule(config, base_lr: float | None = None) -> optax.Schedule:
    """The paper's step schedule: lr divided by 10 at fixed steps (CIFAR: 32k and 48k iterations)."""
    return optax.piecewise_constant_schedule(
        config.learning_rate if base_lr is None else base_lr, {b: config.lr_decay for b in lr_boundaries(config)})


def make_optimizer(config) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (as Caffe/PyTorch SGD).

    Fine-tuning may freeze the backbone or give it its own learning rate; the head always
    trains at `learning_rate`.
    """
    def sgd(base_lr=None):
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(lr_schedule(config, base_lr), momentum=config.momentum))

    backbone_lr = config.get("backbone_learning_rate")
    if not config.get("freeze_backbone") and backbone_lr is None:
        return sgd()
    return finetune.split_optimizer(sgd(), None if config.get("freeze_backbone") else sgd(backbone_lr))


def uses_warmup(config) -> bool:
    """The paper warms up ResNet-110 (and deeper) at lr 0.01 until training error < 80%."""
    return bool(config.warmup) if config.warmup is not None else config.model.depth >= 110


def learning_rate(config, step: int, warmup: bool) -> float:
    """The lr used at `step` (for logs): the schedule times the warm-up factor."""
    lr = config.learning_rate * config.lr_decay ** sum(step >= b for b in lr_boundaries(config))
    return lr * (config.warmup_learning_rate / config.learning_rate if warmup else 1.0)


def warmup_scale(config, warmup: jax.Array) -> jax.Array:
    return jnp.where(warmup, config.warmup_learning_rate / config.learning_rate, 1.0)


def init_state(config, model, tx, num_classes: int) -> TrainState:
    init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init(init_key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    params = variables["params"]
    zero = lambda: jnp.zeros((), jnp.float32)  # distinct buffers: the state is donated
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params), rng=data_key, warmup=jnp.asarray(uses_warmup(config)),
        error_ema=jnp.asarray(1.0 - 1.0 / num_classes, jnp.float32),
        sums={"loss": zero(), "error": zero(), "count": zero()})


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, data: input_pipeline.DeviceData, *, model, tx, config,
               batch_sharding) -> TrainState:
    """One SGD step on the batch of `state.step`, drawn and augmented on the devices (CIFAR)."""
    images, labels = input_pipeline.train_batch(data, state.rng, state.step, config.batch_size)
    return sgd_step(state, images, labels, model=model, tx=tx, config=config, batch_sharding=batch_sharding)


def streamed_train_step(state: TrainState, batch, *, model, tx, config, batch_sharding) -> TrainState:
    """One SGD step on a batch the hosts decoded and cropped (ImageNet): uint8 images, labels.

    Mean subtraction and the optional PCA colour augmentation (seeded by (seed, step)) run here.
    """
    from resnet_jax import imagenet_input

    images, labels = batch
    images = imagenet_input.normalize(images)
    if config.get("color_augmentation"):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)
        images = imagenet_input.lighting(key, images)
    return sgd_step(state, images, labels, model=model, tx=tx, config=config, batch_sharding=batch_sharding)


def sgd_step(state: TrainState, images, labels, *, model, tx, config, batch_sharding) -> TrainState:
    """One SGD step on (images, labels); metric sums restart at each log boundary."""
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    labels = jax.lax.with_sharding_constraint(labels, batch_sharding)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if config.get("freeze_backbone"):  # linear probe: a fixed feature extractor, BN in eval mode
            logits = model.apply(variables, images, train=False)
            return cross_entropy(logits, labels).mean(), (logits, state.batch_stats)
        logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, labels).mean(), (logits, updated["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    scale = warmup_scale(config, state.warmup)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: u * scale.astype(u.dtype), updates))

    error = jnp.mean(jnp.argmax(logits, -1) != labels).astype(jnp.float32)
    error_ema = 0.9 * state.error_ema + 0.1 * error
    fresh = state.step % config.log_every == 0
    new = {"loss": loss.astype(jnp.float32), "error": error, "count": jnp.ones((), jnp.float32)}
    sums = jax.tree.map(lambda s, v: jnp.where(fresh, 0.0, s) + v, state.sums, new)
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        warmup=state.warmup & (error_ema >= config.warmup_until_error), error_ema=error_ema, sums=sums)


EVAL_SUMS = ("error", "top5_error", "loss")


def batch_eval_sums(state: TrainState, images, labels, mask, *, model) -> dict:
    """Summed top-1 errors, top-5 errors and loss of one batch of normalised images; padding masked out.

    Images [B, K, H, W, 3] are K crops per example (10-crop testing): their softmax scores are averaged.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if images.ndim == 5:
        b, k = images.shape[:2]
        logits = model.apply(variables, images.reshape((b * k,) + images.shape[2:]), train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(b, k, -1).mean(axis=1)
        logits = jnp.log(jnp.maximum(probs, 1e-30))  # log of the averaged scores
    else:
        logits = model.apply(variables, images, train=False)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    sums = {"error": (jnp.argmax(logits, -1) != labels) * mask,
            "top5_error": (~jnp.any(top5 == labels[:, None], axis=-1)) * mask,
            "loss": cross_entropy(logits, labels) * mask}
    return {k: v.astype(jnp.float32).sum() for k, v in sums.items()}


def evaluate(state: TrainState, test: input_pipeline.EvalData, mean: jax.Array, *, model) -> dict:
    """`batch_eval_sums` summed over a split held on the devices (CIFAR), in one program."""

    def add_batch(totals, batch):
        images, labels, mask = batch
        sums = batch_eval_sums(state, input_pipeline.normalize(images, mean), labels, mask, model=model)
        return {k: totals[k] + sums[k] for k in EVAL_SUMS}, None

    zero = {k: jnp.zeros((), jnp.float32) for k in EVAL_SUMS}
    totals, _ = jax.lax.scan(add_batch, zero, (test.images, test.labels, test.mask))
    return totals


def make_evaluator(data, model, mesh: Mesh, top5: bool = False):
    """fn(state) -> test metrics over the whole test split of `data`, on device or streamed.

    Top-5 error is reported for 100+ classes, or always with `top5`.
    """
    replicated = NamedSharding(mesh, P())
    classes = max(data.num_classes, 100) if top5 else data.num_classes
    if not input_pipeline.is_streamed_data(data):
        fn = jax.jit(functools.partial(evaluate, model=model), out_shardings=replicated)
        return lambda state: eval_metrics(fn(state, data.test, data.train.mean), data.num_test, classes)

    from resnet_jax import imagenet_input

    def add_batch(totals, state, images, labels, mask):
        sums = batch_eval_sums(state, imagenet_input.normalize(images), labels, mask, model=model)
        return {k: totals[k] + sums[k] for k in EVAL_SUMS}

    add = jax.jit(add_batch, out_shardings=replicated, donate_argnums=0)
    zeros = jax.jit(lambda: {k: jnp.zeros((), jnp.float32) for k in EVAL_SUMS}, out_shardings=replicated)

    def run(state):
        totals = zeros()
        for images, labels, mask in data.eval_batches():
            totals = add(totals, state, images, labels, mask)
        return eval_metrics(totals, data.num_test, classes)

    return run


def eval_metrics(totals: dict, num_examples: int, num_classes: int) -> dict:
    """Per-example averages of `evaluate`'s sums; top-5 only where it means something (100+ classes)."""
    names = ("error", "loss", "top5_error") if num_classes >= 100 else ("error", "loss")
    return {f"test/{k}": float(host_value(totals[k])) / num_examples for k in names}


def make_train_step(config, model, tx, mesh: Mesh):
    """The train step jitted over `mesh`: state replicated and donated, batch sharded over 'data'.

    fn(state, data) with CIFAR's on-device data; fn(state, (images, labels)) for a streamed dataset.
    """
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    streamed = input_pipeline.is_streamed(config.dataset)
    step = functools.partial(streamed_train_step if streamed else train_step, model=model, tx=tx, config=config,
                             batch_sharding=batch)
    return jax.jit(step, in_shardings=(replicated, (batch, batch) if streamed else replicated),
                   out_shardings=replicated, donate_argnums=0)


# ----------------------------------------------------------------------------- config checks


def validate_config(config, num_devices: int) -> None:
    """Fails fast, with a message saying what to do, on settings that cannot run."""
    classes = input_pipeline.num_classes(config.dataset, config.get("num_classes"))
    if config.batch_size % num_devices:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {num_devices} devices; "
                         f"use a multiple of {num_devices} (--config.batch_size=...)")
    if config.eval_batch_size % num_devices:
        raise ValueError(f"eval_batch_size {config.eval_batch_size} is not divisible by the {num_devices} "
                         f"devices; use a multiple of {num_devices}")
    group = config.model.bn_group_size
    if group and config.batch_size % group:
        raise ValueError(f"bn_group_size {group} must divide batch_size {config.batch_size} "
                         "(0 = statistics over the whole batch)")
    for name in ("log_every", "eval_every", "checkpoint_every", "num_train_steps"):
        if config[name] <= 0:
            raise ValueError(f"{name} must be positive, got {config[name]}")
    if input_pipeline.is_streamed(config.dataset) and config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {jax.process_count()} hosts")
    make_model(config, classes)  # bad depth / field -> ValueError


def frozen_config_diff(saved: dict, current: dict) -> list[str]:
    """Dotted names of FROZEN_FIELDS that differ between two config dicts."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = list(v) if isinstance(v, tuple) else v
        return out

    a, b = flat(saved), flat(current)
    keys = [k for k in sorted(set(a) | set(b)) if k.split(".")[0] in FROZEN_FIELDS]
    return [k for k in keys if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------- the loop


def host_description() -> str:
    """CPU model and core count of this host, for the hardware column of reports."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def host_value(x) -> np.ndarray:
    """A replicated global array as numpy, on any host."""
    return np.asarray(x.addressable_data(0))


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def agreed(self, step: int, every: int) -> str | None:
        """The signal to stop on at this step, the same on every host.

        One process stops at once. Hosts get the signal at different steps, so they agree at
        multiples of `every` (an all-gather) and all save the same step together.
        """
        if jax.process_count() == 1:
            return self.received
        if step % every:
            return None
        from jax.experimental import multihost_utils

        got = multihost_utils.process_allgather(np.asarray(self.received is not None))
        return (self.received or "SIGTERM") if np.any(got) else None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(SystemExit):
    """Raised after a signal: checkpoint saved, exit code 128 + signal number."""


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def start_from_pretrained(state: TrainState, path: str, sharding) -> tuple[TrainState, dict]:
    """`state` with the backbone (and fitting head) of the checkpoint at `path`."""
    params, stats, step = finetune.load_variables(path)
    params, fresh = finetune.merge_pretrained(jax.device_get(state.params), params, "parameters")
    stats, _ = finetune.merge_pretrained(jax.device_get(state.batch_stats), stats, "batch statistics")
    place = lambda tree: jax.tree.map(lambda a: input_pipeline.put_replicated(np.asarray(a), sharding), tree)
    report = {"path": os.path.abspath(path), "step": step, "reinitialized": fresh}
    return state.replace(params=place(params), batch_stats=place(stats)), report


def _check_streamed_resume(config, data, saved_runtime: dict) -> None:
    """Says when a streamed run resumes on another number of hosts (its data order then differs)."""
    if config.get("train_examples") and config.train_examples != data.num_train and jax.process_index() == 0:
        print(f"{config.name}: note: the schedule assumes {config.train_examples} training examples, "
              f"{config.dataset} has {data.num_train}; set --config.train_examples={data.num_train} "
              "to count epochs of this dataset", flush=True)
    saved = saved_runtime.get("processes")
    if saved and saved != jax.process_count() and jax.process_index() == 0:
        print(f"{config.name}: note: resuming on {jax.process_count()} hosts, saved on {saved}: the data order "
              "from here on differs from an uninterrupted run (each host reads its own part of the data)", flush=True)


def _saved_runtime(config_path: str) -> dict:
    with open(config_path) as f:
        return json.load(f).get("runtime", {})


def _set_aside_previous_run(workdir: str) -> None:
    """resume=false starts over without destroying anything: the old run moves to previous-<time>/."""
    names = [n for n in ("checkpoints", metric_writers.METRICS_FILE, "config.json") if os.path.exists(os.path.join(workdir, n))]
    if not names:
        return
    aside = os.path.join(workdir, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(aside)
    for name in names:
        os.replace(os.path.join(workdir, name), os.path.join(aside, name))
    print(f"resume=false: the previous run in {workdir} was moved to {aside}", flush=True)


def _progress_line(config, step: int, metrics: dict) -> str:
    line = f"{config.name} step {step}/{config.num_train_steps}"
    if "train/loss" in metrics:
        line += f" | loss {metrics['train/loss']:.4f} | err {100 * metrics['train/error']:.2f}%"
    if "test/error" in metrics:
        line += f" | test {100 * metrics['test/error']:.2f}%"
    if metrics.get("img_per_s"):
        eta = (config.num_train_steps - step) * config.batch_size / metrics["img_per_s"]
        line += f" | {metrics['img_per_s']:.0f} img/s | ETA {_format_eta(eta)}"
    if "diagnostics/grad_norm_global" in metrics:  # resnet_jax/diagnostics.py
        line += f" | diagnostics: |g| {metrics['diagnostics/grad_norm_global']:.3g}"
        if "diagnostics/grad_to_weight_first_over_last" in metrics:
            line += f", g/w first/last {metrics['diagnostics/grad_to_weight_first_over_last']:.3g}"
        if "diagnostics/branch_ratio_mean" in metrics:
            line += f", |F(x)|/|x| {metrics['diagnostics/branch_ratio_mean']:.2f}"
    return line


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) one run in `workdir`; returns the last logged metrics."""
    mesh = make_mesh()
    validate_config(config, mesh.size)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")

    if not config.resume and is_main:
        _set_aside_previous_run(workdir)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    start = ckpt.latest_step()
    if start is not None and os.path.exists(config_path):
        with open(config_path) as f:
            diff = frozen_config_diff(json.load(f), config.to_dict())
        if diff:
            raise ConfigMismatch(
                f"{workdir} holds a run with different {', '.join(diff)}; use a new --workdir, "
                "or --config.resume=false to start this one over")
    if start is not None and start >= config.num_train_steps:
        print(f"{config.name}: already finished ({start} of {config.num_train_steps} steps) in {workdir}")
        ckpt.close()
        return {"step": start, "finished": True}

    data = input_pipeline.load(config, mesh)
    streamed = input_pipeline.is_streamed_data(data)
    model = make_model(config, data.num_classes)
    tx = make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    init = functools.partial(init_state, config, model, tx, data.num_classes)
    init_report = None
    if start is None:
        state = jax.jit(init, out_shardings=replicated)()
        meta = {"wandb_run_id": uuid.uuid4().hex[:12]}
        if config.get("init_from"):
            state, init_report = start_from_pretrained(state, config.init_from, replicated)
            print(f"{config.name}: initialised from {init_report['path']} (step {init_report['step']}); "
                  f"new: {', '.join(init_report['reinitialized']) or 'nothing'}", flush=True)
    else:
        abstract = checkpointing.abstract_with_sharding(jax.eval_shape(init), replicated)
        state, meta = ckpt.restore(start, abstract)
        print(f"{config.name}: resuming from step {start} in {workdir}")
    start = int(host_value(state.step))
    saved_runtime = _saved_runtime(config_path) if start and os.path.exists(config_path) else {}

    if is_main:
        record = config.to_dict()
        record["runtime"] = {"devices": mesh.size, "device_kind": jax.devices()[0].device_kind, "host": host_description(),
                             "processes": jax.process_count(), "num_train": data.num_train, "num_test": data.num_test,
                             "bn_statistics_over": config.model.bn_group_size or config.batch_size}
        if streamed:
            record["runtime"]["steps_per_epoch"] = data.steps_per_epoch
        if init_report or (start is not None and os.path.exists(config_path)):
            record["runtime"]["init_from"] = init_report or saved_runtime.get("init_from")
        with open(config_path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
        os.replace(config_path + ".tmp", config_path)
    writer = metric_writers.MetricWriter(config, workdir, start, meta["wandb_run_id"], is_main)

    step_fn = make_train_step(config, model, tx, mesh)
    run_eval = make_evaluator(data, model, mesh)
    if streamed:  # batches decoded and cropped by the hosts, from the resumed step on
        _check_streamed_resume(config, data, saved_runtime)
        batches = data.train_batches(start)
        next_input = lambda: next(batches)
    else:  # the whole split is on the devices; the step draws its batch
        next_input = lambda: data.train

    # Layer responses, gradient flow, branch ratios (resnet_jax/diagnostics.py): their own jitted
    # program on a fixed batch, every diagnostics_every steps; the training step is not touched.
    from resnet_jax import diagnostics
    diag = diagnostics.Diagnostics(config, model, mesh, data, workdir, is_main) \
        if config.get("diagnostics_every") else None
    if diag and start == 0 and diag.due(0):
        diag_metrics = diag(state)
        writer.write(0, diag_metrics)
        if is_main:
            print(_progress_line(config, 0, diag_metrics), flush=True)

    last: dict = {}
    best_test = None
    tick, tick_step = time.time(), start
    t_start = time.time()
    with _StopSignal() as stop:
        for step in range(start, config.num_train_steps):
            state = step_fn(state, next_input())
            done = step + 1
            if step == start:  # leave compilation out of the images/s figures
                host_value(state.step)
                tick, tick_step = time.time(), done
                if is_main:
                    print(f"{config.name}: first step (compilation included) took {tick - t_start:.1f}s", flush=True)
            final = done == config.num_train_steps
            metrics = {}
            if done % config.log_every == 0 or final:
                sums = {k: float(host_value(v)) for k, v in state.sums.items()}
                if not np.isfinite(sums["loss"]):
                    ckpt.wait()
                    raise TrainingDiverged(
                        f"{config.name}: training loss is {sums['loss'] / sums['count']} at step {done}; "
                        f"stopped. The last good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints.")
                metrics = {"train/loss": sums["loss"] / sums["count"], "train/error": sums["error"] / sums["count"],
                           "lr": learning_rate(config, step, bool(host_value(state.warmup))),
                           "epoch": done * config.batch_size / data.num_train}
                now = time.time()
                if done > tick_step:
                    metrics["img_per_s"] = (done - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, done
            if diag and diag.due(done):
                host_value(state.step)  # the queued steps finish first: time only the diagnostics
                diag_start = time.time()
                metrics.update(diag(state))
                tick += time.time() - diag_start  # not training throughput
            if done % config.eval_every == 0 or final:
                metrics.update(run_eval(state))
                best_test = min(best_test or 1.0, metrics["test/error"])
                tick = time.time()  # evaluation time is not training throughput
            if metrics:
                writer.write(done, metrics)
                last = {"step": done, **metrics}
                if is_main:
                    print(_progress_line(config, done, metrics), flush=True)
            stop_signal = stop.agreed(done, config.log_every)
            if done % config.checkpoint_every == 0 or final or stop_signal:
                ckpt.save(done, state, meta)
            if stop_signal:
                ckpt.close()
                writer.close()
                signum = getattr(signal, stop_signal)
                print(f"{config.name}: stopped by {stop_signal} at step {done}; checkpoint saved in "
                      f"{workdir}/checkpoints. Re-run the same command to resume.", flush=True)
                raise Interrupted(128 + signum)

    if last and is_main:
        writer.summary({"final/train_error": last.get("train/error"), "final/test_error": last.get("test/error"),
                        "best/test_error": best_test, "train_time_s": time.time() - t_start})
    ckpt.close()
    writer.close()
    return last
