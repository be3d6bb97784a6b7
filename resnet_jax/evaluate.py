"""Evaluate a run's checkpoint, or imported weights, on a whole split.

    python -m resnet_jax.evaluate --workdir=runs/fig6/resnet-56 [--step=32000] [--dataset=cifar10] [--data_dir=...]
    python -m resnet_jax.evaluate --weights=resnet50.safetensors --dataset=imagenet2012 --data_dir=DATA_DIR [--ten_crop]
    (--eval_batch_size=N: images per step; 10-crop takes a tenth of the config's by default)

--workdir: rebuilds the model from the run's config.json and restores the checkpoint (latest, or
--step) onto the devices at hand. --weights: a torchvision-layout .safetensors or .pth file
(resnet_jax.pretrained), evaluated with configs/imagenet.py's net of its depth (shortcut B; v1 or
v1.5, classes and input normalisation as the weights say) without a training run. Prints the
error on the test split (or the held-out split of a val_split run; ImageNet's validation split)
as a line and as JSON. Non-finite weights or a NaN loss are reported as a diverged run, not as an
error rate.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from resnet_jax import checkpointing, cli, data, models, optim, pretrained, run_dir, sharding
from resnet_jax.config_args import load_config_module
from resnet_jax.step import TrainState, init_state, make_evaluator

# TensorFlow (streamed datasets) is imported only when data is read, after this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

IMAGENET_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "imagenet.py"
USAGE = ("give --workdir=RUN (a trained run) or --weights=FILE (.safetensors/.pth), e.g. "
         "python -m resnet_jax.evaluate --workdir=runs/fig6/resnet-56, or "
         "python -m resnet_jax.evaluate --weights=resnet50.safetensors --dataset=imagenet2012 --data_dir=DATA_DIR")


class Diverged(ValueError):
    """The weights (or what they compute) are not finite: there is no error rate to report."""


# ----------------------------------------------------------------------------- a run's checkpoint


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    record = run_dir.read_config(workdir)
    if record is None:
        raise FileNotFoundError(f"{workdir} has no {run_dir.CONFIG_FILE}: is it a run's --workdir?")
    record.pop("runtime", None)
    return ml_collections.ConfigDict(record)


def restore_state(config, workdir: str, step: int, model, num_classes: int, mesh):
    """The TrainState of checkpoint `step` of a run, onto `mesh`."""
    abstract = jax.eval_shape(functools.partial(init_state, config, model, optim.make_optimizer(config), num_classes))
    ckpt = checkpointing.Checkpointer(run_dir.checkpoint_dir(workdir), keep=config.keep_checkpoints)
    try:
        state, _, _ = ckpt.restore(step, checkpointing.abstract_with_sharding(abstract, sharding.replicated(mesh)))
    finally:
        ckpt.close()
    return state


def all_finite(*trees) -> bool:
    """Whether every leaf of the trees is finite (a diverged run's weights hold NaN or Inf)."""
    leaves = [leaf for tree in trees for leaf in jax.tree.leaves(tree)]
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def metrics_finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def diverged_checkpoint(workdir: str, step: int, what: str) -> Diverged:
    """The error for checkpoint `step`, naming the earlier checkpoints to evaluate instead."""
    earlier = [s for s in run_dir.checkpoint_steps(workdir) if s < step]
    instead = (f"evaluate an earlier step (--step=N, available: {', '.join(map(str, earlier))})" if earlier
               else "no earlier checkpoint is kept: train it again (lower the learning rate, or warm up)")
    return Diverged(f"checkpoint {step} of {workdir} {what}: the run diverged; {instead}")


def evaluate_run(workdir: str, step: int | None = None, dataset: str | None = None,
                 data_dir: str | None = None, ten_crop: bool = False, eval_batch_size: int | None = None) -> dict:
    config = load_run_config(workdir)
    trained = data.num_classes(config.dataset, config.get("num_classes"))
    if dataset and data.num_classes(dataset) != trained:
        raise ValueError(f"the run was trained on {config.dataset} ({trained} classes); {dataset} has "
                         f"{data.num_classes(dataset)}: fine-tune it instead (--config.init_from)")
    config.dataset = dataset or config.dataset
    config.data_dir = data_dir or config.data_dir
    if ten_crop:
        _set_ten_crop(config)
    step = run_dir.pick_checkpoint(workdir, step)
    mesh = sharding.make_mesh()
    config.eval_batch_size = eval_batch(config, mesh, eval_batch_size)

    dataset_ = data.get(config, mesh)
    model = models.from_config(config.model, dataset_.num_classes)
    state = restore_state(config, workdir, step, model, dataset_.num_classes, mesh)
    if not all_finite(state.params, state.batch_stats):
        raise diverged_checkpoint(workdir, step, "holds non-finite weights")
    metrics = make_evaluator(dataset_, model, mesh, top5=True)(state)
    if not metrics_finite(metrics):
        raise diverged_checkpoint(workdir, step, f"gives a non-finite test loss ({metrics['test/loss']})")
    return {"workdir": os.path.abspath(workdir), "name": config.name, "step": step, "dataset": config.dataset,
            "split": dataset_.test_split, "num_examples": dataset_.num_test, **metrics}


def eval_batch(config, mesh, requested: int | None = None) -> int:
    """Images per evaluation step: `requested` or the config's, a tenth of it for 10-crop testing (the
    same number of crops per step as centre-crop testing), a multiple of the devices."""
    images = requested or config.eval_batch_size
    if config.get("ten_crop") and not requested:
        images = max(1, images // 10)
    return -(-images // mesh.size) * mesh.size


def _set_ten_crop(config) -> None:
    if "ten_crop" not in config:
        raise ValueError(f"--ten_crop is for streamed (ImageNet-style) datasets; {config.dataset} is held on the "
                         "devices and evaluated on whole images")
    config.ten_crop = True


# ----------------------------------------------------------------------------- imported weights


def weights_config(info: pretrained.WeightsInfo, dataset: str, data_dir: str | None, ten_crop: bool,
                   **overrides) -> ml_collections.ConfigDict:
    """configs/imagenet.py's config for the net the weights fit (shortcut B, their v1/v1.5, classes and
    normalisation), in float32 (bit-for-bit what the weights compute). `overrides`: more config fields."""
    config = load_config_module(IMAGENET_CONFIG).get_config(f"depth={info.depth},shortcut=B,dataset={dataset}")
    config.name = info.model_name
    config.data_dir = data_dir
    config.num_classes = info.num_classes
    config.normalization = info.normalization
    config.ten_crop = bool(ten_crop)
    config.model.stride_in_3x3 = info.stride_in_3x3
    config.model.scan = info.scan
    config.model.dtype = "float32"
    config.update(overrides)
    return config


def weights_state(params: dict, batch_stats: dict, mesh) -> TrainState:
    """A TrainState holding imported weights on `mesh`: all that the evaluator reads of a state."""
    place = lambda tree: jax.tree.map(
        lambda a: sharding.put_replicated(np.asarray(a), sharding.replicated(mesh)), tree)
    return TrainState(step=jnp.zeros((), jnp.int32), params=place(params), batch_stats=place(batch_stats),
                      opt_state=(), rng=jax.random.PRNGKey(0), warmup=jnp.asarray(False),
                      error_ema=jnp.zeros((), jnp.float32), sums={})


def check_classes(path: str, info: pretrained.WeightsInfo, dataset: str) -> None:
    """The weights' classifier must have the dataset's classes (an unregistered dataset takes the weights')."""
    if dataset in data.REGISTRY and data.num_classes(dataset) != info.num_classes:
        raise ValueError(f"{path} has {info.num_classes} classes, {dataset} has {data.num_classes(dataset)}: "
                         "evaluate it on a dataset with its classes, or fine-tune it (--config.init_from)")


def evaluate_weights(path: str, dataset: str = "imagenet2012", data_dir: str | None = None, ten_crop: bool = False,
                     eval_batch_size: int | None = None, **overrides) -> dict:
    """Test metrics of a torchvision-layout weights file on `dataset`, as `evaluate_run` reports a run's."""
    params, batch_stats, info = pretrained.load(path)
    if not all_finite(params, batch_stats):
        raise Diverged(f"{path} holds non-finite weights: re-download or re-export it (or export an earlier step)")
    check_classes(path, info, dataset)
    config = weights_config(info, dataset, data_dir, ten_crop, **overrides)
    mesh = sharding.make_mesh()
    config.eval_batch_size = eval_batch(config, mesh, eval_batch_size)
    config.batch_size = mesh.size  # no training batches are read: the smallest valid one fits any train split
    dataset_ = data.get(config, mesh)
    model = models.from_config(config.model, dataset_.num_classes)
    metrics = make_evaluator(dataset_, model, mesh, top5=True)(weights_state(params, batch_stats, mesh))
    if not metrics_finite(metrics):
        raise Diverged(f"{path} gives a non-finite test loss ({metrics['test/loss']}): its weights are broken")
    return {"weights": os.path.abspath(path), "name": info.model_name, "step": None, "dataset": config.dataset,
            "split": dataset_.test_split, "num_examples": dataset_.num_test, "ten_crop": config.ten_crop,
            "normalization": config.normalization, "description": info.describe(), **metrics}


# ----------------------------------------------------------------------------- command line


flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_string("weights", None, "A torchvision-layout weights file (.safetensors, .pth) to evaluate instead.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("dataset", None, "Dataset to evaluate on (default: the run's, same number of classes; "
                    "with --weights: imagenet2012).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the run's).")
flags.DEFINE_bool("ten_crop", False, "10-crop testing (corners, centre and their flips; streamed datasets).")
flags.DEFINE_integer("eval_batch_size", None, "Images per evaluation step (default: the config's; a tenth of it "
                     "with --ten_crop).")


def evaluate_from_flags(f) -> dict:
    """The evaluation the flags ask for; a ValueError (one line) for a command that names none, or both."""
    if bool(f.workdir) == bool(f.weights):
        raise ValueError(USAGE if not f.workdir else "give --workdir or --weights, not both")
    if f.weights:
        if f.step is not None:
            raise ValueError("--step picks a checkpoint of --workdir; a weights file has one set of weights")
        return evaluate_weights(f.weights, f.dataset or "imagenet2012", f.data_dir, f.ten_crop, f.eval_batch_size)
    return evaluate_run(f.workdir, f.step, f.dataset, f.data_dir, f.ten_crop, f.eval_batch_size)


def result_line(result: dict) -> str:
    top5 = f", top-5 error {100 * result['test/top5_error']:.2f}%" if result.get("test/top5_error", 0) > 0 else ""
    where = f" step {result['step']}" if result["step"] is not None else ""
    crops = " (10-crop)" if result.get("ten_crop") else ""
    return (f"{result['name']}{where}: {result['dataset']} {result['split']}{crops} error "
            f"{100 * result['test/error']:.2f}%{top5} ({result['num_examples']} examples)")


def main(argv) -> None:
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; {USAGE}")
    try:
        result = evaluate_from_flags(flags.FLAGS)
    except (ValueError, FileNotFoundError, ImportError, data.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    print(result_line(result))
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser(lambda argv: flags.FLAGS(argv)))
