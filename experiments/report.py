"""A Markdown table of each run's final training and test error next to the paper's numbers; over
seeds, each net's "best (mean ± std), n" and the Fig. 6 comparisons with a 95% confidence interval.

    python experiments/report.py runs/cifar10-degradation                 # to stdout
    python experiments/report.py runs/cifar10-degradation --out report.md --json report.json
    python experiments/report.py --wandb ENTITY/resnet-degradation --group cifar10-degradation

Paper numbers (He et al. 2016): ResNet test error from Table 6; plain nets' test and training
error and ResNets' training error read off Fig. 6 at 64k iterations (approximate, marked ~).
Each row also says how many steps the run had and on what hardware: a run shorter than the
paper's 64k iterations, or on a subset of CIFAR-10, is not comparable with these numbers. Over
seeds (a sweep with ``seeds=N``), the nabla0001/resnet reproduction's 5-seed numbers stand beside
the paper's; the comparisons are resnet_jax.seed_stats' (paired by seed where the nets share them).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from resnet_jax import cli, seed_stats
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
# The best public reproduction (github.com/nabla0001/resnet): test error %, mean ± std over 5 seeds,
# 64k iterations on the full CIFAR-10 split, keyed as PAPER.
NABLA0001 = {(True, 20): "8.51 ± 0.22", (True, 56): "7.40 ± 0.27", (True, 110): "7.14 ± 0.20",
             (False, 20): "9.78 ± 0.13", (False, 56): "12.95 ± 0.22"}
IMAGENET_EPOCHS = 90  # our schedule (configs/imagenet.py); the paper trains up to 60e4 iterations (120 epochs)
COLUMNS = ("run", "net", "steps", "hardware", "data (train/test)", "img/s", "train err %", "test err %",
           "best test err %", "paper train err %", "paper test err %")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def paper_numbers(run: Run) -> tuple[str, str]:
    """The paper's (training, test) error of the run's net: only for the paper's own nets."""
    if not run.is_paper_net or run.depth is None:
        return "-", "-"
    if run.is_imagenet:
        if run.dataset != "imagenet2012":
            return "-", "-"
        return "-", PAPER_IMAGENET.get((run.residual, run.depth, run.shortcut if run.residual else None), "-")
    return PAPER.get((run.residual, run.depth), ("-", "-"))


def steps_text(run: Run) -> str:
    if run.diverged:
        return f"{run.steps_done}/{run.num_train_steps or '?'} (diverged at {run.diverged.get('step', '?')})"
    return f"{run.steps_done}/{run.num_train_steps or '?'}" + ("" if run.finished else " (running)")


def row(run: Run) -> list[str]:
    steps = steps_text(run)
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


SEED_COLUMNS = ("net", "n", "steps", "hardware", "train err % best (mean ± std)", "test err % best (mean ± std)",
                "paper test err %", "nabla0001 test err % (5 seeds)")


def _spread(s: dict | None) -> str:
    return "-" if s is None else f"{100 * s['best']:.2f} ({100 * s['mean']:.2f} ± {100 * s['std']:.2f})"


def net_summary(net: seed_stats.Net) -> dict:
    """One net over its seeds, as JSON: errors are fractions."""
    run = net.first
    key = (run.residual, run.depth)
    cifar_paper = run.is_paper_net and not run.is_imagenet
    return {"net": net.name, "seeds": net.seeds, "steps": run.num_train_steps, "hardware": run.hardware,
            "train_error": seed_stats.summary(list(net.values(seed_stats.METRICS["final training error"]).values())),
            "test_error": seed_stats.summary(list(net.values(seed_stats.METRICS["final test error"]).values())),
            "paper_test_error": paper_numbers(run)[1],
            "nabla0001_test_error": NABLA0001.get(key, "-") if cifar_paper else "-"}


def seeds_table(nets: Sequence[seed_stats.Net]) -> str:
    lines = ["| " + " | ".join(SEED_COLUMNS) + " |", "|" + "|".join("---" for _ in SEED_COLUMNS) + "|"]
    for net in nets:
        s = net_summary(net)
        cells = [s["net"], str(net.n), str(s["steps"] or "?"), s["hardware"], _spread(s["train_error"]),
                 _spread(s["test_error"]), s["paper_test_error"], s["nabla0001_test_error"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def comparisons_table(comparisons: Sequence[seed_stats.Comparison]) -> str:
    columns = ("claim", "metric", "n", "test", "difference of means (pp)", "95% CI (pp)", "p (one-sided)",
               "holds at 95%")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for c in comparisons:
        verdict = "needs 2+ seeds of each" if c.holds is None else ("yes" if c.holds else "not shown")
        cells = [c.claim, c.metric, str(c.n), c.test or "-", "-" if c.difference is None else _pp(c.difference),
                 "-" if c.ci is None else f"[{_pp(c.ci[0])}, {_pp(c.ci[1])}]",
                 "-" if c.p_value is None else f"{c.p_value:.3g}", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def over_seeds(runs: Sequence[Run]) -> str:
    """The seeds section: only where some net ran more than one seed."""
    nets = seed_stats.group_by_net(runs)
    if not any(n.n > 1 for n in nets):
        return ""
    comparisons = seed_stats.fig6_comparisons(nets)
    text = ["", "## Over seeds", "", seeds_table(nets),
            "best: the lowest final error of the seeds; mean ± std: sample standard deviation (ddof 1) over them. "
            "nabla0001: 5 seeds, 64k iterations, full CIFAR-10.", ""]
    if comparisons:
        text += ["## Comparisons (Fig. 6 claims)", "", comparisons_table(comparisons),
                 "difference: mean of the first net minus the second, in percentage points of error; CI: "
                 f"{int(100 * seed_stats.CONFIDENCE)}% for that difference (paired t over seeds that share a data "
                 "order, else Welch); holds: the whole interval is on the claimed side of 0 (so a one-sided p "
                 "below 0.025).", ""]
    return "\n".join(text)


def report(runs: Sequence[Run]) -> str:
    return table(runs) + notes(runs) + over_seeds(runs)


def report_json(runs: Sequence[Run]) -> dict:
    nets = seed_stats.group_by_net(runs)
    return {"runs": [{"name": r.name, "net": r.net, "seed": r.seed, "steps_done": r.steps_done,
                      "num_train_steps": r.num_train_steps, "finished": r.finished, "diverged": r.diverged,
                      "hardware": r.hardware, "data": r.data, "final_train_error": r.final_train_error,
                      "final_test_error": r.final_test_error, "best_test_error": r.best_test_error,
                      "source": r.source} for r in sorted(runs, key=Run.sort_key)],
            "nets": [net_summary(n) for n in nets],
            "comparisons": [c.to_json() for c in seed_stats.fig6_comparisons(nets)]}


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    add_source_arguments(parser)
    parser.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    parser.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.paths, args.wandb, args.group)
    except (WandbUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report(runs)
    if args.out:
        write(args.out, text)
    else:
        sys.stdout.write(text)
    if args.json:
        write(args.json, json.dumps(report_json(runs), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
