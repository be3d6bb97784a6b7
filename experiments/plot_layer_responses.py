"""Fig. 7 of He et al. (2016) from trained checkpoints: the std of each 3x3 layer's response.

    python experiments/plot_layer_responses.py runs/quick                      # -> runs/quick/fig7.{png,pdf,json}
    python experiments/plot_layer_responses.py runs/fig6/plain-56 runs/fig6/resnet-56 --step 32000 --out figs/fig7
    python experiments/plot_layer_responses.py runs/quick --branch             # + a panel of ||F(x)|| / ||x|| per block

The response of a layer is its output after BN and before the ReLU / addition (pre-activation
nets: the conv output), measured in eval mode (BN with its running statistics) on the first
``--num_images`` test images of the run's dataset (normalised with the run's training mean), its
std taken over all images, positions and channels. Top panel: std against the layer's index in
the network (stem = 1); bottom: the same values sorted by magnitude, as in the paper. Plain nets
dashed, ResNets solid, one colour per depth (the colours of plot_degradation.py).

Runs are read from their workdir: ``config.json`` (the net) and ``checkpoints/STEP`` (the
weights; the latest one unless ``--step``). The numbers behind the figure go to OUT.json.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np
from absl import logging
from matplotlib.lines import Line2D

from resnet_jax import cli
from resnet_jax import data as datasets
from resnet_jax import diagnostics, evaluate, finetune, models, run_dir, sharding
from resnet_jax.plotting import depth_colors, plt, save
from resnet_jax.results import find_run_dirs, load_run_dir

PLAIN_STYLE = dict(linestyle="--", linewidth=1.3)
RESIDUAL_STYLE = dict(linestyle="-", linewidth=1.6)


def test_images(config, num_images: int) -> np.ndarray:
    """The first `num_images` test images of the run's dataset, normalised as the run normalised them
    (runs on the same data share one load)."""
    key = tuple(str(config.get(k)) for k in ("dataset", "data_dir", "val_split", "test_split", "image_size",
                                              "eval_resize")) + (num_images,)
    if key not in _TEST_IMAGES:
        config.eval_batch_size = -(-config.eval_batch_size // jax.device_count()) * jax.device_count()
        data = datasets.get(config, sharding.make_mesh())
        _TEST_IMAGES[key] = np.asarray(jax.jit(data.normalize)(data.fixed_examples(num_images).test_images))
    return _TEST_IMAGES[key]


_TEST_IMAGES: dict = {}


def measure_run(workdir: str, step: int | None = None, num_images: int = 1000, chunk: int = 250,
                data_dir: str | None = None) -> dict:
    """Response stds (per layer) and branch ratios (per block) of one checkpoint of a run."""
    config = evaluate.load_run_config(workdir)
    config.data_dir = data_dir or config.data_dir
    step = run_dir.pick_checkpoint(workdir, step)
    params, batch_stats, _ = finetune.load_variables(os.path.join(run_dir.checkpoint_dir(workdir), str(step)))
    model = models.from_config(config.model, datasets.num_classes(config.dataset, config.get("num_classes")))
    images = test_images(config, num_images)
    fn = jax.jit(functools.partial(diagnostics.response_moments, model))
    variables = {"params": params, "batch_stats": batch_stats}
    parts = []
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk]
        parts.append((len(batch), jax.tree.map(lambda a: np.asarray(a, np.float64), fn(variables, batch))))
    total = sum(n for n, _ in parts)
    avg = lambda key: sum(n * p[key] for n, p in parts) / total
    mean, mean_square = avg("mean"), avg("mean_square")
    names = diagnostics.layer_names(model)
    run = load_run_dir(workdir)
    return {"workdir": os.path.abspath(workdir), "name": config.name, "step": step, "net": run.net, "size": run.size,
            "depth": int(config.model.depth), "residual": bool(config.model.residual),
            "preact": bool(config.model.get("preact", False)), "num_images": total,
            "layers": names["response"], "response_std": np.sqrt(np.maximum(mean_square - mean ** 2, 0)).tolist(),
            "blocks": names["block"],
            "branch_ratio": np.sqrt(avg("branch_mean_square") / np.maximum(avg("shortcut_mean_square"), 1e-30)).tolist()}


def label(r: dict) -> str:
    return r["net"].replace("resnet", "ResNet")


def plot(results: Sequence[dict], title: str | None = None, branch: bool = False):
    """Fig. 7: std by layer index (top) and sorted by magnitude (bottom); lines carry gid NAME/original|sorted."""
    colors = depth_colors([r["size"] for r in results])
    rows = 3 if branch else 2
    fig, axes = plt.subplots(rows, 1, figsize=(7.5, 2.9 * rows), squeeze=False)
    axes = axes[:, 0]
    ordered = sorted(results, key=lambda r: (r["residual"], r["depth"]))
    for r in ordered:
        style = dict(RESIDUAL_STYLE if r["residual"] else PLAIN_STYLE, color=colors[r["size"]])
        std = np.asarray(r["response_std"])
        x = np.arange(1, len(std) + 1)
        (line,) = axes[0].plot(x, std, label=label(r), **style)
        line.set_gid(f"{r['name']}/original")
        (line,) = axes[1].plot(x, np.sort(std)[::-1], label=label(r), **style)
        line.set_gid(f"{r['name']}/sorted")
        if branch:
            ratio = np.asarray(r["branch_ratio"])
            (line,) = axes[2].plot(np.arange(1, len(ratio) + 1), ratio, label=label(r), marker=".", **style)
            line.set_gid(f"{r['name']}/branch")
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes[:2]:
        ax.set_ylabel("std")
        ax.set_ylim(bottom=0)
    if branch:
        axes[2].set_xlabel("block index")
        axes[2].set_ylabel(r"$\|F(x)\| / \|x\|$")
        axes[2].set_ylim(bottom=0)
        axes[2].set_title("residual branch vs identity (plain: last BN output vs the identity it lacks)",
                          fontsize=9)
    for ax in axes:
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", **PLAIN_STYLE), Line2D([], [], color="0.3", **RESIDUAL_STYLE)]
    labels += ["plain (dashed)", "ResNet (solid)"]
    axes[0].legend(handles, labels, fontsize=8, ncol=2, framealpha=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def default_title(results: Sequence[dict]) -> str:
    steps = sorted({r["step"] for r in results})
    images = sorted({r["num_images"] for r in results})
    return (f"std of layer responses (after BN, before ReLU/addition), step {'/'.join(map(str, steps))}, "
            f"{'/'.join(map(str, images))} test images")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("paths", nargs="+", help="run directories, or sweep directories holding runs")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: each run's latest)")
    parser.add_argument("--num_images", type=int, default=1000, help="test images to measure on (default 1000)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: each run's)")
    parser.add_argument("--branch", action="store_true", help="add a panel of ||F(x)||/||x|| per block")
    parser.add_argument("--out", default=None, help="output path without extension (default: FIRST_PATH/fig7)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    try:
        results = []
        for workdir in find_run_dirs(args.paths):
            if not run_dir.checkpoint_steps(workdir):
                print(f"skipping {workdir}: no checkpoint", file=sys.stderr)
                continue
            results.append(measure_run(workdir, args.step, args.num_images, data_dir=args.data_dir))
            r = results[-1]
            print(f"{r['name']} step {r['step']}: {len(r['response_std'])} layers, response std "
                  f"mean {np.mean(r['response_std']):.3f}, branch ratio mean {np.mean(r['branch_ratio']):.3f}")
        if not results:
            raise FileNotFoundError("no run with a checkpoint among " + ", ".join(args.paths))
        fig = plot(results, args.title if args.title is not None else default_title(results), args.branch)
    except (FileNotFoundError, ValueError, datasets.DatasetUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.paths[0], "fig7")
    paths = save(fig, out)
    base = os.path.splitext(paths[0])[0]
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    for path in paths + [base + ".json"]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
