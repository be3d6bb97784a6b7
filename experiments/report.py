"""A Markdown table of each run's final training and test error next to the paper's numbers.

    python experiments/report.py runs/cifar10-degradation                 # to stdout
    python experiments/report.py runs/cifar10-degradation --out report.md
    python experiments/report.py --wandb ENTITY/resnet-degradation --group cifar10-degradation

Paper numbers (He et al. 2016): ResNet test error from Table 6; plain nets' test and training
error and ResNets' training error read off Fig. 6 at 64k iterations (approximate, marked ~).
Each row also says how many steps the run had and on what hardware: a run shorter than the
paper's 64k iterations, or on a subset of CIFAR-10, is not comparable with these numbers.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from resnet_jax import cli
from resnet_jax.results import Run, WandbUnavailable, add_source_arguments, load_runs

PAPER_ITERATIONS = 64_000
# (residual, depth) -> (training error %, test error %), as printed in He et al. (2016): Table 6 and Fig. 6.
PAPER = {
    # ResNets: test error from Table 6; final training error read off Fig. 6 (middle).
    (True, 20): ("~0.5", "8.75"),
    (True, 32): ("~0.2", "7.51"),
    (True, 44): ("~0.2", "7.17"),
    (True, 56): ("~0.14", "6.97"),
    (True, 110): ("-", "6.43 (6.61±0.16, 5 runs)"),
    (True, 1202): ("-", "7.93"),
    # Plain nets: test and training error read off Fig. 6 (left) at 64k iterations.
    (False, 20): ("~1.3", "~9.6"),
    (False, 32): ("~1.3", "~10.1"),
    (False, 44): ("~2.4", "~11.4"),
    (False, 56): ("~5.4", "~13.2"),
    (False, 110): (">60", ">60"),
}
# ImageNet: top-1 validation error, 10-crop testing (Table 2 for 18/34 layers, option A; Table 3 for
# the shortcut options and deeper nets), keyed by (residual, depth, shortcut); plain nets have none.
PAPER_IMAGENET = {
    (False, 18, None): "27.94", (False, 34, None): "28.54",
    (True, 18, "A"): "27.88", (True, 34, "A"): "25.03", (True, 34, "B"): "24.52", (True, 34, "C"): "24.19",
    (True, 50, "B"): "22.85", (True, 101, "B"): "21.75", (True, 152, "B"): "21.43",
}
IMAGENET_EPOCHS = 90  # our schedule (configs/imagenet.py); the paper trains up to 60e4 iterations (120 epochs)
COLUMNS = ("run", "net", "steps", "hardware", "data (train/test)", "img/s", "train err %", "test err %",
           "best test err %", "paper train err %", "paper test err %")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def paper_numbers(run: Run) -> tuple[str, str]:
    if run.preact or run.residual is None or run.depth is None:
        return "-", "-"
    if run.is_imagenet:
        if run.dataset != "imagenet2012":
            return "-", "-"
        return "-", PAPER_IMAGENET.get((run.residual, run.depth, run.shortcut if run.residual else None), "-")
    return PAPER.get((run.residual, run.depth), ("-", "-"))


def row(run: Run) -> list[str]:
    steps = f"{run.steps_done}/{run.num_train_steps or '?'}" + ("" if run.finished else " (running)")
    paper_train, paper_test = paper_numbers(run)
    return [run.name, run.net, steps, run.hardware, run.data,
            "-" if run.img_per_s is None else f"{run.img_per_s:.0f}",
            _pct(run.final_train_error), _pct(run.final_test_error), _pct(run.best_test_error),
            paper_train, paper_test]


def table(runs: Sequence[Run]) -> str:
    """The Markdown table: a header, then one row per run."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row(r)) + " |" for r in sorted(runs, key=Run.sort_key)]
    return "\n".join(lines) + "\n"


def notes(runs: Sequence[Run]) -> str:
    out = ["",
           "train err: mean over the last logging interval's mini-batches (augmented, as the paper's "
           "dashed curves); test err: the whole test split at the last evaluation; best: the lowest "
           "test error of any evaluation.",
           "Paper: Table 6 (ResNet test error) and Fig. 6 read-offs (~) after 64k iterations at batch 128 on "
           "the full 50k/10k CIFAR-10 split."]
    if any(r.is_imagenet for r in runs):
        out.append("ImageNet (imagenet2012): paper column = top-1 validation error with 10-crop testing (Table 2, "
                   "option A; Table 3 for B/C and 50+ layers); ours is the single centre crop unless the run set "
                   "ten_crop=true (single-crop errors are higher than 10-crop ones).")
    short = list(dict.fromkeys(
        r.name for r in runs if (r.num_train_steps or 0) < (
            IMAGENET_EPOCHS * (r.steps_per_epoch or 0) if r.is_imagenet else PAPER_ITERATIONS)))
    if short:
        out.append(f"Runs shorter than the paper's schedule ({', '.join(short)}: CIFAR {PAPER_ITERATIONS} iterations, "
                   f"ImageNet {IMAGENET_EPOCHS} epochs) are not comparable with its numbers; they show the early "
                   "part of the curves only.")
    return "\n".join(out) + "\n"


def report(runs: Sequence[Run]) -> str:
    return table(runs) + notes(runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    add_source_arguments(parser)
    parser.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.paths, args.wandb, args.group)
    except (WandbUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report(runs)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
