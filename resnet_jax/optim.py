"""The optimiser and its learning-rate schedule, chosen by name in the config.

    --config.schedule=step        the paper's: lr divided by `lr_decay` at `lr_boundaries` (default)
    --config.schedule=cosine      cosine decay to 0 over the run
    --config.linear_warmup_steps=N   a linear ramp to the schedule's value over the first N steps

A new schedule is one function ``(config, base_lr) -> optax.Schedule`` and one line in
``SCHEDULES``. The lr that metrics.jsonl and W&B log is computed from the same schedule object
the optimiser uses, times the paper's warm-up factor.

The paper's warm-up (ResNet-110 and deeper on CIFAR) is not a schedule: the lr stays at 0.01
until the training error is below 80%, which depends on training. Its state (`warmup`,
`error_ema`) lives in the TrainState, so resume is exact.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from resnet_jax import finetune


def lr_boundaries(config) -> tuple[int, ...]:
    """Steps at which the step schedule divides the lr: `lr_boundaries` (CIFAR, in iterations as
    the paper counts them) or `lr_boundary_epochs` times `steps_per_epoch` (ImageNet, in epochs)."""
    if config.get("lr_boundary_epochs"):
        return tuple(int(round(e * config.steps_per_epoch)) for e in config.lr_boundary_epochs)
    return tuple(int(b) for b in config.lr_boundaries)


def linear_warmup_steps(config) -> int:
    return int(config.get("linear_warmup_steps") or 0)


def step_schedule(config, base_lr: float) -> optax.Schedule:
    """The paper's: lr divided by 10 at fixed steps (CIFAR: 32k and 48k iterations)."""
    return optax.piecewise_constant_schedule(base_lr, {b: config.lr_decay for b in lr_boundaries(config)})


def cosine_schedule(config, base_lr: float) -> optax.Schedule:
    """Cosine decay from `base_lr` to 0, from the end of the linear warm-up to the last step."""
    warm = linear_warmup_steps(config)
    decay = optax.cosine_decay_schedule(base_lr, max(int(config.num_train_steps) - warm, 1))
    return lambda step: decay(jnp.maximum(step - warm, 0))


SCHEDULES: dict[str, Callable] = {"step": step_schedule, "cosine": cosine_schedule}


def lr_schedule(config, base_lr: float | None = None) -> optax.Schedule:
    """The schedule `config.schedule` names, with the optional linear warm-up in front."""
    name = config.get("schedule") or "step"
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)} (--config.schedule=...)")
    base = config.learning_rate if base_lr is None else base_lr
    schedule = SCHEDULES[name](config, base)
    warm = linear_warmup_steps(config)
    if not warm:
        return schedule
    return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1) / warm)


def make_optimizer(config, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (as Caffe/PyTorch SGD).

    Fine-tuning may freeze the backbone or give it its own learning rate; the head always
    trains at `learning_rate` (with `schedule`, if given: the one whose values are logged).
    """
    def sgd(schedule):
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(schedule, momentum=config.momentum))

    head = sgd(schedule or lr_schedule(config))
    backbone_lr = config.get("backbone_learning_rate")
    if not config.get("freeze_backbone") and backbone_lr is None:
        return head
    backbone = None if config.get("freeze_backbone") else sgd(lr_schedule(config, backbone_lr))
    return finetune.split_optimizer(head, backbone)


def learning_rate(config, step: int, warmup: bool, schedule: optax.Schedule | None = None) -> float:
    """The lr used at `step` (for logs): the schedule's value times the paper's warm-up factor."""
    lr = float((schedule or lr_schedule(config))(step))
    return lr * (config.warmup_learning_rate / config.learning_rate if warmup else 1.0)


# ----------------------------------------------------------------------------- the paper's warm-up


def uses_warmup(config) -> bool:
    """The paper warms up ResNet-110 (and deeper) at lr 0.01 until training error < 80%."""
    return bool(config.warmup) if config.warmup is not None else config.model.depth >= 110


def warmup_scale(config, warmup):
    """Factor on the update: warmup_learning_rate / learning_rate while warming up, else 1."""
    return jnp.where(warmup, config.warmup_learning_rate / config.learning_rate, 1.0)


def warmup_continues(config, warmup, error_ema):
    """Warm-up ends, for good, once the smoothed training error falls below `warmup_until_error`."""
    return warmup & (error_ema >= config.warmup_until_error)
