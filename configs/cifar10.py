"""One CIFAR-10 (or CIFAR-100) run with the paper's recipe (He et al. 2016, section 4.2).

    python -m resnet_jax.main --config=configs/cifar10.py:depth=56,residual=false --workdir=runs/plain-56

    python -m resnet_jax.main --config=configs/cifar10.py:depth=16,width=8 --workdir=runs/wrn-16-8

Arguments after ':' (comma separated): depth (6n+2: 20, 32, 44, 56, 110, 1202, ...),
residual (false = the plain twin), shortcut (A, B or C; default A, B for WRNs), preact, bottleneck,
width (K > 0: the Wide ResNet WRN-depth-K, depth 6n+4: 10, 16, 22, 28, 40, ...), dropout (WRNs:
dropout between the convs of a block), norm (batch; group; none: no normalisation, the convs get
biases), dataset. Other block types by name: ``--config.model.block=NAME`` (resnet_jax.models.BLOCKS).
Any field can then be overridden with ``--config.FIELD=VALUE``, e.g.
``--config.num_train_steps=2000 --config.data_dir=../shared/data/tfds``.

Recipe: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations; nets of 110 layers or more warm up at lr 0.01 until the training
error is below 80% (`warmup=None` picks this by depth). WRNs train with this recipe too, so they
compare with the paper's nets step for step (the WRN paper's own: 200 epochs, weight decay 5e-4, lr
divided by 5 at epochs 60/120/160, Nesterov momentum).
"""
from ml_collections import config_dict

from resnet_jax.config_args import parse_config_arg

# What `python -m resnet_jax.sweep wandb configs/cifar10.py --method random|bayes` searches
# (W&B parameter specs over top-level config fields; docs/wandb-sweeps.md).
SEARCH_SPACE = {
    "learning_rate": {"distribution": "log_uniform_values", "min": 0.02, "max": 0.5},
    "weight_decay": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
}
ARG_DEFAULTS = dict(depth=20, residual=True, shortcut="", preact=False, bottleneck=False, width=0, dropout=0.0,
                    norm="batch", dataset="cifar10")
NORM_SUFFIX = {"batch": "", "group": "-gn", "none": "-nobn"}


def run_name(depth: int, residual: bool, preact: bool = False, width: int = 0, dropout: float = 0.0,
             norm: str = "batch", **_) -> str:
    """The name a run has in sweeps, plots and W&B, e.g. plain-56, resnet-110, preact-resnet-164,
    wrn-16-8, plain-wrn-16-8, wrn-28-10-dropout0.3, plain-20-nobn."""
    if width:
        name = f"{'' if residual else 'plain-'}wrn-{depth}-{width}" + (f"-dropout{dropout:g}" if dropout else "")
    elif not residual:
        name = f"plain-{depth}"
    else:
        name = f"{'preact-' if preact else ''}resnet-{depth}"
    return name + NORM_SUFFIX[norm]


def check_args(a: dict) -> None:
    if a["norm"] not in NORM_SUFFIX:
        raise ValueError(f"config argument norm={a['norm']!r}: valid: {', '.join(NORM_SUFFIX)}")
    if a["width"] < 0:
        raise ValueError(f"config argument width={a['width']}: expected 0 (a ResNet) or K >= 1 (WRN-depth-K)")
    if a["dropout"] and not a["width"]:
        raise ValueError("config argument dropout needs width=K: dropout is part of the WRN block")
    if a["width"] and (a["preact"] or a["bottleneck"]):
        raise ValueError("config argument width=K (a WRN: pre-activation basic blocks) takes no preact/bottleneck")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    a = parse_config_arg(arg, ARG_DEFAULTS)
    check_args(a)
    c = config_dict.ConfigDict()
    c.name = run_name(**a)

    # Data.
    c.dataset = a["dataset"]                        # cifar10 | cifar100
    c.data_dir = config_dict.placeholder(str)       # TFDS data dir; None = TFDS's default (~/tensorflow_datasets)
    c.val_split = False                             # True: train on 90% (45k), report the held-out 10% (5k) as test/
    c.seed = 0

    # Model (see resnet_jax.models.from_config).
    c.model = config_dict.ConfigDict()
    c.model.family = "wrn" if a["width"] else "cifar"
    c.model.depth = a["depth"]
    c.model.residual = a["residual"]
    c.model.shortcut = a["shortcut"].upper() or ("B" if a["width"] else "A")
    if a["width"]:                                   # WRN-depth-width: the "wide" block (pre-activation)
        c.model.widen_factor = a["width"]
        c.model.dropout_rate = a["dropout"]
    else:                                            # the block of the paper's CIFAR nets: basic, bottleneck, preact*
        c.model.preact = a["preact"]
        c.model.bottleneck = a["bottleneck"]
    c.model.block = config_dict.placeholder(str)     # None: the family's block (above); else a name of models.BLOCKS
    if a["norm"] != "batch":                         # (absent = batch norm: the config of runs made before norm existed)
        c.model.norm = a["norm"]
    c.model.zero_init_residual = False
    c.model.dtype = "float32"                        # bfloat16 on GPU/TPU: bf16 compute, f32 params and BN stats
    c.model.bn_group_size = 0                        # 0: BN statistics over the global batch; 64: the paper's 2 GPUs x 64
    c.model.scan = config_dict.placeholder(bool)     # None: by depth (nn.scan over blocks for very deep nets)

    # Optimisation (durations in iterations, as the paper counts them).
    c.batch_size = 128                               # global, over all devices and hosts
    c.num_train_steps = 64_000
    c.learning_rate = 0.1
    c.schedule = "step"                              # step (the paper's) | cosine (resnet_jax/optim.py)
    c.lr_boundaries = (32_000, 48_000)               # step: lr divided by 1 / lr_decay at these iterations
    c.lr_decay = 0.1
    c.linear_warmup_steps = 0                        # > 0: a linear ramp to the schedule over these steps
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.warmup = config_dict.placeholder(bool)         # None: on for depth >= 110, as in the paper
    c.warmup_learning_rate = 0.01
    c.warmup_until_error = 0.8

    # Fine-tuning from a trained run (see resnet_jax/finetune.py).
    # init_from: a run's workdir, WORKDIR/checkpoints/STEP, or a weights file (.safetensors, .pth)
    c.init_from = config_dict.placeholder(str)
    c.freeze_backbone = False                        # True: linear probe (only the new head trains)
    c.backbone_learning_rate = config_dict.placeholder(float)  # None: same as learning_rate

    # Bookkeeping.
    c.log_every = 100
    c.eval_every = 1000
    c.eval_batch_size = 1000
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.diagnostics_every = 1000                       # layer responses, gradient flow, branch ratios; 0 = off
    c.diagnostics_batch = 128                        # measured on the first N training / test images
    c.resume = True

    # Weights & Biases (mode None: $WANDB_MODE, else online with an API key, else offline).
    c.wandb = config_dict.ConfigDict()
    c.wandb.mode = config_dict.placeholder(str)
    c.wandb.project = "resnet-degradation"
    c.wandb.entity = config_dict.placeholder(str)
    c.wandb.group = config_dict.placeholder(str)     # the sweep's name; set by sweeps
    c.wandb.job_type = config_dict.placeholder(str)  # the net (plain-56, ...): W&B aggregates the seeds of a job type
    c.wandb.tags = ()
    return c
