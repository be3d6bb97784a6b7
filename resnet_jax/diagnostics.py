"""Why depth degrades: layer responses (Fig. 7), gradient flow and residual-branch size.

He et al. (2016) argue that plain nets degrade not because gradients vanish (BN keeps the
forward and backward signals healthy) but because deep plain stacks are hard to optimise, and
that residual functions are closer to zero than non-residual ones (Fig. 7: "ResNets have
generally smaller responses than their plain counterparts"). This module measures, for any
state of any net of ``resnet_jax.models`` (CIFAR, ImageNet, WRN; any block type; with or without
normalisation), in the network order the model states (``models.network_order``):

* ``layer_responses``: the std of every conv layer's response (post-activation nets: after BN,
  before the ReLU / addition; pre-activation nets and nets without BN: the conv output), eval
  mode, in network order: the stem, then block by block, layer by layer. For basic-block nets
  those are exactly the 3x3 layers of Fig. 7 (depth - 1 of them; bottleneck nets include their
  1x1 layers).
* ``gradient_norms``: ||dL/dW|| and ||W|| of every conv / dense kernel (stem, each block's
  conv1, conv2, [conv3], [proj_conv], then fc), training mode, the plain cross-entropy of one
  fixed batch (weight decay is not part of it: optax adds it to the gradient later).
* ``branch_ratios``: per block, ||F(x)|| / ||shortcut(x)||, the size of the residual branch
  relative to the identity it is added to (0: the block is the identity mapping), eval mode,
  norms over the whole batch (all examples, H, W and C). For a plain block, F(x) is its last
  response (the BN output; the conv output in pre-activation nets and without BN) and the
  reference is the parameter-free shortcut of its residual twin: the identity, or option A
  (subsample, zero-pad) where the shape changes, also in nets whose twins project there (WRNs).

The stacked layout of scanned nets (``stage{i}_blocks``, blocks 2..n on axis 0) is split back
into blocks, so a scanned and an unrolled net give the same lists.

``make_diagnostics_fn`` jits all three into one function of (state, fixed batch): its own
compiled program, separate from the training step, which stays untouched and never
recompiles. ``Diagnostics`` is what the training loop calls every ``config.diagnostics_every``
steps; ``record`` turns the arrays into the ``diagnostics/...`` entries of metrics.jsonl.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import models, run_dir, sharding, step

PREFIX = "diagnostics/"

# ----------------------------------------------------------------------------- network order
# The order is the model's (models.network_order: the order a forward pass calls the modules, and
# the net's own statement of its blocks and of how a scanned module stacks them), never read off
# module names: any family, block type or normalisation gives the right lists.


@dataclasses.dataclass(frozen=True)
class Entry:
    """One layer or block: its name and where it is in a tree (``index``: position on a stacked axis)."""

    name: str
    path: tuple
    index: int | None = None

    def get(self, tree):
        for key in self.path:
            tree = tree[key]
        return tree if self.index is None else tree[self.index]

    def sub(self, *keys) -> "Entry":
        """The entry of something inside this one (e.g. a block's sown ``branch``), same stacked index."""
        return Entry(self.name, self.path + keys, self.index)


def kernel_entries(order: models.NetworkOrder) -> list[Entry]:
    """Every conv / dense kernel in network order (paths into params or grads)."""
    return [Entry(k.name, k.path + ("kernel",), k.index) for k in order.kernels]


def block_entries(order: models.NetworkOrder) -> list[Entry]:
    """Every block in network order (path to the block's sown values)."""
    return [Entry(b.name, b.path, b.index) for b in order.blocks]


def response_entries(intermediates, order: models.NetworkOrder) -> list[Entry]:
    """Every sown layer response in network order: the stem's (if sown), then each block's layers."""
    entries = [Entry("stem", ("stem_response", 0))] if "stem_response" in intermediates else []
    for block in block_entries(order):
        for i in range(len(intermediates[block.path[0]].get("response", ()))):
            entries.append(Entry(f"{block.name}/conv{i + 1}", block.path + ("response", i), block.index))
    return entries


# ----------------------------------------------------------------------------- the measurements


def response_std(x) -> jax.Array:
    """Std of a layer's response over all its elements (batch, H, W, channels), in float32."""
    return jnp.std(x.astype(jnp.float32))


def branch_ratio(branch, shortcut) -> jax.Array:
    """||F(x)|| / ||shortcut(x)||, both norms over the whole batch (all examples, H, W, C).

    Over the batch, not per example: a per-example ratio explodes on the one image whose block
    input is (nearly) all zero after a ReLU, which happens early in training."""
    sq = lambda a: jnp.sum(jnp.square(a.astype(jnp.float32)))
    return jnp.sqrt(sq(branch) / jnp.maximum(sq(shortcut), 1e-30))


def forward_diagnostics(model, variables, images) -> dict:
    """Response stds [layers] and branch ratios [blocks] from one eval-mode forward pass."""
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    inter, order = state["intermediates"], models.network_order(model, images.shape)
    blocks = block_entries(order)
    out = {"response_std": jnp.stack([response_std(e.get(inter)) for e in response_entries(inter, order)])}
    if blocks and "branch" in inter[blocks[0].path[0]]:
        out["branch_ratio"] = jnp.stack(
            [branch_ratio(e.sub("branch", 0).get(inter), e.sub("shortcut", 0).get(inter)) for e in blocks])
    return out


def response_moments(model, variables, images) -> dict:
    """Per layer, the mean and mean square of the response over all its elements, and per block the
    mean squares of F(x) and of the shortcut (eval mode): what ``layer_responses`` / ``branch_ratios``
    compute, in a form that batches of images combine exactly (average over batches, then
    std = sqrt(E[x^2] - E[x]^2) and ratio = sqrt(E[F^2] / E[x^2]))."""
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    inter, order = state["intermediates"], models.network_order(model, images.shape)
    responses = [e.get(inter).astype(jnp.float32) for e in response_entries(inter, order)]
    blocks = block_entries(order)
    out = {"mean": jnp.stack([jnp.mean(r) for r in responses]),
           "mean_square": jnp.stack([jnp.mean(jnp.square(r)) for r in responses])}
    if blocks and "branch" in inter[blocks[0].path[0]]:
        ms = lambda a: jnp.mean(jnp.square(a.astype(jnp.float32)))
        out["branch_mean_square"] = jnp.stack([ms(e.sub("branch", 0).get(inter)) for e in blocks])
        out["shortcut_mean_square"] = jnp.stack([ms(e.sub("shortcut", 0).get(inter)) for e in blocks])
    return out


def layer_responses(model, variables, images) -> jax.Array:
    """Std of each conv layer's response (after BN, before ReLU / addition), eval mode, network order."""
    return forward_diagnostics(model, variables, images)["response_std"]


def branch_ratios(model, variables, images) -> jax.Array:
    """||F(x)|| / ||x|| of each block (eval mode), network order."""
    return forward_diagnostics(model, variables, images)["branch_ratio"]


def loss_gradients(model, params, batch_stats, images, labels, train: bool = True):
    """d(mean cross-entropy)/d(params) on one batch; BN in training mode (batch statistics) by default,
    and dropout (if the net has any) with one fixed mask, so that the measurement is repeatable."""

    def loss_fn(p):
        variables = {"params": p, "batch_stats": batch_stats}
        if train:
            logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(0)})
        else:
            logits = model.apply(variables, images, train=False)
        return step.cross_entropy(logits, labels).mean()  # the training loss, without weight decay

    return jax.grad(loss_fn)(params)


def gradient_norms(model, params, batch_stats, images, labels, train: bool = True) -> tuple[jax.Array, jax.Array]:
    """(||dL/dW||, ||W||) of every conv / dense kernel in network order (``kernel_entries``)."""
    grads = loss_gradients(model, params, batch_stats, images, labels, train)
    entries = kernel_entries(models.network_order(model, images.shape))
    norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32))))
    return (jnp.stack([norm(e.get(grads)) for e in entries]), jnp.stack([norm(e.get(params)) for e in entries]))


def layer_names(model, input_shape=(1, 32, 32, 3)) -> dict[str, list[str]]:
    """Names of the entries of each diagnostics list: {'grad': ..., 'response': ..., 'block': ...}."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables, x)
    inter, order = state["intermediates"], models.network_order(model, input_shape)
    return {"grad": [e.name for e in kernel_entries(order)],
            "response": [e.name for e in response_entries(inter, order)],
            "block": [e.name for e in block_entries(order)]}


# ----------------------------------------------------------------------------- in the training loop


@flax.struct.dataclass
class DiagnosticsBatch:
    """The fixed images the diagnostics are measured on, for the whole run."""

    train_images: jax.Array  # the first examples of the training split, normalised, not augmented
    train_labels: jax.Array
    test_images: jax.Array   # the first examples of the test split, normalised


def make_batch(data, size: int, mesh) -> DiagnosticsBatch:
    """The dataset's first `size` training (for gradients) and test (for responses) examples, normalised."""
    size = int(min(size, data.num_train, data.num_test))
    sharding_ = NamedSharding(mesh, P("data") if size % mesh.size == 0 else P())
    examples = data.fixed_examples(size)
    place = lambda a: sharding.put_replicated(np.asarray(a), sharding_)
    normalize = jax.jit(data.normalize, out_shardings=sharding_)
    return DiagnosticsBatch(normalize(place(examples.train_images)), place(examples.train_labels),
                            normalize(place(examples.test_images)))


def diagnostics(state, batch: DiagnosticsBatch, *, model, train: bool = True) -> dict:
    """All diagnostics of a TrainState (anything with params and batch_stats) on the fixed batch."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = forward_diagnostics(model, variables, batch.test_images)
    grad, weight = gradient_norms(model, state.params, state.batch_stats, batch.train_images,
                                  batch.train_labels, train)
    out.update(grad_norm=grad, weight_norm=weight, grad_to_weight=grad / jnp.maximum(weight, 1e-12))
    return out


def make_diagnostics_fn(config, model, mesh):
    """``diagnostics`` jitted on its own (never the training step's program): fn(state, batch) -> dict."""
    fn = functools.partial(diagnostics, model=model, train=not config.get("freeze_backbone"))
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def record(values: dict, names: dict | None = None) -> dict:
    """``diagnostics/...`` metrics: each list in network order, plus scalar summaries.

    Summaries: ``grad_norm_global`` (over all kernels); ``grad_to_weight_first_over_last``, the
    gradient-to-weight ratio of the first conv layer over that of the last conv layer (< 1: the
    relative update shrinks towards the input); ``response_std_mean``; ``branch_ratio_mean`` and
    ``branch_ratio_max``.
    """
    v = {k: np.asarray(a, np.float64) for k, a in values.items()}
    out = {PREFIX + k: [float(x) for x in a] for k, a in v.items()}
    grad, ratio = v["grad_norm"], v["grad_to_weight"]
    out[PREFIX + "grad_norm_global"] = float(np.sqrt(np.sum(grad ** 2)))
    convs = [i for i, n in enumerate((names or {}).get("grad", [])) if n != "fc"] or list(range(len(ratio) - 1))
    if convs:
        out[PREFIX + "grad_to_weight_first_over_last"] = float(ratio[convs[0]] / max(ratio[convs[-1]], 1e-30))
    out[PREFIX + "response_std_mean"] = float(np.mean(v["response_std"]))
    if "branch_ratio" in v:
        out[PREFIX + "branch_ratio_mean"] = float(np.mean(v["branch_ratio"]))
        out[PREFIX + "branch_ratio_max"] = float(np.max(v["branch_ratio"]))
    return out


class Diagnostics:
    """What the training loop calls: is it due at this step, and the metrics of a state.

    Due at step 0 of a fresh run, every ``config.diagnostics_every`` steps and at the last step;
    a run shorter than ``diagnostics_every`` measures once, at its end. The first call compiles
    (and says how long it took); the training step is not touched.
    """

    def __init__(self, config, model, mesh, data, workdir: str | None = None, is_main: bool = True):
        self.every = int(config.get("diagnostics_every") or 0)
        self.num_steps = int(config.num_train_steps)
        self.name = config.name
        self.is_main = is_main
        self.fn = make_diagnostics_fn(config, model, mesh)
        self.batch = make_batch(data, config.get("diagnostics_batch") or config.batch_size, mesh)
        self.names = layer_names(model)
        self.calls = 0
        self.seconds: list[float] = []
        if workdir and is_main:
            run_dir.atomic_write_json(os.path.join(workdir, run_dir.LAYERS_FILE), self.names, indent=None)

    def due(self, step: int) -> bool:
        if self.every <= 0:
            return False
        if step == 0:
            return self.num_steps >= self.every
        return step % self.every == 0 or step == self.num_steps

    def __call__(self, state) -> dict:
        start = time.time()
        values = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), self.fn(state, self.batch))
        self.seconds.append(time.time() - start)
        if self.calls == 0 and self.is_main:
            print(f"{self.name}: diagnostics (compilation included) took {self.seconds[-1]:.1f}s", flush=True)
        self.calls += 1
        return record(values, self.names)
