"""Plain and residual networks of He et al. (2016), in Flax linen.

Two families share one block and one depth -> stages table:

* ``CifarResNet`` (paper section 4.2): 3x3 conv stem, three stages of ``n``
  blocks with 16/32/64 filters on 32/16/8 maps, global average pool, FC.
  Depth ``6n+2`` with basic blocks, ``9n+2`` with bottleneck blocks; the
  pre-activation units of He et al. (2016b, "Identity Mappings") as an option.
* ``ImageNetResNet`` (paper Table 1): 7x7/2 conv stem + 3x3/2 max-pool, four
  stages; 18/34 with basic blocks, 50/101/152 with bottleneck blocks.

A plain net and its residual twin differ only in the shortcut: ``Block`` has a
``residual`` flag, and a plain block has no shortcut at all (so a plain net has
exactly the parameters of the option-A ResNet). Conv, norm and activation are
injected into the block, as in the flax ImageNet example.

Entry points: ``create_model(name, num_classes=..., **overrides)``,
``MODEL_NAMES``, ``count_params``, ``count_macs``, ``describe``;
``python -m resnet_jax.models`` prints layers / parameters / multiply-adds of
every named model. This module imports nothing else from the project.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.extend
import jax.numpy as jnp
from flax import linen as nn

ModuleDef = Any

# --------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------

#: He et al. (2015) normal init, std = sqrt(2 / fan_out), fan_out = k*k*out_channels.
#: Both fans keep the signal's scale through a ReLU net (forward with fan_in,
#: backward with fan_out, He et al. 2015 eqs. 10 and 14); fan_out is what the
#: authors' Torch code (fb.resnet.torch) and torchvision use, so our nets start
#: where the published reproductions start. With BN after every conv the
#: forward scale is normalised away anyway; what the choice sets is the weight
#: norm, i.e. the effective learning rate under weight decay. Untruncated
#: normal, as in the paper.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: The classifier keeps flax's default (LeCun normal, variance 1/fan_in, zero bias),
#: close to Torch's default Linear init that the reference code leaves in place.
dense_init = nn.initializers.lecun_normal()


# --------------------------------------------------------------------------
# Convolution whose gradients XLA CPU runs fast inside loops
# --------------------------------------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(x, w, padding, precision):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC, precision=precision)


def _conv_stride1_fwd(x, w, padding, precision):
    return _conv_stride1(x, w, padding, precision), (x, w)


def _conv_stride1_bwd(padding, precision, res, dy):
    x, w = res
    # d/dx: correlate dy with the flipped kernel, in/out swapped (HWIO again).
    dx_pad = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:2], padding)]
    w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    dx = jax.lax.conv_general_dilated(dy, w_t, (1, 1), dx_pad, dimension_numbers=_NHWC, precision=precision)
    # d/dw: channels as the batch, the batch as the contracted feature, dy as the kernel.
    # An identity matmul first: XLA CPU runs it as a library call, so it cannot fuse the
    # recomputation of x's producers (BN, ReLU, shortcut additions of earlier blocks) into the
    # transpose below. Exact, and 1.31x faster per ResNet-56 step (benchmarks/, docs in README).
    x = jnp.einsum("nhwc,cd->nhwd", x, jnp.eye(x.shape[-1], dtype=x.dtype))
    x_t = jnp.transpose(x, (3, 1, 2, 0))  # (Cin, H, W, N)
    dy_t = jnp.transpose(dy, (1, 2, 0, 3))  # (H', W', N, Cout)
    dw = jax.lax.conv_general_dilated(x_t, dy_t, (1, 1), padding, dimension_numbers=_NHWC, precision=precision)
    return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)  # (kh, kw, Cin, Cout)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def canonical_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                   dimension_numbers=None, feature_group_count=1, precision=None):
    """``lax.conv_general_dilated`` whose backward convs are all NHWC x HWIO -> NHWC.

    Why: XLA CPU runs a conv fast (Eigen) only in that canonical form. Outside
    loops it rewrites JAX's backward convs (kernel in/out swapped, batch and
    channels swapped) into it, but not inside a while loop, i.e. ``nn.scan``:
    there they fall back to a naive loop nest, ~10x slower (the scanned
    ResNet-110 step was 9x slower than the unrolled one; with this VJP it is
    on par). Used for 2-D stride-1, undilated, ungrouped convs with explicit
    padding (all the convs in scanned blocks); an unpadded 1x1 one is a plain
    matmul (~1.5x faster training step of bottleneck blocks on XLA CPU, in and
    out of loops). Anything else goes to ``lax.conv_general_dilated`` unchanged.
    """
    simple = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and not isinstance(padding, str)
        and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == 1
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if simple and rhs.shape[:2] == (1, 1) and all(tuple(p) == (0, 0) for p in padding):
        return jnp.einsum("nhwc,cd->nhwd", lhs, rhs[0, 0], precision=precision)
    if simple:
        return _conv_stride1(lhs, rhs, tuple(tuple(p) for p in padding), precision)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
    )


# --------------------------------------------------------------------------
# Batch norm with optional group statistics
# --------------------------------------------------------------------------


class BatchNorm(nn.Module):
    """Batch norm whose batch statistics can cover groups of the batch.

    ``group_size=None`` (or 0): statistics over the whole (global) batch, the same
    as ``flax.linen.BatchNorm``; under ``jax.jit`` with the batch sharded over
    devices the mean over the batch axis is already global, no ``axis_name``.
    ``group_size=N``: each run of N consecutive examples is normalised with its
    own statistics, as on the paper's 2 GPUs x 64 images; the running averages
    are updated with the mean of the groups' statistics. A batch smaller than N
    is one group.

    Statistics and the normalisation are computed in float32 whatever the
    compute ``dtype``; parameters ``scale``/``bias`` and ``batch_stats``
    ``mean``/``var`` are float32 and named as in flax. The running variance is
    the biased batch variance, as in flax.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    group_size: int | None = None
    dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)

        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            y = x32 * mul + (bias - ra_mean.value * mul)
            return y.astype(self.dtype)

        n = x.shape[0]
        g = n if not self.group_size or self.group_size >= n else self.group_size
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of bn_group_size {g}")
        xg = x32.reshape((n // g, g) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))  # everything but the group and channel axes
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)  # two-pass: no cancellation
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (xg * mul + (bias - mean * mul)).reshape(x.shape)

        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(-1, c).mean(0)
            ra_var.value = m * ra_var.value + (1 - m) * var.reshape(-1, c).mean(0)
        return y.astype(self.dtype)


# --------------------------------------------------------------------------
# The block
# --------------------------------------------------------------------------

SHORTCUTS = ("A", "B", "C")


def _pad_shortcut(x, out_channels: int, strides: int):
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


class Block(nn.Module):
    """One unit: basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion).

    ``residual=False`` drops the shortcut and nothing else: the plain twin.
    Shortcut options (residual only): 'A' identity, or stride-2 subsample +
    zero-padded channels where the shape changes; 'B' identity, or 1x1 conv +
    BN projection where the shape changes; 'C' projection on every block.

    Post-activation (the paper): ``relu(bn(conv(...)) ... + shortcut)``, BN after
    every conv and before the ReLU. Pre-activation (He et al. 2016b):
    ``x + conv(relu(bn(... conv(relu(bn(x))))))``; a projection shortcut then
    takes the pre-activated input (no BN of its own), as in the authors' code.

    ``zero_init_residual`` (residual blocks only) zero-initialises the last BN
    scale of the branch (pre-activation: the last conv kernel), so every block
    starts as the identity. ``stride_in_3x3``: bottleneck v1.5 (the paper's v1
    strides in the first 1x1). Each layer's response (post-act: after BN,
    before ReLU/addition; pre-act: the conv output) is sown as
    ``intermediates/response`` and the block output as ``intermediates/output``;
    the residual branch F(x) (the value added to the shortcut) as
    ``intermediates/branch`` and the shortcut as ``intermediates/shortcut`` (a
    plain block: its last BN output, and the identity / option-A shortcut its
    residual twin would add).
    """

    features: int  # width of the 3x3 conv(s); the block outputs 4x this if bottleneck
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu
    strides: int = 1
    residual: bool = True
    shortcut: str = "A"
    bottleneck: bool = False
    preact: bool = False
    stride_in_3x3: bool = False
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x):
        s = self.strides
        out_ch = self.features * 4 if self.bottleneck else self.features
        if self.bottleneck:  # (features, kernel, stride)
            s1, s3 = (1, s) if self.stride_in_3x3 else (s, 1)
            layers = [(self.features, 1, s1), (self.features, 3, s3), (out_ch, 1, 1)]
        else:
            layers = [(self.features, 3, s), (self.features, 3, 1)]
        reshapes = s != 1 or x.shape[-1] != out_ch
        project = self.residual and (self.shortcut == "C" or (self.shortcut == "B" and reshapes))
        zero_last = self.residual and self.zero_init_residual

        def conv(i, f, k, st, **kw):
            return self.conv(f, (k, k), (st, st), padding=[(k // 2, k // 2)] * 2, name=f"conv{i}", **kw)

        if self.preact:
            h = self.act(self.norm(name="bn1")(x))
            shortcut_in = h if project else x
            y = h
            for i, (f, k, st) in enumerate(layers, 1):
                if i > 1:
                    y = self.act(self.norm(name=f"bn{i}")(y))
                zero = zero_last and i == len(layers)
                y = conv(i, f, k, st, **({"kernel_init": nn.initializers.zeros} if zero else {}))(y)
                self.sow("intermediates", "response", y)
        else:
            shortcut_in = x
            y = x
            for i, (f, k, st) in enumerate(layers, 1):
                y = conv(i, f, k, st)(y)
                last = i == len(layers)
                scale_init = nn.initializers.zeros if (zero_last and last) else nn.initializers.ones
                y = self.norm(name=f"bn{i}", scale_init=scale_init)(y)
                self.sow("intermediates", "response", y)
                if not last:
                    y = self.act(y)

        if self.residual:
            if project:
                sc = self.conv(out_ch, (1, 1), (s, s), padding=[(0, 0)] * 2, name="proj_conv")(shortcut_in)
                if not self.preact:
                    sc = self.norm(name="proj_bn")(sc)
            elif reshapes:
                sc = _pad_shortcut(shortcut_in, out_ch, s)
            else:
                sc = shortcut_in
            self._sow_branch(y, sc)
            y = y + sc.astype(y.dtype)
        elif self.is_mutable_collection("intermediates"):
            # Plain block: measured against what the residual twin would add (identity or option A).
            self._sow_branch(y, _pad_shortcut(x, out_ch, s) if reshapes else x)
        if not self.preact:
            y = self.act(y)
        self.sow("intermediates", "output", y)
        return y

    def _sow_branch(self, branch, shortcut):
        """The residual branch F(x) (what is added to the shortcut) and the shortcut itself, for
        ||F(x)|| / ||x|| (resnet_jax.diagnostics). Sown only when ``intermediates`` is mutable."""
        self.sow("intermediates", "branch", branch)
        self.sow("intermediates", "shortcut", shortcut)


def _scan_body(block, x, _):
    return block(x), None


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


#: ``scan=None`` scans the blocks of nets with more blocks than this. Measured on
#: XLA CPU (training step, docs_models_note.md): scanned compile is flat in depth
#: (~3 s) while unrolled grows superlinearly (ResNet-110 ~10 s, depth 218 ~48 s,
#: ResNet-1202 not within 10 min); with ``canonical_conv_grad`` the scanned step
#: is 5-13% slower up to ResNet-56 (27 blocks) and faster from ResNet-110 (54
#: blocks) on. Deliberately the same on every backend, so a net's parameter
#: layout (and a checkpoint) does not depend on where it runs; GPUs are not
#: measured yet: force ``scan`` there if they disagree.
SCAN_AUTO_MAX_UNROLLED_BLOCKS = 30


# --------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------


class _ResNetBase(nn.Module):
    """Fields and the stages shared by both families."""

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

    # subclasses define stages(), bottleneck, preact and __call__ (stem, stages, head)
    def __post_init__(self):
        self.stages()  # validates depth
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        jnp.dtype(self.dtype)  # raises TypeError on a bad dtype
        if self.bn_group_size is not None and (not isinstance(self.bn_group_size, int) or self.bn_group_size < 0):
            raise ValueError(f"bn_group_size must be None or an int >= 0, got {self.bn_group_size!r}")
        if self.scan not in (None, True, False):
            raise ValueError(f"scan must be None (auto), True or False, got {self.scan!r}")
        super().__post_init__()

    @property
    def use_scan(self) -> bool:
        if self.scan is None:
            return sum(self.stages()) > SCAN_AUTO_MAX_UNROLLED_BLOCKS
        return self.scan

    def parts(self, train: bool):
        dtype = jnp.dtype(self.dtype)
        conv = functools.partial(self.conv_cls, use_bias=False, dtype=dtype, kernel_init=conv_init)
        canonical = self.canonical_conv_grad
        if canonical is None:  # auto: on for XLA CPU only; GPUs/TPUs have their own conv backward
            canonical = jax.default_backend() == "cpu"
        if canonical:
            conv = functools.partial(conv, conv_general_dilated=canonical_conv_general_dilated)
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            group_size=self.bn_group_size or None,
            dtype=dtype,
        )
        return conv, norm

    def run_stages(self, x, conv, norm, strides):
        block = functools.partial(
            Block,
            conv=conv,
            norm=norm,
            residual=self.residual,
            shortcut=self.shortcut,
            bottleneck=self.bottleneck,
            preact=self.preact,
            stride_in_3x3=self.stride_in_3x3,
            zero_init_residual=self.zero_init_residual,
        )
        for i, (n, st) in enumerate(zip(self.stages(), strides), 1):
            feats = self.width * 2 ** (i - 1)
            x = block(feats, strides=st, name=f"stage{i}_block1")(x)
            if n == 1:
                continue
            if self.use_scan:
                # Blocks 2..n of a stage are identical: one traced body, params
                # (and sown intermediates) stacked on a leading axis of n-1.
                scanned = nn.scan(
                    _scan_body,
                    variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                    split_rngs={"params": True},
                    length=n - 1,
                )
                x, _ = scanned(block(feats, name=f"stage{i}_blocks"), x, None)
            else:
                for b in range(2, n + 1):
                    x = block(feats, name=f"stage{i}_block{b}")(x)
        return x

    def head(self, x):
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=dense_init, name="fc")(x)


class CifarResNet(_ResNetBase):
    """CIFAR-10 nets of section 4.2 (and He et al. 2016b with ``preact=True``).

    depth = 6n+2 (basic blocks) or 9n+2 (``bottleneck=True``, widths
    16/32/64 -> outputs 64/128/256, e.g. ResNet-164 and -1001). Shortcut 'A' by
    default, as in the paper's CIFAR nets.

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

    def stages(self):
        return cifar_stages(self.depth, self.bottleneck)

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.parts(train)
        x = x.astype(jnp.dtype(self.dtype))
        x = conv(self.width, (3, 3), padding=[(1, 1), (1, 1)], name="stem_conv")(x)
        if not self.preact:  # a pre-act net's first unit starts with BN-ReLU itself
            x = norm(name="stem_bn")(x)
            self.sow("intermediates", "stem_response", x)
            x = nn.relu(x)
        x = self.run_stages(x, conv, norm, strides=(1, 2, 2))
        if self.preact:
            x = nn.relu(norm(name="final_bn")(x))
        return self.head(x)


class ImageNetResNet(_ResNetBase):
    """ImageNet nets of Table 1: 18/34 basic, 50/101/152 bottleneck (v1: stride on
    the first 1x1; ``stride_in_3x3=True`` for v1.5). 7x7/2 stem + 3x3/2 max-pool.
    Shortcut 'B' by default, as torchvision. ``scan`` and
    ``canonical_conv_grad`` as in ``CifarResNet`` (auto: 18/34/50 unrolled,
    101/152 scanned).
    """

    num_classes: int = 1000
    width: int = 64
    shortcut: str = "B"
    preact = False  # class constants, not fields

    @property
    def bottleneck(self) -> bool:
        return IMAGENET_BOTTLENECK[self.depth]

    def stages(self):
        return imagenet_stages(self.depth)

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv, norm = self.parts(train)
        x = x.astype(jnp.dtype(self.dtype))
        x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
        x = norm(name="stem_bn")(x)
        self.sow("intermediates", "stem_response", x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = self.run_stages(x, conv, norm, strides=(1, 2, 2, 2))
        return self.head(x)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

FAMILIES = {"cifar": CifarResNet, "imagenet": ImageNetResNet}

_REGISTRY: dict[str, tuple[str, dict]] = {}
for _d in (20, 32, 44, 56, 110, 1202):
    _REGISTRY[f"resnet{_d}"] = ("cifar", dict(depth=_d, residual=True))
for _d in (20, 32, 44, 56, 110):
    _REGISTRY[f"plain{_d}"] = ("cifar", dict(depth=_d, residual=False))
for _d in IMAGENET_STAGES:
    _REGISTRY[f"resnet{_d}"] = ("imagenet", dict(depth=_d, residual=True))
    _REGISTRY[f"plain{_d}"] = ("imagenet", dict(depth=_d, residual=False))
# Pre-activation nets (He et al. 2016b). 110: option A, the twin of resnet110;
# 164/1001: bottleneck with projection shortcuts (no BN) as in the authors' code.
_REGISTRY["preact_resnet110"] = ("cifar", dict(depth=110, preact=True))
_REGISTRY["preact_resnet164"] = ("cifar", dict(depth=164, preact=True, bottleneck=True, shortcut="B"))
_REGISTRY["preact_resnet1001"] = ("cifar", dict(depth=1001, preact=True, bottleneck=True, shortcut="B"))

#: The registry names accepted by ``create_model`` (plus the families "cifar"/"imagenet").
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def create_model(name: str, *, num_classes: int | None = None, **overrides) -> nn.Module:
    """Build a registry model (``MODEL_NAMES``) or a family ("cifar"/"imagenet").

    ``overrides`` set any module field, e.g. ``create_model("resnet56",
    residual=False, shortcut="B")`` or ``create_model("cifar", depth=74)``.
    ``dtype`` may be a string ("float32", "bfloat16") or a jnp dtype. Raises
    ValueError (listing what is valid) for an unknown name or field or an
    impossible depth.
    """
    if name in FAMILIES:
        family, cfg = name, {}
    elif name in _REGISTRY:
        family, cfg = _REGISTRY[name]
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES + tuple(FAMILIES))}")
    cls = FAMILIES[family]
    valid = _fields(cls)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; valid fields: {', '.join(valid)}")
    cfg = {**cfg, **overrides}
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if "depth" not in cfg:
        raise ValueError(f"create_model({name!r}) needs depth=...")
    if "dtype" in cfg:
        try:
            cfg["dtype"] = jnp.dtype(cfg["dtype"])
        except TypeError as e:
            raise ValueError(f"invalid dtype {cfg['dtype']!r}: {e}") from None
    return cls(**cfg)


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


def count_params(params) -> int:
    """Number of scalars in a pytree (arrays or ``jax.ShapeDtypeStruct``s)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def default_input_shape(model) -> tuple[int, int, int, int]:
    return (1, 224, 224, 3) if isinstance(model, ImageNetResNet) else (1, 32, 32, 3)


def abstract_variables(model, input_shape=None):
    """``jax.eval_shape`` of ``model.init``: shapes only, nothing materialised."""
    input_shape = input_shape or default_input_shape(model)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _jaxpr_macs(jaxpr) -> int:
    """Multiply-adds of conv_general_dilated and dot_general in a jaxpr, through
    nested jaxprs (jit, custom_vjp, remat, ...) and scan (times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
        elif prim == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        mult = eqn.params.get("length", 1) if prim == "scan" else 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += mult * _jaxpr_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += mult * _jaxpr_macs(sub)
    return total


def count_macs(model, input_shape=None) -> int:
    """Multiply-adds per image of the forward pass (inference mode): every conv
    and dense layer, nothing else (BN, ReLU, additions, pooling are not counted,
    as in the paper's FLOPs). Analytic: read off the traced jaxpr, no compute."""
    input_shape = tuple(input_shape or default_input_shape(model))
    variables = abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _jaxpr_macs(closed.jaxpr) // input_shape[0]


def describe(name: str, **overrides) -> dict:
    """Layers, parameters and multiply-adds of a registry model (for Table 1 / 6)."""
    model = create_model(name, **overrides)
    params = count_params(abstract_variables(model)["params"])
    return dict(
        name=name,
        family="imagenet" if isinstance(model, ImageNetResNet) else "cifar",
        layers=model.depth,
        residual=model.residual,
        shortcut=model.shortcut if model.residual else "-",
        blocks=sum(model.stages()),
        scan=model.use_scan,
        params=params,
        macs=count_macs(model),
    )


def _main():
    print(f"{'model':<20} {'layers':>6} {'blocks':>6} {'scan':>5} {'shortcut':>8} {'params':>12} {'mult-adds':>10}")
    for name in MODEL_NAMES:
        d = describe(name)
        macs = f"{d['macs'] / 1e9:.2f}G" if d["macs"] >= 1e9 else f"{d['macs'] / 1e6:.1f}M"
        print(
            f"{name:<20} {d['layers']:>6} {d['blocks']:>6} {'yes' if d['scan'] else 'no':>5} {d['shortcut']:>8}"
            f" {d['params']:>12,} {macs:>10}",
            flush=True,
        )


if __name__ == "__main__":
    _main()
