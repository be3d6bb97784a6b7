"""What the diagnostics (resnet_jax/diagnostics.py) cost next to the training step they watch.

    python -m benchmarks.diagnostics_overhead --depth=56 --batch_size=128 --diagnostics_batch=128

Builds exactly what ``train.train_and_evaluate`` runs, on random CIFAR-sized data held on the
devices: ``step.make_train_step`` and ``diagnostics.Diagnostics`` (its own jitted program: an
eval-mode forward on the fixed test batch + a training-mode forward/backward on the fixed training
batch). Times, for a plain and a residual net of each depth: the compile of each, then the median
of ``--repeats`` training steps and of ``--repeats`` diagnostics calls (each timed to the end of
the computation), interleaved so that a load change on a shared machine hits both alike. The
overhead of logging every E steps is ``diag_s / (E * step_s)``. Also checks that the training
step's compile cache holds one entry after the diagnostics ran (no recompilation).
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from resnet_jax import cli
from resnet_jax import diagnostics, models, optim, sharding, step as step_lib  # noqa: E402
from resnet_jax.data import cifar  # noqa: E402
from resnet_jax.config_args import load_config_module  # noqa: E402


def fake_data(mesh, batch_size: int, n_train=2048, n_test=1000, eval_batch=500):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train).astype(np.int32)
    return cifar.build(images, labels, images[:n_test], labels[:n_test], num_classes=10, batch_size=batch_size,
                       eval_batch_size=eval_batch, mesh=mesh)


def measure(depth: int, residual: bool, batch_size: int, diag_batch: int, repeats: int) -> dict:
    config = load_config_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar10.py").get_config(
        f"depth={depth},residual={residual}")
    config.batch_size, config.diagnostics_batch, config.diagnostics_every = batch_size, diag_batch, 1
    mesh = sharding.make_mesh()
    data = fake_data(mesh, batch_size)
    model, tx = models.from_config(config.model, 10), optim.make_optimizer(config)
    state = jax.jit(lambda: step_lib.init_state(config, model, tx, 10), out_shardings=NamedSharding(mesh, P()))()
    step = step_lib.make_train_step(config, model, tx, mesh, data)
    t = time.perf_counter()
    state = jax.block_until_ready(step(state, data.train))
    step_compile = time.perf_counter() - t
    diag = diagnostics.Diagnostics(config, model, mesh, data, is_main=False)
    t = time.perf_counter()
    diag(state)
    diag_compile = time.perf_counter() - t
    step_times, diag_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        state = jax.block_until_ready(step(state, data.train))
        step_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        diag(state)
        diag_times.append(time.perf_counter() - t)
    step_s, diag_s = statistics.median(step_times), statistics.median(diag_times)
    return {"net": f"{'resnet' if residual else 'plain'}-{depth}", "batch_size": batch_size,
            "diagnostics_batch": diag_batch, "devices": mesh.size, "step_s": step_s, "diag_s": diag_s,
            "diag_over_step": diag_s / step_s, "step_compile_s": step_compile, "diag_compile_s": diag_compile,
            "overhead_every_100": diag_s / (100 * step_s), "overhead_every_1000": diag_s / (1000 * step_s),
            "train_step_cache_entries": step._cache_size(), "diag_cache_entries": diag.fn._cache_size()}


def main() -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--depth", default="56", help="comma-separated CIFAR depths")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--diagnostics_batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for depth in [int(d) for d in args.depth.split(",")]:
        for residual in (False, True):
            r = measure(depth, residual, args.batch_size, args.diagnostics_batch, args.repeats)
            print(f"{r['net']}: step {r['step_s']:.3f}s, diagnostics {r['diag_s']:.3f}s "
                  f"({r['diag_over_step']:.2f} steps); overhead every 100 steps {100 * r['overhead_every_100']:.2f}%, "
                  f"every 1000 {100 * r['overhead_every_1000']:.3f}%; compile step {r['step_compile_s']:.1f}s, "
                  f"diagnostics {r['diag_compile_s']:.1f}s; train step compiled {r['train_step_cache_entries']}x",
                  file=sys.stderr, flush=True)
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
