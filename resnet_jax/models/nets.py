"""The families: CIFAR nets (He et al. 2016, section 4.2), ImageNet nets (Table 1) and Wide ResNets.

* ``CifarResNet``: 3x3 conv stem, three stages of ``n`` blocks with 16/32/64 filters on 32/16/8
  maps, global average pool, FC. Depth ``6n+2`` with two-conv blocks, ``9n+2`` with bottleneck
  blocks; pre-activation blocks (He et al. 2016b) drop the stem's BN-ReLU and end with BN-ReLU.
* ``ImageNetResNet``: 7x7/2 conv stem + 3x3/2 max-pool, four stages; 18/34 with basic blocks,
  50/101/152 with bottleneck blocks.
* ``WideResNet`` (Zagoruyko & Komodakis 2016): WRN-d-k, a pre-activation CIFAR net of depth
  ``6n+4`` whose stages are ``k`` times wider (16k/32k/64k after a 16-channel stem), projection
  shortcuts where the shape changes, optional dropout in the blocks.

One depth -> stages table per family and one loop over the stages build every net; the block type
is chosen by name (``block``, see ``blocks.BLOCKS``) and the normalisation too (``norm``: "batch",
"group" or "none"). ``block_modules()`` states the block modules in network order, exactly as the
net builds them (``resnet_jax.models.order`` and ``resnet_jax.diagnostics`` read it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from resnet_jax.models.blocks import SHORTCUTS, BlockBase, block_name, check_block
from resnet_jax.models.cpu_conv import canonical_conv_general_dilated
from resnet_jax.models.norm import NORMS, make_norm, normalize

ModuleDef = Any

# --------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------

#: He et al. (2015) normal init, std = sqrt(2 / fan_out), fan_out = k*k*out_channels.
#: Both fans keep the signal's scale through a ReLU net (forward with fan_in,
#: backward with fan_out, He et al. 2015 eqs. 10 and 14); fan_out is what the
#: authors' Torch code (fb.resnet.torch), the WRN code and torchvision use, so our
#: nets start where the published reproductions start. With BN after every conv the
#: forward scale is normalised away anyway; what the choice sets is the weight
#: norm, i.e. the effective learning rate under weight decay. Untruncated
#: normal, as in the paper. Nets with ``norm="none"`` keep it (so "without BN" changes
#: one thing); their forward scale is then constant within a stage and shrinks by
#: sqrt(fan_in / fan_out) = 1/sqrt(2) where the width doubles, whatever the depth.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: The classifier keeps flax's default (LeCun normal, variance 1/fan_in, zero bias),
#: close to Torch's default Linear init that the reference code leaves in place.
dense_init = nn.initializers.lecun_normal()

# --------------------------------------------------------------------------
# Depth -> stages
# --------------------------------------------------------------------------

IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
IMAGENET_BOTTLENECK = {18: False, 34: False, 50: True, 101: True, 152: True}


def cifar_stages(depth: int, bottleneck: bool = False) -> tuple[int, int, int]:
    """Blocks per stage of a CIFAR net: depth = 6n+2 (basic) or 9n+2 (bottleneck), n >= 1."""
    per_block = 3 if bottleneck else 2
    n, rem = divmod(depth - 2, 3 * per_block)
    if rem or n < 1:
        k = 3 * per_block
        examples = ", ".join(str(k * m + 2) for m in (1, 2, 3, 5, 7, 9, 18)) + (", 1001" if bottleneck else ", 1202")
        kind = "bottleneck" if bottleneck else "basic-block"
        raise ValueError(
            f"invalid CIFAR {kind} depth {depth}: must be {k}n+2 with n >= 1 (e.g. {examples})"
        )
    return (n, n, n)


def imagenet_stages(depth: int) -> tuple[int, ...]:
    if depth not in IMAGENET_STAGES:
        raise ValueError(f"invalid ImageNet depth {depth}: valid depths are {sorted(IMAGENET_STAGES)}")
    return IMAGENET_STAGES[depth]


def wrn_stages(depth: int) -> tuple[int, int, int]:
    """Blocks per group of WRN-d-k: d = 6n+4, n >= 1 (the WRN paper counts the 1x1 shortcut convs)."""
    n, rem = divmod(depth - 4, 6)
    if rem or n < 1:
        raise ValueError(f"invalid WRN depth {depth}: must be 6n+4 with n >= 1 (e.g. 10, 16, 22, 28, 40)")
    return (n, n, n)


#: ``scan=None`` scans the blocks of nets with more blocks than this. Measured on
#: XLA CPU (training step, docs_models_note.md): scanned compile is flat in depth
#: (~3 s) while unrolled grows superlinearly (ResNet-110 ~10 s, depth 218 ~48 s,
#: ResNet-1202 not within 10 min); with ``canonical_conv_grad`` the scanned step
#: is 5-13% slower up to ResNet-56 (27 blocks) and faster from ResNet-110 (54
#: blocks) on. Deliberately the same on every backend, so a net's parameter
#: layout (and a checkpoint) does not depend on where it runs; GPUs are not
#: measured yet: force ``scan`` there if they disagree.
SCAN_AUTO_MAX_UNROLLED_BLOCKS = 30


@dataclasses.dataclass(frozen=True)
class BlockModule:
    """One block module of a net, in network order. ``blocks``: the names of the blocks it holds;
    a ``scanned`` module holds blocks 2..n of a stage, their variables stacked on axis 0 in order."""

    name: str
    blocks: tuple[str, ...]
    features: int
    strides: int
    scanned: bool = False


def _scan_body(block, x, _):
    return block(x), None


# --------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------


class _ResNetBase(nn.Module):
    """Fields and the stages shared by all families."""

    depth: int
    num_classes: int = 10
    residual: bool = True
    shortcut: str = "A"
    width: int = 16
    dtype: Any = jnp.float32
    bn_group_size: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = False
    stride_in_3x3: bool = False
    scan: bool | None = None
    canonical_conv_grad: bool | None = None  # None: on for the CPU backend (see canonical_conv_general_dilated)
    conv_cls: ModuleDef = nn.Conv  # an nn.Conv (sub)class: a hook for other conv implementations
    block: str | None = None  # a name of blocks.BLOCKS; None: the family's default
    norm: str = "batch"  # "batch" | "group" | "none" (no normalisation: every conv gets a bias)

    stage_strides: ClassVar[tuple[int, ...]] = ()

    # subclasses define stages(), block_name and __call__ (stem, stages, head)
    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        self.stages()  # validates depth (and block)
        _ = self.block_class  # validates block
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        jnp.dtype(self.dtype)  # raises TypeError on a bad dtype
        if self.bn_group_size is not None and (not isinstance(self.bn_group_size, int) or self.bn_group_size < 0):
            raise ValueError(f"bn_group_size must be None or an int >= 0, got {self.bn_group_size!r}")
        if self.scan not in (None, True, False):
            raise ValueError(f"scan must be None (auto), True or False, got {self.scan!r}")
        super().__post_init__()

    @property
    def block_class(self) -> type[BlockBase]:
        return check_block(self.block_name)

    @property
    def use_scan(self) -> bool:
        if self.scan is None:
            return sum(self.stages()) > SCAN_AUTO_MAX_UNROLLED_BLOCKS
        return self.scan

    def stage_features(self, stage: int) -> int:
        """Width of the convs of stage ``stage`` (1-based) of the blocks."""
        return self.width * 2 ** (stage - 1)

    def block_fields(self, train: bool) -> dict:
        """Fields of the blocks beyond the ones every block has."""
        return {}

    def block_modules(self) -> tuple[BlockModule, ...]:
        """The block modules in network order: stage{i}_block1, then blocks 2..n unrolled
        (stage{i}_block{b}) or scanned as one module (stage{i}_blocks). ``run_stages`` builds these."""
        modules = []
        for i, (n, strides) in enumerate(zip(self.stages(), self.stage_strides), 1):
            features = self.stage_features(i)
            modules.append(BlockModule(f"stage{i}_block1", (f"stage{i}_block1",), features, strides))
            rest = tuple(f"stage{i}_block{b}" for b in range(2, n + 1))
            if rest and self.use_scan:
                modules.append(BlockModule(f"stage{i}_blocks", rest, features, 1, scanned=True))
            else:
                modules += [BlockModule(name, (name,), features, 1) for name in rest]
        return tuple(modules)

    def parts(self, train: bool):
        dtype = jnp.dtype(self.dtype)
        conv = functools.partial(self.conv_cls, use_bias=self.norm == "none", dtype=dtype, kernel_init=conv_init)
        canonical = self.canonical_conv_grad
        if canonical is None:  # auto: on for XLA CPU only; GPUs/TPUs have their own conv backward
            canonical = jax.default_backend() == "cpu"
        if canonical:
            conv = functools.partial(conv, conv_general_dilated=canonical_conv_general_dilated)
        norm = make_norm(self.norm, train=train, dtype=dtype, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                         bn_group_size=self.bn_group_size)
        return conv, norm

    def run_stages(self, x, conv, norm, train: bool):
        block = functools.partial(
            self.block_class,
            conv=conv,
            norm=norm,
            residual=self.residual,
            shortcut=self.shortcut,
            stride_in_3x3=self.stride_in_3x3,
            zero_init_residual=self.zero_init_residual,
            **self.block_fields(train),
        )
        for m in self.block_modules():
            module = block(m.features, strides=m.strides, name=m.name)
            if m.scanned:
                # Blocks 2..n of a stage are identical: one traced body, variables (and sown
                # intermediates) stacked on a leading axis; each block draws its own dropout mask.
                scanned = nn.scan(
                    _scan_body,
                    variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                    split_rngs={"params": True, "dropout": True},
                    length=len(m.blocks),
                )
                x, _ = scanned(module, x, None)
            else:
                x = module(x)
        return x

    def head(self, x):
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=dense_init, name="fc")(x)


class CifarResNet(_ResNetBase):
    """CIFAR-10 nets of section 4.2 (and He et al. 2016b with pre-activation blocks).

    depth = 6n+2 (two-conv blocks) or 9n+2 (bottleneck blocks, widths 16/32/64 -> outputs
    64/128/256, e.g. ResNet-164 and -1001). Shortcut 'A' by default, as in the paper's CIFAR nets.

    The block: ``block`` by name (``blocks.BLOCKS``), or, with ``block=None``, the flags of
    earlier configs: ``preact`` / ``bottleneck`` -> "basic", "bottleneck", "preact" or
    "preact_bottleneck". Flags set to True must agree with a named block.
    ``widen_factor`` multiplies the stage widths (not the stem's); ``dropout_rate`` needs a block
    with dropout ("wide").

    ``scan``: True = ``nn.scan`` over the identical blocks 2..n of each stage
    (one traced body: compile time flat in depth), False = unrolled, None =
    auto by the number of blocks (``SCAN_AUTO_MAX_UNROLLED_BLOCKS`` = 30):
    unrolled up to ResNet-56 (27 blocks), scanned from ResNet-110 (54) on,
    whatever the backend. Scanned and unrolled nets compute the same function; their
    params differ only in layout (``stage{i}_blocks`` holds blocks 2..n stacked
    on axis 0, as do the sown intermediates).

    ``canonical_conv_grad``: None = auto (on for the CPU backend) uses
    ``canonical_conv_general_dilated``, without which the scanned backward on
    XLA CPU is ~10x slower.
    """

    num_classes: int = 10
    width: int = 16
    shortcut: str = "A"
    bottleneck: bool = False
    preact: bool = False
    widen_factor: int = 1
    dropout_rate: float = 0.0

    stage_strides = (1, 2, 2)

    def __post_init__(self):
        if not isinstance(self.widen_factor, int) or self.widen_factor < 1:
            raise ValueError(f"widen_factor must be an int >= 1, got {self.widen_factor!r}")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.dropout_rate and "dropout_rate" not in self.block_class.__dataclass_fields__:
            raise ValueError(f"dropout_rate needs a block with dropout (block='wide'), got block={self.block_name!r}")
        super().__post_init__()

    @property
    def block_name(self) -> str:
        return self.block or block_name(self.preact, self.bottleneck)

    @property
    def block_class(self) -> type[BlockBase]:
        return check_block(self.block_name, self.preact, self.bottleneck)

    def stages(self):
        return cifar_stages(self.depth, self.block_class.bottleneck)

    def stage_features(self, stage: int) -> int:
        return self.width * self.widen_factor * 2 ** (stage - 1)

    def block_fields(self, train: bool) -> dict:
        return {"dropout_rate": self.dropout_rate, "deterministic": not train} if self.dropout_rate else {}

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.parts(train)
        pre_activation = self.block_class.pre_activation
        x = x.astype(jnp.dtype(self.dtype))
        x = conv(self.width, (3, 3), padding=[(1, 1), (1, 1)], name="stem_conv")(x)
        if not pre_activation:  # a pre-act net's first unit starts with BN-ReLU itself
            x = normalize(norm, x, "stem_bn")
            self.sow("intermediates", "stem_response", x)
            x = nn.relu(x)
        x = self.run_stages(x, conv, norm, train)
        if pre_activation:
            x = nn.relu(normalize(norm, x, "final_bn"))
        return self.head(x)


class WideResNet(CifarResNet):
    """WRN-d-k (Zagoruyko & Komodakis 2016, and the authors' code): depth d = 6n+4, a 3x3 stem of
    16 channels, three groups of n "wide" blocks (pre-activation, two 3x3 convs, optional dropout
    between them) of widths 16k/32k/64k (``widen_factor`` = k) with strides 1/2/2, a 1x1 projection
    shortcut where the shape changes (shortcut 'B'; no BN, on the pre-activated input), final BN-ReLU,
    global average pool, FC. ``residual=False``: the plain twin, with no shortcut at all.
    """

    shortcut: str = "B"

    @property
    def block_name(self) -> str:
        return self.block or "wide"

    def stages(self):
        if self.block_class.bottleneck:
            raise ValueError(f"WRN depth 6n+4 counts two-conv blocks (wide, preact, basic), got block={self.block_name!r}")
        return wrn_stages(self.depth)


class ImageNetResNet(_ResNetBase):
    """ImageNet nets of Table 1: 18/34 basic, 50/101/152 bottleneck (v1: stride on
    the first 1x1; ``stride_in_3x3=True`` for v1.5). 7x7/2 stem + 3x3/2 max-pool.
    Shortcut 'B' by default, as torchvision. ``block``: None = by depth (Table 1), or any
    post-activation block. ``scan`` and ``canonical_conv_grad`` as in ``CifarResNet``
    (auto: 18/34/50 unrolled, 101/152 scanned).
    """

    num_classes: int = 1000
    width: int = 64
    shortcut: str = "B"
    preact = False  # a class constant, not a field

    stage_strides = (1, 2, 2, 2)

    @property
    def block_name(self) -> str:
        return self.block or ("bottleneck" if IMAGENET_BOTTLENECK[self.depth] else "basic")

    @property
    def block_class(self) -> type[BlockBase]:
        cls = check_block(self.block_name)
        if cls.pre_activation:
            raise ValueError(f"ImageNet nets take post-activation blocks (basic, bottleneck), got block={self.block!r}")
        return cls

    @property
    def bottleneck(self) -> bool:
        return self.block_class.bottleneck

    def stages(self):
        return imagenet_stages(self.depth)

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.parts(train)
        x = x.astype(jnp.dtype(self.dtype))
        x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
        x = normalize(norm, x, "stem_bn")
        self.sow("intermediates", "stem_response", x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = self.run_stages(x, conv, norm, train)
        return self.head(x)
