"""Width against depth on CIFAR-10: WRN-16-k (k = 1, 2, 4, 8) against ResNet-20..110, plain and residual.

Launch every run of the sweep (each in DIR/<run-name>), then compare the curves:

    ./launch.sh configs/cifar10_width.py --workdir runs/width
    python experiments/plot_degradation.py runs/width      # one colour per depth: the WRN-16-k share one

One run of it by hand:

    python -m resnet_jax.main --config=configs/cifar10_width.py:run=plain-wrn-16-4 --workdir=runs/width/plain-wrn-16-4

Arguments: ``run=NAME`` picks the run; ``seeds=N`` runs every net with seeds 0..N-1 (runs
NET/seed-K in DIR/NET/seed-K). The 18 runs: wrn-16-1/2/4/8 and their plain twins
(plain-wrn-16-k: no shortcuts, projections included), resnet-20/32/44/56/110 and
plain-20/32/44/56/110. Every run uses the paper's CIFAR recipe (configs/cifar10.py), so a wide
shallow net and a thin deep one differ only in their shape: WRN-16-1 (0.18M parameters) is a
pre-activation ResNet-14 with projection shortcuts; WRN-16-8 (11.0M) has the depth of ResNet-14
and 40x the parameters of ResNet-20. The question: does width buy what depth buys, and does a
wide plain net degrade like a deep plain one?
"""
import pathlib

from resnet_jax.config_args import load_config_module, name_sweep_run, parse_config_arg, seed_runs, split_seed

cifar10 = load_config_module(pathlib.Path(__file__).with_name("cifar10.py"))

WRN_DEPTH = 16
WIDTHS = (1, 2, 4, 8)
DEPTHS = (20, 32, 44, 56, 110)
SWEEP_NAME = "cifar10-width"
ARGS = dict(run="", seeds=1)


def get_sweep(arg: str | None = None) -> list[str]:
    """The run names of the sweep, in launch order (the big WRNs last)."""
    a = parse_config_arg(arg, ARGS)
    wide = [f"{kind}wrn-{WRN_DEPTH}-{k}" for k in WIDTHS for kind in ("plain-", "")]
    deep = [f"{kind}-{d}" for d in DEPTHS for kind in ("plain", "resnet")]
    return seed_runs(deep + wide, a["seeds"])


def config_arg(run: str) -> str:
    """The configs/cifar10.py argument of a run name: plain-wrn-16-4 -> depth=16,width=4,residual=False."""
    residual = not run.startswith("plain-")
    parts = run.removeprefix("plain-").split("-")
    if parts[0] == "wrn":
        return f"depth={parts[1]},width={parts[2]},residual={residual}"
    return f"depth={parts[-1]},residual={residual}"


def get_config(arg: str | None = None):
    a = parse_config_arg(arg, ARGS)
    runs = get_sweep(arg)
    if a["run"] not in runs:
        raise ValueError(f"run={a['run']!r} is not in this sweep; valid: {', '.join(runs)}")
    c = cifar10.get_config(config_arg(split_seed(a["run"])[0]))
    name_sweep_run(c, a["run"], SWEEP_NAME)
    return c
