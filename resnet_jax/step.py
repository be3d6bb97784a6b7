"""The training state, the one train step every dataset uses, and evaluation sums.

The step asks the dataset for its batch (``data.train_batch``: CIFAR draws and augments it on
the devices, a streamed dataset normalises what the hosts decoded) and never asks which kind of
dataset it holds. Everything a step does depends only on the state and the step number, so a run
resumed from a checkpoint continues bit-identically.

Training metrics are the dict ``train_metrics`` returns: each is summed over the current log
interval in ``TrainState.sums`` (with ``count``) and logged as ``train/NAME`` = sum / count.
Adding a metric is one line there.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from resnet_jax import optim, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array        # uint32[2] from the seed: data order, augmentation, dropout
    warmup: jax.Array     # bool: still at the paper's warm-up learning rate
    error_ema: jax.Array  # smoothed training error, which ends the warm-up
    sums: dict            # each training metric summed since the last log step, and "count"


def cross_entropy(logits, labels):
    """The loss: mean over the batch is taken by the callers (eval sums it)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def train_metrics(loss, logits, labels) -> dict:
    """The training metrics of one step (averaged over each log interval, logged as train/NAME)."""
    return {
        "loss": loss.astype(jnp.float32),
        "error": jnp.mean(jnp.argmax(logits, -1) != labels).astype(jnp.float32),
    }


@functools.cache
def metric_names() -> tuple[str, ...]:
    """Names of `train_metrics`, in the order it lists them (logs and the progress line keep it)."""
    return tuple(train_metrics(jnp.zeros(()), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32)))


def zero_sums() -> dict:
    zero = lambda: jnp.zeros((), jnp.float32)  # distinct buffers: the state is donated
    return {**{name: zero() for name in metric_names()}, "count": zero()}


def init_state(config, model, tx, num_classes: int) -> TrainState:
    init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = model.init(init_key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params), rng=data_key, warmup=jnp.asarray(optim.uses_warmup(config)),
        error_ema=jnp.asarray(1.0 - 1.0 / num_classes, jnp.float32), sums=zero_sums())


def dropout_key(state: TrainState) -> jax.Array:
    """The dropout RNG of this step: a function of (seed, step), so resume is exact."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, 2), state.step)


def loss_and_updates(state: TrainState, images, labels, *, model, frozen_backbone: bool):
    """Mean cross-entropy, logits and the new batch statistics of one training batch."""

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if frozen_backbone:  # linear probe: a fixed feature extractor, BN in eval mode
            logits = model.apply(variables, images, train=False)
            return cross_entropy(logits, labels).mean(), (logits, state.batch_stats)
        logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key(state)})
        return cross_entropy(logits, labels).mean(), (logits, updated.get("batch_stats", {}))

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def sgd_step(state: TrainState, images, labels, *, model, tx, config, batch_sharding) -> TrainState:
    """One SGD step on (images, labels); metric sums restart at each log boundary."""
    images = jax.lax.with_sharding_constraint(images, batch_sharding)
    labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    (loss, (logits, batch_stats)), grads = loss_and_updates(
        state, images, labels, model=model, frozen_backbone=bool(config.get("freeze_backbone")))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    scale = optim.warmup_scale(config, state.warmup)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: u * scale.astype(u.dtype), updates))

    metrics = {**train_metrics(loss, logits, labels), "count": jnp.ones((), jnp.float32)}
    fresh = state.step % config.log_every == 0
    sums = jax.tree.map(lambda s, v: jnp.where(fresh, 0.0, s) + v, state.sums, metrics)
    error_ema = 0.9 * state.error_ema + 0.1 * metrics["error"]
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        warmup=optim.warmup_continues(config, state.warmup, error_ema), error_ema=error_ema, sums=sums)


def train_step(state: TrainState, inputs, *, data, model, tx, config, batch_sharding) -> TrainState:
    """One SGD step on the batch of `state.step`, which the dataset makes from its `inputs`."""
    images, labels = data.train_batch(inputs, state.rng, state.step)
    return sgd_step(state, images, labels, model=model, tx=tx, config=config, batch_sharding=batch_sharding)


def make_train_step(config, model, tx, mesh: Mesh, data):
    """fn(state, inputs) jitted over `mesh`: the state replicated and donated; `inputs` (one item of
    ``data.train_inputs``) keep the shardings the dataset gave them."""
    step = functools.partial(train_step, data=data, model=model, tx=tx, config=config,
                             batch_sharding=sharding.batch_sharded(mesh))
    replicated = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, None), out_shardings=replicated, donate_argnums=0)


def all_finite(state: TrainState) -> jax.Array:
    """Whether every parameter, batch statistic and optimizer value, and the interval's loss, is finite:
    a diverged state is never saved."""
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state)) + [state.sums["loss"]]
    floats = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(floats))


# ----------------------------------------------------------------------------- evaluation

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


def make_evaluator(data, model, mesh: Mesh, top5: bool = False):
    """fn(state) -> test metrics over the whole test split of `data` (every example exactly once).

    Top-5 error is reported for 100+ classes, or always with `top5`.
    """
    replicated = sharding.replicated(mesh)
    classes = max(data.num_classes, 100) if top5 else data.num_classes

    def add_batch(totals, state, images, labels, mask):
        sums = batch_eval_sums(state, data.normalize(images), labels, mask, model=model)
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
    """Per-example averages of the eval sums; top-5 only where it means something (100+ classes)."""
    names = ("error", "loss", "top5_error") if num_classes >= 100 else ("error", "loss")
    return {f"test/{k}": float(sharding.host_value(totals[k])) / num_examples for k in names}
