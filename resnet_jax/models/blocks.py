"""Building blocks, chosen by name from ``BLOCKS``: basic, bottleneck, their pre-activation versions, wide.

Every block is a residual unit with a ``residual`` flag: ``residual=False`` drops the shortcut and
nothing else, so a plain net is its ResNet twin without shortcuts (and with option A, the same
parameters). Shortcut options (residual only): 'A' identity, or stride-2 subsample + zero-padded
channels where the shape changes; 'B' identity, or a 1x1 projection where the shape changes; 'C'
projection on every block.

A block type is an ordering (``PostActivationBlock``: conv-BN-ReLU as in He et al. 2016;
``PreActivationBlock``: BN-ReLU-conv as in He et al. 2016b) and its convs (``layers``): adding one is
one class here and one line in ``BLOCKS``. Conv and norm are injected (as in the flax ImageNet
example); ``norm=None`` is a block without normalisation (the net then gives its convs a bias).

What a block sows into ``intermediates`` (for ``resnet_jax.diagnostics``): each conv layer's
``response`` (post-activation: after BN, before ReLU / addition; pre-activation: the conv output), the
block ``output``, and, only when ``intermediates`` is mutable, the residual branch F(x) as ``branch``
and the ``shortcut`` it is added to. A plain block's ``branch`` is its last response and its
``shortcut`` the parameter-free one its residual twin would add (identity, or option A where the shape
changes), so ||F(x)|| / ||x|| has the same meaning in plain and residual nets, with or without BN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp
from flax import linen as nn

from resnet_jax.models.norm import normalize

ModuleDef = Any

SHORTCUTS = ("A", "B", "C")


class ConvLayer(NamedTuple):
    """One conv of a residual branch."""

    features: int
    kernel: int
    strides: int


def basic_layers(features: int, strides: int) -> tuple[ConvLayer, ...]:
    """Two 3x3 convs, the first one strided (He et al. 2016, Fig. 2)."""
    return ConvLayer(features, 3, strides), ConvLayer(features, 3, 1)


def bottleneck_layers(features: int, strides: int, stride_in_3x3: bool) -> tuple[ConvLayer, ...]:
    """1x1, 3x3, 1x1 with 4x expansion (Fig. 5 right); strided first 1x1 (v1) or 3x3 (v1.5)."""
    s1, s3 = (1, strides) if stride_in_3x3 else (strides, 1)
    return ConvLayer(features, 1, s1), ConvLayer(features, 3, s3), ConvLayer(4 * features, 1, 1)


def pad_shortcut(x, out_channels: int, strides: int):
    """Option A: subsample by ``strides`` and zero-pad the new channels (no parameters).

    ``x[:, ::2, ::2]`` picks the pixel a stride-2 3x3 conv with padding 1 (or a
    1x1 conv with padding 0) is centred on, so the two paths stay aligned.
    """
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = out_channels - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


class BlockBase(nn.Module):
    """What every block shares: its fields, the shortcut and the addition.

    ``zero_init_residual`` (residual blocks only) zero-initialises the branch's last BN scale (the
    last conv kernel where no BN follows it: pre-activation blocks, ``norm=None``), so every block
    starts as the identity. ``stride_in_3x3``: bottleneck v1.5.
    """

    features: int  # width of the branch's convs; the block outputs ``expansion`` times this
    conv: ModuleDef
    norm: ModuleDef | None
    act: Callable = nn.relu
    strides: int = 1
    residual: bool = True
    shortcut: str = "A"
    stride_in_3x3: bool = False
    zero_init_residual: bool = False

    pre_activation: ClassVar[bool] = False
    bottleneck: ClassVar[bool] = False

    def layers(self) -> tuple[ConvLayer, ...]:
        """The convs of the residual branch, in order."""
        raise NotImplementedError

    def residual_branch(self, x):
        """F(x) and what a projection shortcut takes as its input."""
        raise NotImplementedError

    def projection(self, x):
        """The 1x1 projection shortcut (options B and C)."""
        raise NotImplementedError

    def after_addition(self, y):
        """What follows the addition (post-activation blocks: the ReLU)."""
        return y

    def between_convs(self, y, index: int):
        """Applied to the input of conv ``index`` > 1 (after its ReLU): a hook, e.g. for dropout."""
        return y

    @nn.compact
    def __call__(self, x):
        branch, projection_input = self.residual_branch(x)
        if self.residual:  # the one difference between a plain block and its residual twin
            shortcut = self.shortcut_path(x, projection_input)
            self.sow_branch(branch, shortcut)
            y = branch + shortcut.astype(branch.dtype)
        else:
            if self.is_mutable_collection("intermediates"):
                self.sow_branch(branch, self.parameter_free_shortcut(x))
            y = branch
        y = self.after_addition(y)
        self.sow("intermediates", "output", y)
        return y

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1

    @property
    def zero_last(self) -> bool:
        return self.residual and self.zero_init_residual

    def reshapes(self, x) -> bool:
        return self.strides != 1 or x.shape[-1] != self.expansion * self.features

    def shortcut_path(self, x, projection_input):
        if self.shortcut == "C" or (self.shortcut == "B" and self.reshapes(x)):
            return self.projection(projection_input)
        return self.parameter_free_shortcut(x)

    def parameter_free_shortcut(self, x):
        """The identity, or option A where the shape changes."""
        return pad_shortcut(x, self.expansion * self.features, self.strides) if self.reshapes(x) else x

    def conv_layer(self, index: int, layer: ConvLayer, zero: bool = False):
        k, s = layer.kernel, layer.strides
        init = {"kernel_init": nn.initializers.zeros} if zero else {}
        return self.conv(layer.features, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, name=f"conv{index}", **init)

    def projection_conv(self, x):
        s = self.strides
        return self.conv(self.expansion * self.features, (1, 1), (s, s), padding=[(0, 0)] * 2, name="proj_conv")(x)

    def sow_branch(self, branch, shortcut):
        """F(x) and the shortcut, for ||F(x)|| / ||x|| (resnet_jax.diagnostics); sown only when
        ``intermediates`` is mutable."""
        self.sow("intermediates", "branch", branch)
        self.sow("intermediates", "shortcut", shortcut)


class PostActivationBlock(BlockBase):
    """He et al. (2016): ``relu(bn(conv(... relu(bn(conv(x))))) + shortcut(x))``: BN after every conv,
    before the ReLU; a projection shortcut is conv + BN."""

    def residual_branch(self, x):
        layers = self.layers()
        y = x
        for i, layer in enumerate(layers, 1):
            last = i == len(layers)
            if i > 1:
                y = self.between_convs(self.act(y), i)
            y = self.conv_layer(i, layer, zero=last and self.zero_last and self.norm is None)(y)
            scale_init = nn.initializers.zeros if last and self.zero_last else nn.initializers.ones
            y = normalize(self.norm, y, f"bn{i}", scale_init=scale_init)
            self.sow("intermediates", "response", y)
        return y, x

    def projection(self, x):
        return normalize(self.norm, self.projection_conv(x), "proj_bn")

    def after_addition(self, y):
        return self.act(y)


class PreActivationBlock(BlockBase):
    """He et al. (2016b): ``x + conv(relu(bn(... conv(relu(bn(x))))))``. A projection shortcut takes
    the pre-activated input and has no BN of its own, as in the authors' code."""

    pre_activation = True

    def residual_branch(self, x):
        layers = self.layers()
        preactivated = self.act(normalize(self.norm, x, "bn1"))
        y = preactivated
        for i, layer in enumerate(layers, 1):
            if i > 1:
                y = self.between_convs(self.act(normalize(self.norm, y, f"bn{i}")), i)
            y = self.conv_layer(i, layer, zero=i == len(layers) and self.zero_last)(y)
            self.sow("intermediates", "response", y)
        return y, preactivated

    def projection(self, x):
        return self.projection_conv(x)


class BasicBlock(PostActivationBlock):
    """Two 3x3 convs, conv-BN-ReLU (the paper's CIFAR nets, ResNet-18/34)."""

    def layers(self):
        return basic_layers(self.features, self.strides)


class BottleneckBlock(PostActivationBlock):
    """1x1, 3x3, 1x1 (4x expansion), conv-BN-ReLU (ResNet-50/101/152)."""

    bottleneck = True

    def layers(self):
        return bottleneck_layers(self.features, self.strides, self.stride_in_3x3)


class PreActBlock(PreActivationBlock):
    """Two 3x3 convs, BN-ReLU-conv (pre-activation ResNet-110)."""

    def layers(self):
        return basic_layers(self.features, self.strides)


class PreActBottleneckBlock(PreActivationBlock):
    """1x1, 3x3, 1x1 (4x expansion), BN-ReLU-conv (pre-activation ResNet-164 / -1001)."""

    bottleneck = True

    def layers(self):
        return bottleneck_layers(self.features, self.strides, self.stride_in_3x3)


class WideBlock(PreActBlock):
    """Wide ResNet block (Zagoruyko & Komodakis 2016): a pre-activation basic block with dropout
    before the second conv, after its BN-ReLU, as in the authors' code (paper: "between
    convolutions and after ReLU"). ``deterministic=False`` draws masks from the "dropout" rng."""

    dropout_rate: float = 0.0
    deterministic: bool = True

    def between_convs(self, y, index: int):
        return nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(y)


#: Block types by name (``model.block``).
BLOCKS: dict[str, type[BlockBase]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact": PreActBlock,
    "preact_bottleneck": PreActBottleneckBlock,
    "wide": WideBlock,
}


def block_name(preact: bool = False, bottleneck: bool = False) -> str:
    """The block of the flags the nets had before blocks had names (``preact``, ``bottleneck``)."""
    if preact:
        return "preact_bottleneck" if bottleneck else "preact"
    return "bottleneck" if bottleneck else "basic"


def check_block(name: str, preact: bool = False, bottleneck: bool = False) -> type[BlockBase]:
    """The block class of ``name``; flags set to True must agree with it."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; valid blocks: {', '.join(BLOCKS)}")
    cls = BLOCKS[name]
    if (preact and not cls.pre_activation) or (bottleneck and not cls.bottleneck):
        raise ValueError(f"block={name!r} contradicts preact={preact}, bottleneck={bottleneck}; "
                         f"drop the flags or use block={block_name(preact, bottleneck)!r}")
    return cls


def Block(features: int, *, preact: bool = False, bottleneck: bool = False, **fields) -> BlockBase:
    """The block the flags name (``Block(16, conv=..., norm=..., preact=True)``): the spelling of the
    single ``Block`` class the nets had before blocks had names."""
    return BLOCKS[block_name(preact, bottleneck)](features, **fields)
