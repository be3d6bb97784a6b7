"""A convolution whose gradients XLA CPU runs fast inside loops (a backend workaround, not architecture).

The nets pass ``canonical_conv_general_dilated`` to ``nn.Conv`` on the CPU backend
(``canonical_conv_grad=None``, the default); it computes exactly what ``lax.conv_general_dilated``
computes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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
    # transpose below. Exact, and 1.31x faster per ResNet-56 step (benchmarks/, docs/performance.md).
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
