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
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from resnet_jax import checkpointing, input_pipeline, train  # noqa: E402


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: is it a run's --workdir?")
    with open(path) as f:
        record = json.load(f)
    record.pop("runtime", None)
    return ml_collections.ConfigDict(record)


def evaluate_run(workdir: str, step: int | None = None, dataset: str | None = None,
                 data_dir: str | None = None) -> dict:
    config = load_run_config(workdir)
    trained = input_pipeline.num_classes(config.dataset, config.get("num_classes"))
    if dataset and input_pipeline.num_classes(dataset) != trained:
        raise ValueError(f"the run was trained on {config.dataset} ({trained} classes); {dataset} has "
                         f"{input_pipeline.num_classes(dataset)}: fine-tune it instead (--config.init_from)")
    config.dataset = dataset or config.dataset
    config.data_dir = data_dir or config.data_dir
    mesh = train.make_mesh()
    config.eval_batch_size = -(-config.eval_batch_size // mesh.size) * mesh.size

    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"no checkpoint for step {step}; available: {', '.join(map(str, steps))}")

    data = input_pipeline.load(config, mesh)
    model = train.make_model(config, data.num_classes)
    tx = train.make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    abstract = jax.eval_shape(functools.partial(train.init_state, config, model, tx, data.num_classes))
    ckpt = checkpointing.Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
    state, _ = ckpt.restore(step, checkpointing.abstract_with_sharding(abstract, replicated))
    ckpt.close()
    metrics = train.make_evaluator(data, model, mesh, top5=True)(state)
    split = data.test_split if input_pipeline.is_streamed_data(data) else input_pipeline.split_names(config.val_split)[1]
    return {"workdir": os.path.abspath(workdir), "name": config.name, "step": step, "dataset": config.dataset,
            "split": split, "num_examples": data.num_test, **metrics}


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
    except (ValueError, FileNotFoundError, input_pipeline.DatasetUnavailableError) as e:
        sys.exit(f"error: {e}")
    top5 = f", top-5 error {100 * result['test/top5_error']:.2f}%"
    print(f"{result['name']} step {result['step']}: {result['dataset']} {result['split']} error "
          f"{100 * result['test/error']:.2f}%{top5 if result['test/top5_error'] > 0 else ''} "
          f"({result['num_examples']} examples)")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
