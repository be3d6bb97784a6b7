"""The ImageNet degradation sweep of Fig. 4: plain-18/34 and ResNet-18/34 (option A shortcuts).

Launch every run of the sweep (each in DIR/<run-name>), then draw the figure:

    ./launch.sh configs/imagenet_degradation.py --workdir runs/fig4 --config.data_dir=DATA_DIR
    python experiments/plot_degradation.py runs/fig4

One run of it by hand:

    python -m resnet_jax.main --config=configs/imagenet_degradation.py:run=plain-34 --workdir=runs/fig4/plain-34

Arguments: ``run=NAME`` picks the run; ``seeds=N`` runs every net with seeds 0..N-1 (runs
NET/seed-K in DIR/NET/seed-K); ``table3`` adds ResNet-34 with shortcut options B and C
(Table 3: projections for increasing dimensions, or for every shortcut); ``imagenette`` runs the
same sweep on Imagenette (10 classes, 9,469 training images: minutes per run on one GPU) for a
small trial of the whole pipeline; it shows the set-up works, not the paper's numbers.
"""
import pathlib

from resnet_jax.config_args import load_config_module, name_sweep_run, parse_config_arg, seed_runs, split_seed

imagenet = load_config_module(pathlib.Path(__file__).with_name("imagenet.py"))

FIG4 = ("plain-18", "plain-34", "resnet-18", "resnet-34")
TABLE3 = ("resnet-34-B", "resnet-34-C")
SWEEP_NAME = "imagenet-degradation"
FLAGS = ("table3", "imagenette")


ARGS = dict(run="", seeds=1)


def get_sweep(arg: str | None = None) -> list[str]:
    """The run names of the sweep, in launch order."""
    a = parse_config_arg(arg, ARGS, flags=FLAGS)
    return seed_runs(list(FIG4) + (list(TABLE3) if a["table3"] else []), a["seeds"])


def get_config(arg: str | None = None):
    a = parse_config_arg(arg, ARGS, flags=FLAGS)
    runs = get_sweep(arg)
    if a["run"] not in runs:
        raise ValueError(f"run={a['run']!r} is not in this sweep; valid: {', '.join(runs)}")
    kind, depth, *shortcut = split_seed(a["run"])[0].split("-")
    dataset = "imagenette" if a["imagenette"] else "imagenet2012"
    c = imagenet.get_config(f"depth={depth},residual={kind == 'resnet'},shortcut={''.join(shortcut) or 'A'},"
                            f"dataset={dataset}")
    name_sweep_run(c, a["run"], SWEEP_NAME + ("-imagenette" if a["imagenette"] else ""))
    return c
