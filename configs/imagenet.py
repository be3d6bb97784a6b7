"""One ImageNet run with the paper's recipe (He et al. 2016, section 3.4), streamed from TFDS.

    python -m resnet_jax.main --config=configs/imagenet.py:depth=34,residual=false --workdir=runs/plain-34

Arguments after ':' (comma separated): depth (18, 34, 50, 101, 152), residual (false = the plain
twin), shortcut (A, B or C; default A for 18/34 as in Fig. 4, B for 50+ as in Table 3), dataset
(imagenet2012; imagenette for small trials; any TFDS dataset with a JPEG 'image' and a 'label'
with --config.num_classes=N and --config.train_examples=N).

imagenet2012 needs a manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
in DATA_DIR/downloads/manual (or --config.manual_dir) and pass --config.data_dir=DATA_DIR; the
first run prepares the dataset (hours, once). Or point data_dir at an already prepared copy.

Recipe: SGD momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 at epochs 30 and 60,
90 epochs; bf16 compute (f32 parameters and BN statistics). The paper divides "when the error
plateaus" and trains "up to 60e4 iterations"; its Fig. 4 curves drop at ~15e4 and ~30e4
iterations, which are epochs 30 and 60 at batch 256 (5,004 iterations per epoch), and are flat
after ~40e4: we fix the drops there and stop at 90 epochs (45e4 iterations); --config.num_epochs=120
gives the paper's 60e4. Scale augmentation (shorter side in [256, 480]), 224 crop, flip, mean
subtraction (per channel: --config.normalization=mean) and PCA colour augmentation; evaluation on
the 224 centre crop (--config.ten_crop=true for the paper's 10-crop testing). Durations in epochs:
steps follow from train_examples and batch_size (changing --config.batch_size keeps the schedule in
epochs).

Fine-tuning published weights: --config.init_from=resnet50.safetensors (or .pth) with the net they
fit: torchvision's 18/34 have shortcut B (depth=34,shortcut=B; ours default to A) and its 50/101/152
are v1.5 (--config.model.stride_in_3x3=true); --config.normalization=torchvision feeds them
(x/255 - mean) / std, as they were trained. A mismatch is refused with the setting to change.
"""
import pathlib

from ml_collections import config_dict

from resnet_jax.config_args import load_config_module, parse_config_arg

cifar10 = load_config_module(pathlib.Path(__file__).with_name("cifar10.py"))

ARG_DEFAULTS = {"depth": 34, "residual": True, "shortcut": "", "dataset": "imagenet2012"}
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "imagenette": 9_469, "imagenet2012_subset": 12_811}


def run_name(depth: int, residual: bool, shortcut: str = "", **_) -> str:
    """plain-34, resnet-34; a shortcut other than the default gets a suffix: resnet-34-B."""
    name = cifar10.run_name(depth, residual)
    return f"{name}-{shortcut}" if residual and shortcut and shortcut != default_shortcut(depth) else name


def default_shortcut(depth: int) -> str:
    return "A" if depth < 50 else "B"


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    a = parse_config_arg(arg, ARG_DEFAULTS)
    shortcut = (a["shortcut"] or default_shortcut(a["depth"])).upper()
    c = cifar10.get_config()  # bookkeeping, fine-tuning and W&B fields as for CIFAR; the rest below
    del c.val_split, c.lr_boundaries
    c.name = run_name(a["depth"], a["residual"], shortcut)

    # Data: streamed by tf.data on each host (resnet_jax/data/tfds_stream.py).
    c.dataset = a["dataset"]
    c.manual_dir = config_dict.placeholder(str)     # imagenet2012's tar files; None = DATA_DIR/downloads/manual
    c.num_classes = config_dict.placeholder(int)    # None: known for imagenet2012 / imagenette
    c.train_split = "train"
    c.test_split = "validation"
    c.train_examples = TRAIN_EXAMPLES.get(a["dataset"], 0)  # sets the epoch -> step conversion
    c.shuffle_buffer = 10_000                        # encoded images per host (~1 GB for ImageNet)
    c.image_size = 224
    c.train_resize = (256, 480)                      # shorter side random in this range, then a random crop
    c.eval_resize = 256                              # shorter side, then the centre crop
    c.color_augmentation = True                      # AlexNet's PCA lighting noise, on the devices
    c.ten_crop = False                               # 10-crop testing (corners + centre, and flips)
    c.normalization = "mean"                         # x/255 - per-channel mean (ours); "torchvision": then / std

    # Model (see resnet_jax.models.ImageNetResNet).
    c.model.family = "imagenet"
    c.model.depth = a["depth"]
    c.model.residual = a["residual"]
    c.model.shortcut = shortcut
    del c.model.preact, c.model.bottleneck           # fixed by depth for ImageNet nets
    c.model.stride_in_3x3 = False                    # True: ResNet v1.5 bottlenecks (torchvision)
    c.model.dtype = "bfloat16"                       # float32 on CPU is faster; bf16 on GPU/TPU

    # Optimisation: durations in epochs, converted to steps.
    c.batch_size = 256
    c.num_epochs = 90
    c.steps_per_epoch = c.get_ref("train_examples") // c.get_ref("batch_size")
    c.num_train_steps = c.get_ref("num_epochs") * c.get_ref("steps_per_epoch")
    c.lr_boundary_epochs = (30, 60)
    c.warmup = False                                 # the CIFAR warm-up is for 110+ layers on CIFAR only

    # Bookkeeping.
    c.log_every = 500
    # (`* 1`: a new reference, so that overriding one of these leaves steps_per_epoch alone)
    c.eval_every = c.get_ref("steps_per_epoch") * 1  # validation error once per epoch (Fig. 4)
    c.eval_batch_size = 512
    c.checkpoint_every = 2500
    c.diagnostics_every = c.get_ref("steps_per_epoch") * 1
    c.diagnostics_batch = 64
    return c
