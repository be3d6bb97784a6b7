"""Fig. 6 (CIFAR-10) or Fig. 4 (ImageNet) of He et al. (2016) from a sweep: training and test error.

    python experiments/plot_degradation.py runs/cifar10-degradation     # -> runs/cifar10-degradation/fig6.{png,pdf}
    python experiments/plot_degradation.py runs/imagenet-degradation    # -> runs/imagenet-degradation/fig4.{png,pdf}
    python experiments/plot_degradation.py runs/a/plain-20 runs/b/resnet-20 --out figs/mine
    python experiments/plot_degradation.py --wandb ENTITY/resnet-degradation --group cifar10-degradation

Panels as in the paper: plain nets (left), ResNets (middle), and ResNet-110 against deeper ResNets
(right, only when a ResNet deeper than 110 layers is there). One colour per depth, the same in
every panel, so plain-56 and ResNet-56 can be compared across panels. Works for runs of any length
(the x axis switches to units of 1e4 iterations, as in the paper, from 10k iterations on) and for
runs still in progress (their legend entry says how far they are). A net trained over several
seeds (a sweep with ``seeds=N``) draws as its mean curve with a shaded band of +-1 standard
deviation over the seeds (at the steps every seed has reached); a single run draws as itself.

ImageNet runs (any dataset but CIFAR) give Fig. 4 instead: plain-18/34 (left) and ResNet-18/34
(right), thin training error and bold validation (centre-crop) error against epochs.
"""
from __future__ import annotations

import math
import sys
from typing import Sequence

from matplotlib.lines import Line2D

from resnet_jax import cli, seed_stats
from resnet_jax.plotting import depth_colors, plt, save
from resnet_jax.results import Run, WandbUnavailable, add_source_arguments, load_runs, output_path

TRAIN_STYLE = dict(linestyle="--", linewidth=1.0)
TEST_STYLE = dict(linestyle="-", linewidth=2.2)
FIG4_TRAIN_STYLE = dict(linestyle="-", linewidth=0.9)  # Fig. 4: thin training, bold validation error


def panels(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
    """[(title, runs)] in the paper's order: plain, ResNet, ResNet-110 vs deeper (when present)."""
    plain = [r for r in runs if r.residual is False]
    resnets = [r for r in runs if r.residual]
    deep = [r for r in resnets if r.depth is not None and r.depth > 110 and not r.is_imagenet]
    out = []
    if plain:
        out.append(("plain", plain))
    if resnets:
        out.append(("ResNet", [r for r in resnets if r not in deep]))
    if deep:
        out.append(("ResNet-110 vs deeper", [r for r in resnets if r.depth == 110] + deep))
    return [(t, rs) for t, rs in out if rs]


def legend_label(net: seed_stats.Net) -> str:
    run = net.first
    if net.n > 1:
        label = f"{net.name} (mean ± std, {net.n} seeds)"
        if not all(r.finished for r in net.runs):
            label += f" [{min(r.steps_done for r in net.runs)}/{run.num_train_steps or '?'}]"
        return label
    label = run.name if run.name == run.net else f"{run.name} ({run.net})"
    if not run.finished:
        label += f" [{run.steps_done}/{run.num_train_steps or '?'}]"
    return label


def draw(ax, net: seed_stats.Net, which: str, x_per: float, color, label: str | None, **style):
    """One net's training or test curve: the run itself, or the mean over its seeds with a +-1 std band.
    Lines carry gid ``NAME/train`` or ``NAME/test`` (bands ``NAME/train-band``)."""
    curves = [getattr(r, which) for r in net.runs if getattr(r, which)]
    if not curves:
        return
    if net.n == 1:
        steps, mean, std = [s for s, _ in curves[0]], [e for _, e in curves[0]], None
        name = net.first.name
    else:
        steps, mean, std = seed_stats.mean_curve(curves)
        name = net.name
    x = [s / x_per for s in steps]
    one_point = which == "test" and len(steps) == 1
    (line,) = ax.plot(x, [100 * e for e in mean], color=color, label=label, marker="o" if one_point else None,
                      **style)
    line.set_gid(f"{name}/{which}")
    if std is not None and len(steps):
        band = ax.fill_between(x, [100 * (m - d) for m, d in zip(mean, std)], [100 * (m + d) for m, d in zip(mean, std)],
                               color=color, alpha=0.18 if which == "test" else 0.1, linewidth=0)
        band.set_gid(f"{name}/{which}-band")


def y_top(runs: Sequence[Run]) -> float:
    """The paper's 0-20% where the final errors fit it (early, higher errors leave the plot at the top,
    as in the paper); otherwise room above the highest final error."""
    finals = [100 * e for r in runs for e in (r.final_train_error, r.final_test_error) if e is not None]
    if not finals or max(finals) <= 15:
        return 20.0
    return float(min(100, 10 * math.ceil(1.25 * max(finals) / 10)))


def plot(runs: Sequence[Run], title: str | None = None, ylim: float | None = None):
    """The figure (one panel per group of runs); see `draw` for what each net draws."""
    groups = panels(runs)
    if not groups:
        raise ValueError("no plain or residual runs to plot (is each run's config.json there?)")
    colors = depth_colors([r.size for r in runs])
    max_step = max([r.steps_done for r in runs] + [1])
    scale, xlabel = (1e4, "iter. (1e4)") if max_step >= 10_000 else (1.0, "iterations")
    by_epoch = all(r.steps_per_epoch for r in runs)  # Fig. 4: against epochs
    train_style, test_name = (FIG4_TRAIN_STYLE, "validation error") if by_epoch else (TRAIN_STYLE, "test error")
    if by_epoch:
        xlabel = "epochs"
    top = ylim or y_top(runs)

    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), sharey=True, squeeze=False)
    for ax, (panel_title, panel_runs) in zip(axes[0], groups):
        for net in seed_stats.group_by_net(panel_runs):
            color = colors[net.first.size]
            per = net.first.steps_per_epoch if by_epoch else scale
            tested = any(r.test for r in net.runs)
            draw(ax, net, "train", per, color, None if tested else legend_label(net), **train_style)
            draw(ax, net, "test", per, color, legend_label(net) if tested else None, **TEST_STYLE)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.set_xlim(left=0)
        ax.set_ylim(0, top)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", **train_style), Line2D([], [], color="0.3", **TEST_STYLE)]
        labels += ["training error", test_name]
        ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.85)
    axes[0][0].set_ylabel("error (%)")
    if title:
        seeds = max(n.n for n in seed_stats.group_by_net(runs))
        fig.suptitle(title + (f"; shaded: ±1 std over up to {seeds} seeds" if seeds > 1 else ""))
    fig.tight_layout()
    return fig


def default_title(runs: Sequence[Run]) -> str:
    steps = sorted({r.num_train_steps for r in runs if r.num_train_steps})
    hardware = sorted({r.hardware for r in runs})
    steps_text = "/".join(str(s) for s in steps) or "?"
    if runs and all(r.steps_per_epoch for r in runs):
        epochs = sorted({round(r.num_train_steps / r.steps_per_epoch, 1) for r in runs if r.num_train_steps})
        datasets = ", ".join(sorted({r.dataset for r in runs}))
        return f"{datasets}, {'/'.join(f'{e:g}' for e in epochs) or '?'} epochs ({', '.join(hardware)})"
    return f"CIFAR-10, {steps_text} iterations ({', '.join(hardware)})"


def figure_name(runs: Sequence[Run]) -> str:
    return "fig4" if runs and all(r.is_imagenet for r in runs) else "fig6"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    add_source_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="output path without extension (default: SWEEP_DIR/fig6 or fig4, or fig6-GROUP for W&B)")
    parser.add_argument("--title", default=None, help="figure title (default: steps and hardware)")
    parser.add_argument("--ymax", type=float, default=None,
                        help="top of the error axis in %% (default: 20 as in the paper where the final errors fit)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.paths, args.wandb, args.group)
        fig = plot(runs, args.title if args.title is not None else default_title(runs), args.ymax)
    except (WandbUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = output_path(args, figure_name(runs))
    for path in save(fig, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
