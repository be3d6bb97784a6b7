"""Evaluate a run's checkpoint on a whole split, again.

    python -m resnet_jax.evaluate --workdir=runs/fig6/resnet-56 [--step=32000] [--dataset=cifar10] [--data_dir=...]

Rebuilds the model from the run's config.json, restores the checkpoint (latest, or --step) onto
the devices at hand, and prints the error on the run's test split (or the held-out split of a
val_split run) as a line and as JSON.
"""
from __future__ import annotations

import functools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from resnet_jax import checkpointing, data, models, optim, run_dir, sharding  # noqa: E402
from resnet_jax.step import init_state, make_evaluator  # noqa: E402


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


def evaluate_run(workdir: str, step: int | None = None, dataset: str | None = None,
                 data_dir: str | None = None) -> dict:
    config = load_run_config(workdir)
    trained = data.num_classes(config.dataset, config.get("num_classes"))
    if dataset and data.num_classes(dataset) != trained:
        raise ValueError(f"the run was trained on {config.dataset} ({trained} classes); {dataset} has "
                         f"{data.num_classes(dataset)}: fine-tune it instead (--config.init_from)")
    config.dataset = dataset or config.dataset
    config.data_dir = data_dir or config.data_dir
    step = run_dir.pick_checkpoint(workdir, step)
    mesh = sharding.make_mesh()
    config.eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size

    dataset_ = data.get(config, mesh)
    model = models.from_config(config.model, dataset_.num_classes)
    state = restore_state(config, workdir, step, model, dataset_.num_classes, mesh)
    metrics = make_evaluator(dataset_, model, mesh, top5=True)(state)
    return {"workdir": os.path.abspath(workdir), "name": config.name, "step": step, "dataset": config.dataset,
            "split": dataset_.test_split, "num_examples": dataset_.num_test, **metrics}


flags.DEFINE_string("workdir", None, "The run's --workdir.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("dataset", None, "Dataset to evaluate on (default: the run's; same number of classes).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the run's).")


def main(argv) -> None:
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    flags.mark_flag_as_required("workdir")
    try:
        result = evaluate_run(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.dataset, flags.FLAGS.data_dir)
    except (ValueError, FileNotFoundError, data.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    top5 = f", top-5 error {100 * result['test/top5_error']:.2f}%"
    print(f"{result['name']} step {result['step']}: {result['dataset']} {result['split']} error "
          f"{100 * result['test/error']:.2f}%{top5 if result['test/top5_error'] > 0 else ''} "
          f"({result['num_examples']} examples)")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
