"""Do gradients vanish in deep plain nets? Per-layer gradient norms at init and after a short run.

    python experiments/vanishing_gradients.py --data_dir ../shared/data/tfds --out runs/vanishing_gradients
    python experiments/vanishing_gradients.py --depths 20 --steps 50 --nobn_lrs 0.01 --out runs/vg-small

Trains plain-D and ResNet-D (D in --depths; --kinds) with batch norm at --lr and without normalisation
(norm=none) at each of --nobn_lrs, every run through the training loop (resnet_jax.train), with
the diagnostics (resnet_jax.diagnostics) taken at step 0 and at the last step; runs live in
OUT/runs/NAME and a re-run resumes or skips them. Writes OUT/vanishing_gradients.{md,json,png,pdf}:
per run ||dL/dW|| of the first conv layer over the last one (and the same for ||dL/dW||/||W||) at
init and after --steps iterations, with the errors; the figure has the per-layer gradient norm
against layer index, one row per setting (norm, lr), init on the left, trained on the right.
He et al. (2016): "[plain nets] are trained with BN, which ensures forward propagated signals to
have non-zero variances ... backward propagated gradients exhibit healthy norms with BN".
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import numpy as np
from matplotlib.lines import Line2D

from resnet_jax import cli, run_dir, train
from resnet_jax.config_args import load_config_module
from resnet_jax.plotting import depth_colors, plt, save
from resnet_jax.results import load_run_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
PREFIX = "diagnostics/"
CHANCE_ERROR = 0.85  # training error above this after the run: the net has not left chance (10 classes)
PLAIN_STYLE = dict(linestyle="--", linewidth=1.2)  # as experiments/plot_gradient_flow.py
RESIDUAL_STYLE = dict(linestyle="-", linewidth=1.5)


def settings(lr: float, nobn_lrs: Sequence[float]) -> list[tuple[str, float]]:
    """(norm, learning rate) of each row: batch norm at `lr`, then norm=none at each of `nobn_lrs`."""
    return [("batch", lr)] + [("none", x) for x in nobn_lrs]


def run_config(depth: int, residual: bool, norm: str, lr: float, args, suffix: str):
    """configs/cifar10.py's net, with a constant lr and the diagnostics at step 0 and the last step."""
    c = load_config_module(str(REPO / "configs" / "cifar10.py")).get_config(
        f"depth={depth},residual={residual},norm={norm}")
    c.name += suffix
    c.data_dir = args.data_dir
    c.seed = args.seed
    c.batch_size = args.batch_size
    c.num_train_steps = args.steps
    c.learning_rate = lr
    c.lr_boundaries = ()
    c.log_every = max(1, min(20, args.steps))
    c.eval_every = c.checkpoint_every = c.diagnostics_every = args.steps
    c.diagnostics_batch = args.diagnostics_batch
    c.wandb.mode = "disabled"
    return c


def train_run(config, workdir: str) -> str:
    """Trains (or resumes, or skips a finished or diverged) run; '' or why it stopped early."""
    if diverged_at(workdir) is None:
        try:
            train.train_and_evaluate(config, workdir)
        except train.TrainingDiverged:
            pass  # config.json says where (run_dir.mark_diverged)
    step = diverged_at(workdir)
    return "" if step is None else f"diverged (weights not finite at step {step})"


def diverged_at(workdir: str) -> int | None:
    """The step at which the run in `workdir` diverged, if it did."""
    return (run_dir.saved_runtime(workdir).get("diverged") or {}).get("step") if os.path.isdir(workdir) else None


def diagnostics_at(records: Sequence[dict], step: int) -> dict | None:
    """{quantity: list in network order} logged at `step`, or None."""
    for r in records:
        if r.get("step") == step and PREFIX + "grad_norm" in r:
            return {k[len(PREFIX):]: v for k, v in r.items() if k.startswith(PREFIX) and isinstance(v, list)}
    return None


def conv_only(values: list, names: list | None) -> list:
    """The conv layers' entries (the classifier, 'fc', left out); a non-finite value (metrics.jsonl
    writes NaN as "nan") becomes None."""
    keep = [n != "fc" for n in names] if names and len(names) == len(values) else [True] * (len(values) - 1) + [False]
    return [float(v) if np.isfinite(float(v)) else None for v, k in zip(values, keep) if k]


def first_over_last(values: list | None) -> float | None:
    if not values or values[0] is None or values[-1] is None:
        return None
    return float(values[0] / max(values[-1], 1e-30))


def summarise(workdir: str, norm: str, lr: float, steps: int, stopped: str) -> dict:
    """One row of the table (and of the JSON) from a run directory."""
    run, records, names = load_run_dir(workdir), run_dir.read_metrics(workdir), run_dir.read_layer_names(workdir)
    grad_names = (names or {}).get("grad")
    out = dict(name=run.name, net=run.net, depth=run.depth, residual=run.residual, norm=norm, lr=lr, steps=steps,
               hardware=run.hardware, data=run.data, train_error=run.final_train_error,
               test_error=run.final_test_error, stopped=stopped)
    for label, step in (("init", 0), ("trained", steps)):
        d = diagnostics_at(records, step) or {}
        grad = conv_only(d["grad_norm"], grad_names) if d else None
        ratio = conv_only(d["grad_to_weight"], grad_names) if d else None
        weight = conv_only(d["weight_norm"], grad_names) if d else None
        # ||dL/dW|| * ||W||: unchanged when a conv in front of BN has its weights rescaled
        scaled = [g * w if g is not None and w is not None else None for g, w in zip(grad, weight)] if d else None
        out[label] = dict(grad_norm=grad, grad_to_weight=ratio, weight_norm=weight,
                          grad_first_over_last=first_over_last(grad),
                          grad_to_weight_first_over_last=first_over_last(ratio),
                          grad_times_weight_first_over_last=first_over_last(scaled))
    return out


def note(row: dict) -> str:
    if row["stopped"]:
        return row["stopped"]
    if any(g is None for g in row["trained"]["grad_norm"] or []):
        return "gradients not finite"
    err = row["train_error"]
    return "at chance" if err is not None and err >= CHANCE_ERROR else ""


def _num(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.3g}"


def markdown(rows: Sequence[dict]) -> str:
    steps = rows[0]["steps"] if rows else "?"
    head = ["net", "norm", "lr", "init: first/last", f"{steps} its: first/last",
            "init: g/w first/last", f"{steps} its: g/w first/last", f"{steps} its: g·w first/last", "train err %",
            "test err %", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        i, t = r["init"], r["trained"]
        cells = [r["net"], r["norm"], f"{r['lr']:g}", _num(i["grad_first_over_last"]),
                 _num(t["grad_first_over_last"]), _num(i["grad_to_weight_first_over_last"]),
                 _num(t["grad_to_weight_first_over_last"]), _num(t["grad_times_weight_first_over_last"]),
                 _num(r["train_error"], True),
                 _num(r["test_error"], True), note(r)]
        lines.append("| " + " | ".join(cells) + " |")
    hardware = ", ".join(sorted({r["hardware"] for r in rows}))
    data = ", ".join(sorted({r["data"] for r in rows}))
    lines += ["", "first/last: ||dL/dW|| of the first conv layer (the stem) over that of the last conv layer; "
              "g/w: the same for ||dL/dW|| / ||W||; g·w: for ||dL/dW|| * ||W||, which rescaling the weights of a conv "
              "followed by BN leaves unchanged (BN makes such a conv scale-invariant). "
              "Train err: mean over the last logging interval; "
              f"test err: the whole test split at the end. Hardware: {hardware}; data (train/test): {data}."]
    return "\n".join(lines) + "\n"


def figure(rows: Sequence[dict]):
    """Rows = (norm, lr) settings, columns = init / trained; per-layer ||dL/dW|| (conv layers, log scale)."""
    keys = list(dict.fromkeys((r["norm"], r["lr"]) for r in rows))
    colors = depth_colors([r["depth"] for r in rows])
    fig, axes = plt.subplots(len(keys), 2, figsize=(9, 2.9 * len(keys)), squeeze=False, sharey="row")
    for i, (norm, lr) in enumerate(keys):
        for j, label in enumerate(("init", "trained")):
            ax = axes[i][j]
            for r in (r for r in rows if (r["norm"], r["lr"]) == (norm, lr)):
                grad = r[label]["grad_norm"]
                if grad and None not in grad:
                    style = dict(RESIDUAL_STYLE if r["residual"] else PLAIN_STYLE, color=colors[r["depth"]])
                    (line,) = ax.plot(np.arange(1, len(grad) + 1), grad, label=r["net"].replace("resnet", "ResNet"),
                                      **style)
                    line.set_gid(f"{r['name']}/{label}")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3, which="both")
            when = "at initialisation" if label == "init" else f"after {rows[0]['steps']} iterations"
            ax.set_title(f"{'BN' if norm == 'batch' else 'norm=' + norm}, lr {lr:g}: {when}", fontsize=9)
            ax.set_xlabel("conv layer index (1 = stem)", fontsize=8)
        axes[i][0].set_ylabel(r"$\|\partial L / \partial W\|$")
        handles, labels = axes[i][0].get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", **PLAIN_STYLE), Line2D([], [], color="0.3", **RESIDUAL_STYLE)]
        axes[i][1].legend(handles, labels + ["plain (dashed)", "ResNet (solid)"], fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", default="runs/vanishing_gradients", help="output directory (runs in OUT/runs)")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory holding cifar10 (default: TFDS's)")
    parser.add_argument("--depths", default="20,56", help="comma-separated CIFAR depths (6n+2)")
    parser.add_argument("--kinds", default="plain,resnet", help="comma-separated: plain, resnet or both")
    parser.add_argument("--steps", type=int, default=100, help="training iterations of each run")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the BN nets (the paper's)")
    parser.add_argument("--nobn_lrs", default="0.1,0.01", help="comma-separated learning rates of the norm=none nets")
    parser.add_argument("--diagnostics_batch", type=int, default=128, help="images the gradients are measured on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",") if d]
        nobn_lrs = [float(x) for x in args.nobn_lrs.split(",") if x]
        kinds = [k for k in args.kinds.split(",") if k]
        if not kinds or set(kinds) - {"plain", "resnet"}:
            raise ValueError(f"--kinds={args.kinds}: give plain, resnet or plain,resnet")
        if args.steps < 1:
            raise ValueError(f"--steps={args.steps}: give at least 1 training iteration")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for norm, lr in settings(args.lr, nobn_lrs):
        suffix = f"-lr{lr:g}" if norm != "batch" and len(nobn_lrs) > 1 else ""
        for residual in [kind == "resnet" for kind in kinds]:
            for depth in depths:
                try:
                    config = run_config(depth, residual, norm, lr, args, suffix)
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
                workdir = os.path.join(args.out, "runs", config.name)
                stopped = train_run(config, workdir)
                rows.append(summarise(workdir, norm, lr, args.steps, stopped))
    base = os.path.join(args.out, "vanishing_gradients")
    run_dir.atomic_write_text(base + ".md", markdown(rows))
    run_dir.atomic_write_json(base + ".json", {"steps": args.steps, "batch_size": args.batch_size,
                                               "diagnostics_batch": args.diagnostics_batch, "seed": args.seed,
                                               "runs": rows})
    for path in [base + ".md", base + ".json", *save(figure(rows), base)]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
