"""Gradient flow across depth, plain vs residual, at a few points of training (from the diagnostics).

    python experiments/plot_gradient_flow.py runs/diag                  # -> runs/diag/gradient_flow.{png,pdf}
    python experiments/plot_gradient_flow.py runs/diag/plain-56 runs/diag/resnet-56 --steps 0,100,500
    python experiments/plot_gradient_flow.py --wandb ENTITY/resnet-degradation --group cifar10-degradation

Reads what the training loop logs every ``config.diagnostics_every`` steps (resnet_jax/diagnostics.py):
from each run's ``metrics.jsonl`` (lists ``diagnostics/grad_norm``, ...) or from W&B (per-layer keys
``diagnostics/grad_norm/0000``, ...). One column per step; rows:

* ``grad_norm``: ||dL/dW|| of each conv layer (stem = 1, the classifier left out), log scale;
* ``grad_to_weight``: ||dL/dW|| / ||W||, the relative size of a plain SGD update, log scale;
* ``weight_norm``: ||W|| of each conv layer, log scale (a conv followed by BN is scale-invariant:
  its gradient shrinks as 1/||W||, so a grown weight norm looks like a vanishing gradient);
* ``branch_ratio``: ||F(x)|| / ||x|| per block (0 = the block is the identity mapping);
* ``response_std``: the std of each layer's response in eval mode (Fig. 7's quantity).

Plain nets dashed, ResNets solid, one colour per depth (as in plot_degradation.py). Vanishing
gradients would show as grad_norm falling by orders of magnitude towards layer 1.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from resnet_jax import cli
from resnet_jax import run_dir
from resnet_jax.plotting import depth_colors, plt, save
from resnet_jax.results import (Run, WandbUnavailable, find_run_dirs, load_run_dir, net_fields, output_path,
                                wandb_api)

PREFIX = "diagnostics/"
QUANTITIES = ("grad_norm", "grad_to_weight", "weight_norm", "branch_ratio", "response_std")
DEFAULT_QUANTITIES = ("grad_norm", "grad_to_weight", "branch_ratio")
LOG_SCALE = {"grad_norm", "grad_to_weight", "weight_norm"}
YLABELS = {"grad_norm": r"$\|\partial L / \partial W\|$", "grad_to_weight": r"$\|\partial L/\partial W\| / \|W\|$",
           "weight_norm": r"$\|W\|$",
           "branch_ratio": r"$\|F(x)\| / \|x\|$", "response_std": "response std"}
XLABELS = {"grad_norm": "conv layer index", "grad_to_weight": "conv layer index", "weight_norm": "conv layer index",
           "branch_ratio": "block index",
           "response_std": "layer index"}
PLAIN_STYLE = dict(linestyle="--", linewidth=1.2)
RESIDUAL_STYLE = dict(linestyle="-", linewidth=1.5)
_PER_LAYER = re.compile(r"^diagnostics/(\w+)/(\d+)$")


@dataclasses.dataclass
class DiagnosticsRun:
    name: str
    depth: int | None
    residual: bool | None
    steps: dict                           # step -> {quantity: [values in network order]}
    layers: dict | None = None            # {'grad': names, 'response': names, 'block': names} if known
    source: str = ""
    net: str = ""                         # what was trained: plain-56, wrn-16-8, ... (results.Run.net)
    size: int | tuple | None = None       # what the colour tells apart (results.Run.size)

    def values(self, step: int, quantity: str) -> np.ndarray | None:
        v = self.steps.get(step, {}).get(quantity)
        if v is None:
            return None
        v = np.asarray(v, float)
        if quantity in ("grad_norm", "grad_to_weight", "weight_norm"):  # conv layers: the classifier left out
            names = (self.layers or {}).get("grad")
            keep = [n != "fc" for n in names] if names and len(names) == len(v) else [True] * (len(v) - 1) + [False]
            v = v[np.asarray(keep)]
        return v


def records_to_steps(records: Sequence[dict]) -> dict:
    """step -> {quantity: list} from metrics.jsonl records (lists) or W&B rows (KEY/0000 scalars)."""
    steps: dict = {}
    for r in records:
        lists = {k[len(PREFIX):]: v for k, v in r.items() if k.startswith(PREFIX) and isinstance(v, list)}
        per_layer: dict = {}
        for k, v in r.items():
            m = _PER_LAYER.match(k)
            if m and v is not None:
                per_layer.setdefault(m.group(1), {})[int(m.group(2))] = float(v)
        for q, by_index in per_layer.items():
            lists.setdefault(q, [by_index[i] for i in sorted(by_index)])
        step = int(r.get("step", r.get("_step", -1)))
        if lists:
            steps.setdefault(step, {}).update(lists)
    return steps


def load_local(paths: Sequence[str]) -> list[DiagnosticsRun]:
    runs = []
    for d in find_run_dirs(paths):
        run = load_run_dir(d)
        runs.append(DiagnosticsRun(run.name, run.depth, run.residual, records_to_steps(run_dir.read_metrics(d)),
                                   run_dir.read_layer_names(d), d, run.net, run.size))
    return runs


def load_wandb(project: str, group: str | None = None, api=None) -> list[DiagnosticsRun]:
    """Runs of W&B ``ENTITY/PROJECT`` (of `group` if given) with their per-layer diagnostics."""
    api = wandb_api(api)
    try:
        wandb_runs = list(api.runs(project, filters={"group": group} if group else {}))
    except Exception as e:  # noqa: BLE001
        raise WandbUnavailable(f"cannot list the runs of W&B project {project!r}: {type(e).__name__}: {e}") from None
    runs = []
    for wr in wandb_runs:
        depth, residual, preact = net_fields(dict(wr.config), wr.name)
        run = Run(wr.name, depth, residual, preact, config=dict(wr.config))
        rows = [r for r in wr.scan_history() if any(str(k).startswith(PREFIX) for k in r)]
        runs.append(DiagnosticsRun(wr.name, depth, residual, records_to_steps(rows), None,
                                   getattr(wr, "url", project), run.net, run.size))
    return runs


def pick_steps(runs: Sequence[DiagnosticsRun], wanted: Sequence[int] | None = None, count: int = 4) -> list[int]:
    """The steps to show: `wanted`, else up to `count` spread over the steps every run has."""
    common = sorted(set.intersection(*(set(r.steps) for r in runs))) if runs else []
    if wanted:
        missing = [s for s in wanted if s not in common]
        if missing:
            raise ValueError(f"no diagnostics at step(s) {missing} in every run; common steps: {common}")
        return list(wanted)
    if not common:
        raise ValueError("the runs have no diagnostics step in common (was config.diagnostics_every on?)")
    if len(common) <= count:
        return common
    idx = np.unique(np.round(np.linspace(0, len(common) - 1, count)).astype(int))
    return [common[i] for i in idx]


def plot(runs: Sequence[DiagnosticsRun], steps: Sequence[int], quantities: Sequence[str] = DEFAULT_QUANTITIES,
         title: str | None = None):
    """Rows = quantities, columns = steps; lines carry gid NAME/QUANTITY/STEP."""
    colors = depth_colors([r.size for r in runs])
    ordered = sorted(runs, key=lambda r: (bool(r.residual), r.depth or 0, r.name))
    fig, axes = plt.subplots(len(quantities), len(steps), figsize=(3.6 * len(steps) + 0.6, 2.8 * len(quantities)),
                             squeeze=False, sharey="row")
    for row, q in enumerate(quantities):
        for col, step in enumerate(steps):
            ax = axes[row][col]
            for r in ordered:
                v = r.values(step, q)
                if v is None or not len(v):
                    continue
                style = dict(RESIDUAL_STYLE if r.residual else PLAIN_STYLE, color=colors[r.size])
                (line,) = ax.plot(np.arange(1, len(v) + 1), v, label=r.net.replace("resnet", "ResNet"),
                                  marker="." if q == "branch_ratio" else None, **style)
                line.set_gid(f"{r.name}/{q}/{step}")
            if q in LOG_SCALE:
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3, which="both" if q in LOG_SCALE else "major")
            if row == 0:
                ax.set_title(f"step {step}")
            ax.set_xlabel(XLABELS[q], fontsize=8)
            if col == 0:
                ax.set_ylabel(YLABELS[q])
        if q not in LOG_SCALE:  # linear rows start at 0 and fit every column (the y axis is shared)
            tops = [np.nanmax(line.get_ydata()) for ax in axes[row] for line in ax.lines]
            if tops:
                axes[row][0].set_ylim(0, 1.05 * max(tops))
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", **PLAIN_STYLE), Line2D([], [], color="0.3", **RESIDUAL_STYLE)]
    labels += ["plain (dashed)", "ResNet (solid)"]
    axes[0][-1].legend(handles, labels, fontsize=7, framealpha=0.85, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("paths", nargs="*", help="run directories, or sweep directories holding runs")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None,
                        help="read runs from W&B instead (public API; needs network and an API key)")
    parser.add_argument("--group", default=None, help="with --wandb: the sweep's W&B group")
    parser.add_argument("--steps", default=None, help="comma-separated steps (default: up to 4 spread over training)")
    parser.add_argument("--quantities", default=",".join(DEFAULT_QUANTITIES),
                        help=f"rows, comma-separated, from {', '.join(QUANTITIES)}")
    parser.add_argument("--out", default=None, help="output path without extension "
                        "(default: FIRST_PATH/gradient_flow, or gradient_flow-GROUP for W&B)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        quantities = [q for q in args.quantities.split(",") if q]
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(f"unknown quantities {unknown}; valid: {', '.join(QUANTITIES)}")
        if args.wandb:
            runs = load_wandb(args.wandb, args.group)
        elif args.paths:
            runs = load_local(args.paths)
        else:
            raise ValueError("give run or sweep directories, or --wandb ENTITY/PROJECT")
        runs = [r for r in runs if r.steps]
        if not runs:
            raise ValueError("no run has diagnostics (train with --config.diagnostics_every=N)")
        steps = pick_steps(runs, [int(s) for s in args.steps.split(",")] if args.steps else None)
        title = args.title if args.title is not None else "gradient flow and residual branches across depth"
        fig = plot(runs, steps, quantities, title)
    except (WandbUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = output_path(args, "gradient_flow")
    for path in save(fig, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
