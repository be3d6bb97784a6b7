"""The CIFAR-10 degradation sweep of Fig. 6: plain-20/32/44/56 and ResNet-20/32/44/56/110.

Launch every run of the sweep (each in DIR/<run-name>), then draw the figure:

    ./launch.sh configs/cifar10_degradation.py --workdir runs/fig6
    python experiments/plot_degradation.py runs/fig6

Five seeds per net, as the paper's Table 6 reports ResNet-110 (mean and spread in the figure and
experiments/report.py):

    ./launch.sh configs/cifar10_degradation.py:seeds=5 --workdir runs/fig6-5seeds --gpus 0,1,2,3 --runs-per-gpu 4

One run of it by hand:

    python -m resnet_jax.main --config=configs/cifar10_degradation.py:run=plain-56 --workdir=runs/fig6/plain-56

Arguments: ``run=NAME`` picks the run; ``seeds=N`` runs every net with seeds 0..N-1 (runs
NET/seed-K, e.g. plain-56/seed-2, each in DIR/NET/seed-K; W&B groups them by net); ``with1202``
adds ResNet-1202 (Fig. 6 right; ~19M parameters, slow); ``quick`` is the CPU-laptop variant below.

``quick``: plain-20, plain-56, ResNet-20 and ResNet-56 for 500 iterations at batch 64 with the
paper's lr 0.1 (divided by 10 at 300 and 400), about 20-35 minutes of training in total on a
2-core CPU. What it shows (measured on the 5k-image CIFAR-10 subset, see docs/results-quick.md): the
optimisation side of degradation that appears first in Fig. 6 — plain-56 sits at chance (~90%
training error) for its first ~250 iterations and ends far above plain-20 (83% vs 62%), while
at equal depth the residual net trains much faster (ResNet-56 69% vs plain-56 83%; ResNet-20 48%
vs plain-20 62%). What it cannot show: that deeper ResNets end *below* shallower ones (after 500
iterations ResNet-56 is still behind ResNet-20: that needs the full schedule), final error rates
(64k iterations on 50k images), or ResNet-110's warm-up.
"""
import pathlib

from resnet_jax.config_args import load_config_module, name_sweep_run, parse_config_arg, seed_runs, split_seed

cifar10 = load_config_module(pathlib.Path(__file__).with_name("cifar10.py"))

PLAIN = ("plain-20", "plain-32", "plain-44", "plain-56")
RESNET = ("resnet-20", "resnet-32", "resnet-44", "resnet-56", "resnet-110")
QUICK = ("plain-20", "plain-56", "resnet-20", "resnet-56")
SWEEP_NAME = "cifar10-degradation"


ARGS = dict(run="", seeds=1)
FLAGS = ("quick", "with1202")


def get_sweep(arg: str | None = None) -> list[str]:
    """The run names of the sweep, in launch order."""
    a = parse_config_arg(arg, ARGS, flags=FLAGS)
    nets = list(QUICK) if a["quick"] else list(PLAIN + RESNET) + (["resnet-1202"] if a["with1202"] else [])
    return seed_runs(nets, a["seeds"])


def get_config(arg: str | None = None):
    a = parse_config_arg(arg, ARGS, flags=FLAGS)
    runs = get_sweep(arg)
    if a["run"] not in runs:
        raise ValueError(f"run={a['run']!r} is not in this sweep; valid: {', '.join(runs)}")
    kind, depth = split_seed(a["run"])[0].split("-")
    c = cifar10.get_config(f"depth={depth},residual={kind == 'resnet'}")
    name_sweep_run(c, a["run"], SWEEP_NAME + ("-quick" if a["quick"] else ""))
    if a["quick"]:
        c.batch_size = 64
        c.num_train_steps = 500
        c.lr_boundaries = (300, 400)
        c.log_every = 20
        c.eval_every = 100
        c.checkpoint_every = 100
    return c
