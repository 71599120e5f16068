"""2-D convolution and transposed convolution: naive loops and im2col + GEMM.

Shape shorthand
---------------
N images, C input channels, F filters (output channels), H, W input height and
width, KH, KW kernel height and width, Ho, Wo output height and width,
K = C * KH * KW the length of one unrolled receptive field.

Layouts are torch's, so weights move over unchanged:

- ``conv2d``: x (N, C, H, W), w (F, C, KH, KW), b (F,), out (N, F, Ho, Wo) with
  ``Ho = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1`` (likewise Wo). As in every deep
  learning library this is a cross-correlation (the kernel is not flipped)::

      out[n, f, i, j] = b[f] + sum_{c, p, q} w[f, c, p, q]
                                * xpad[n, c, i*sh + p*dh, j*sw + q*dw]

- ``conv_transpose2d`` (torch's ``ConvTranspose2d``): x (N, C_in, H, W),
  w (C_in, C_out, KH, KW), out (N, C_out, Ho, Wo) with
  ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + 1 + output_padding``. It is the
  adjoint of ``conv2d`` with respect to its input: every input pixel scatters a
  copy of its kernel, scaled by its value, into the output::

      full[n, o, i*sh + p*dh, j*sw + q*dw] += x[n, c, i, j] * w[c, o, p, q]
      out = full[:, :, ph:ph + Ho, pw:pw + Wo] + b

The ``*_naive`` functions are these sums as loops: the definition, and the
reference every fast path is tested against. Unrolling the receptive fields
of the padded input into columns (im2col) makes the convolution one matrix
product ``w.reshape(F, K) @ cols``; the backward scatters a matrix of column
gradients back onto the image (col2im: a loop over the KH*KW kernel taps, each
adding one strided slice). ``im2col``/``col2im`` are the plain, unblocked
versions, kept for teaching and tests.

The public functions check their arguments once and call the speed engine,
``mrcnn_np.kernels.conv``: the same im2col + GEMM in cache-sized blocks, stride
phases, row unrolling for large maps, reused buffers (its docstring has the
measured speed-ups; ``benchmarks/bench_conv.py`` the ratios to GEMM).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._checks import (check_array, check_bool, check_instance, check_pair, check_positive_int, check_same_dtype,
                       quiet_math)
from ..kernels import conv as _kernel
from .activations import ReluCache

__all__ = [
    "Conv2dCache",
    "ConvTranspose2dCache",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_naive",
    "conv2d_backward_naive",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "conv_transpose2d_naive",
    "conv_output_size",
    "im2col",
    "col2im",
]


class Conv2dCache(NamedTuple):
    """What ``conv2d_backward`` needs.

    x: the input (N, C, H, W) (a reference, not a copy).
    w: the weight (F, C, KH, KW).
    has_bias: whether a bias was given (then ``db`` is returned, else None).
    stride, padding, dilation: (h, w) pairs.
    cols: None, or the unrolled columns of x (1-D, see ``kernels.conv``) that the forward
        built anyway (strided convs, ``kernels.conv.conv2d_forward(keep_cols=True)``),
        kept so the backward need not unroll x again.
    """

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    cols: np.ndarray = None


class ConvTranspose2dCache(NamedTuple):
    """What ``conv_transpose2d_backward`` needs.

    x: the input (N, C_in, H, W) (a reference, not a copy).
    w: the weight (C_in, C_out, KH, KW).
    has_bias: whether a bias was given.
    stride, padding, dilation: (h, w) pairs.
    out_hw: (Ho, Wo) of the output (output_padding included).
    """

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    out_hw: tuple


# --------------------------------------------------------------------------- checks


def conv_output_size(size, kernel, *, stride=1, padding=0, dilation=1):
    """Output length of a convolution along one axis.

    ``(size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1``.
    size >= 0, kernel >= 1, stride >= 1, padding >= 0, dilation >= 1, all ints;
    ValueError when the (dilated) kernel does not fit the padded input (the
    result would be < 1).
    """
    size = check_positive_int("size", size, minimum=0)
    kernel = check_positive_int("kernel", kernel)
    stride = check_positive_int("stride", stride)
    padding = check_positive_int("padding", padding, minimum=0)
    dilation = check_positive_int("dilation", dilation)
    out = _conv_output_size(size, kernel, stride, padding, dilation)
    if out < 1:
        raise ValueError(f"kernel {kernel} (dilation {dilation}) does not fit size {size} with padding {padding}: "
                         f"the output would have {out} entries")
    return out


def _conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """:func:`conv_output_size` without the checks (shapes already checked)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_conv_args(x, w, b, stride, padding, dilation, *, transposed):
    x = check_array("x", x, ndim=4, dtype_kind="f")
    w = check_array("w", w, ndim=4, dtype_kind="f")
    check_same_dtype(x=x, w=w)
    stride = check_pair("stride", stride, minimum=1)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation, minimum=1)
    if transposed:
        if w.shape[0] != x.shape[1]:
            raise ValueError(
                f"w must have shape (C_in, C_out, KH, KW) with C_in = x.shape[1] = "
                f"{x.shape[1]} input channels, got w {w.shape} for x {x.shape}"
            )
        n_out = w.shape[1]
    else:
        if w.shape[1] != x.shape[1]:
            raise ValueError(
                f"w must have shape (F, C, KH, KW) with C = x.shape[1] = {x.shape[1]} "
                f"channels, got w {w.shape} for x {x.shape}"
            )
        n_out = w.shape[0]
    if min(w.shape) == 0:
        raise ValueError(f"w must have no empty dimension, got {w.shape}")
    if min(x.shape[1:]) == 0:  # an empty batch (N = 0, e.g. no RoIs) is fine
        raise ValueError(f"x must have non-empty C, H, W, got {x.shape}")
    if b is not None:
        b = check_array("b", b, shape=(n_out,), dtype_kind="f")
        check_same_dtype(x=x, b=b)
    return x, w, b, stride, padding, dilation


def _check_kernel_fits(x, w, padding, dilation):
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    (ph, pw), (dh, dw) = padding, dilation
    eh, ew = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    if eh > H + 2 * ph or ew > W + 2 * pw:
        raise ValueError(
            f"w kernel ({KH}, {KW}) with dilation {dilation} spans ({eh}, {ew}) pixels, "
            f"larger than the padded input ({H + 2 * ph}, {W + 2 * pw}) "
            f"(x {x.shape}, padding {padding})"
        )


def _transpose_output_size(size, kernel, stride, padding, dilation, output_padding=0):
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1 + output_padding


def _check_transpose_args(x, w, b, stride, padding, dilation, output_padding):
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=True
    )
    output_padding = check_pair("output_padding", output_padding, minimum=0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation, got "
                f"output_padding {output_padding}, stride {stride}, dilation {dilation}"
            )
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    Ho = _transpose_output_size(H, KH, stride[0], padding[0], dilation[0], output_padding[0])
    Wo = _transpose_output_size(W, KW, stride[1], padding[1], dilation[1], output_padding[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"padding {padding} crops the whole output of the transposed convolution: "
            f"x {x.shape}, w {w.shape}, stride {stride} give ({Ho}, {Wo})"
        )
    return x, w, b, stride, padding, dilation, output_padding, (Ho, Wo)


# --------------------------------------------------------------------------- the definition: loops


@quiet_math
def conv2d_naive(x, w, b, *, stride=1, padding=0, dilation=1):
    """Loop version of :func:`conv2d_forward` (for tests and the notebook).

    out[n, f, i, j] = b[f] + sum(w[f] * window(n, i, j)): one dot product of
    the filter with the (dilated) input window per output pixel.
    Same arguments and result as ``conv2d_forward`` (without the cache).
    """
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=False
    )
    _check_kernel_fits(x, w, padding, dilation)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = _conv_output_size(H, KH, sh, ph, dh)
    Wo = _conv_output_size(W, KW, sw, pw, dw)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    out = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * sh:i * sh + dh * (KH - 1) + 1:dh,
                                j * sw:j * sw + dw * (KW - 1) + 1:dw]
                    out[n, f, i, j] = np.sum(window * w[f])
            if b is not None:
                out[n, f] += b[f]
    return out


@quiet_math
def conv2d_backward_naive(dout, x, w, *, stride=1, padding=0, dilation=1):
    """Loop version of the conv2d backward (for tests and the notebook).

    Every output pixel (n, f, i, j) used the window ``xpad[n, :, i*sh + p*dh,
    j*sw + q*dw]`` and the filter ``w[f]``, so it sends ``dout[n, f, i, j] * w[f]``
    back to that window and ``dout[n, f, i, j] * window`` to ``dw[f]``.
    dout: (N, F, Ho, Wo), x: (N, C, H, W), w: (F, C, KH, KW).
    Returns (dx, dw, db) with db = dout summed over n, i, j.
    """
    x, w, _, stride, padding, dilation = _check_conv_args(
        x, w, None, stride, padding, dilation, transposed=False
    )
    _check_kernel_fits(x, w, padding, dilation)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    shape = (N, F, _conv_output_size(H, KH, sh, ph, dh), _conv_output_size(W, KW, sw, pw, dw_))
    dout = check_array("dout", dout, shape=shape, dtype_kind="f")
    check_same_dtype(x=x, dout=dout)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    Ho, Wo = dout.shape[2:]
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    hs = slice(i * sh, i * sh + dh * (KH - 1) + 1, dh)
                    ws = slice(j * sw, j * sw + dw_ * (KW - 1) + 1, dw_)
                    dxp[n, :, hs, ws] += dout[n, f, i, j] * w[f]
                    dw[f] += dout[n, f, i, j] * xp[n, :, hs, ws]
    dx = dxp[:, :, ph:ph + H, pw:pw + W].copy()
    return dx, dw, dout.sum(axis=(0, 2, 3))


@quiet_math
def conv_transpose2d_naive(x, w, b, *, stride=1, padding=0, dilation=1, output_padding=0):
    """Loop version of :func:`conv_transpose2d_forward` (for tests and the notebook).

    Each input pixel x[n, c, i, j] adds ``x[n, c, i, j] * w[c]`` (a C_out x KH x KW
    block) to the full output at rows ``i*sh + p*dh``, columns ``j*sw + q*dw``;
    the result is then cropped by ``padding`` on every side (``output_padding``
    extra rows/columns kept at the bottom/right) and the bias added.
    """
    x, w, b, stride, padding, dilation, output_padding, (Ho, Wo) = _check_transpose_args(
        x, w, b, stride, padding, dilation, output_padding
    )
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    full = np.zeros((N, Cout, max(Ho + 2 * ph, (H - 1) * sh + dh * (KH - 1) + 1),
                     max(Wo + 2 * pw, (W - 1) * sw + dw * (KW - 1) + 1)), dtype=x.dtype)
    for n in range(N):
        for c in range(Cin):
            for i in range(H):
                for j in range(W):
                    full[n, :, i * sh:i * sh + dh * (KH - 1) + 1:dh,
                         j * sw:j * sw + dw * (KW - 1) + 1:dw] += x[n, c, i, j] * w[c]
    out = full[:, :, ph:ph + Ho, pw:pw + Wo].copy()
    if b is not None:
        out += b.reshape(1, Cout, 1, 1)
    return out


# --------------------------------------------------------------------------- im2col + GEMM, unblocked (teaching)


def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1):
    """Unroll every receptive field of ``x`` into a column.

    x: (N, C, H, W). kernel_size, stride, padding, dilation: int or pair.
    Returns cols (N, C*KH*KW, Ho*Wo), C-contiguous, rows ordered (c, p, q) as
    ``w.reshape(F, -1)``, so that ``w.reshape(F, -1) @ cols[n]`` is the
    convolution of image n, flattened to (F, Ho*Wo).
    For a 1x1 kernel with stride 1 and no padding the result is a view of x.
    """
    x = check_array("x", x, ndim=4)
    KH, KW = check_pair("kernel_size", kernel_size)
    stride = check_pair("stride", stride)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation)
    N, C, H, W = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    Ho = _conv_output_size(H, KH, sh, padding[0], dh)
    Wo = _conv_output_size(W, KW, sw, padding[1], dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"kernel_size ({KH}, {KW}) does not fit x {x.shape} with padding {padding}"
        )
    if KH == 1 and KW == 1 and padding == (0, 0):
        if stride == (1, 1):
            return np.ascontiguousarray(x).reshape(N, C, H * W)
        return np.ascontiguousarray(x[:, :, ::sh, ::sw][:, :, :Ho, :Wo]).reshape(N, C, Ho * Wo)
    ph, pw = padding
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    sN, sC, sH, sW = xp.strides
    view = as_strided(
        xp,
        shape=(N, C, KH, KW, Ho, Wo),
        strides=(sN, sC, dh * sH, dw * sW, sh * sH, sw * sW),
        writeable=False,
    )
    cols = np.empty((N, C, KH, KW, Ho, Wo), dtype=x.dtype)
    np.copyto(cols, view)
    return cols.reshape(N, C * KH * KW, Ho * Wo)


def col2im(cols, x_shape, kernel_size, *, stride=1, padding=0, dilation=1):
    """Adjoint of :func:`im2col`: add every column back onto its receptive field.

    cols: (N, C*KH*KW, Ho*Wo). x_shape: (N, C, H, W) of the image.
    Returns (N, C, H, W); overlapping fields add up, padding is dropped.
    """
    KH, KW = check_pair("kernel_size", kernel_size)
    stride = check_pair("stride", stride)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation)
    N, C, H, W = (int(v) for v in x_shape)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = _conv_output_size(H, KH, sh, ph, dh)
    Wo = _conv_output_size(W, KW, sw, pw, dw)
    cols = check_array("cols", cols, shape=(N, C * KH * KW, Ho * Wo))
    if KH == 1 and KW == 1 and padding == (0, 0) and stride == (1, 1):
        return cols.reshape(N, C, H, W).copy()
    c6 = cols.reshape(N, C, KH, KW, Ho, Wo)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(KH):
        hs = slice(p * dh, p * dh + sh * (Ho - 1) + 1, sh)
        for q in range(KW):
            ws = slice(q * dw, q * dw + sw * (Wo - 1) + 1, sw)
            xp[:, :, hs, ws] += c6[:, :, p, q]
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])


# --------------------------------------------------------------------------- public: check, then the kernel


@quiet_math
def conv2d_forward(x, w, b, *, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation), torch's ``F.conv2d`` with groups=1.

    x: (N, C, H, W) float. w: (F, C, KH, KW), same dtype. b: (F,) or None.
    stride, padding, dilation: int or (h, w) pair; padding is zeros.
    Returns out (N, F, Ho, Wo) in x's dtype and a :class:`Conv2dCache`.

    im2col + GEMM: ``out[n] = w.reshape(F, K) @ cols[n]`` with cols the unrolled
    receptive fields (see :func:`im2col`), computed by ``kernels.conv`` in
    cache-sized blocks of output rows. A 1x1 stride-1 conv is one GEMM on x itself.
    """
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=False
    )
    _check_kernel_fits(x, w, padding, dilation)
    return _conv2d_forward(x, w, b, stride, padding, dilation)


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _conv2d_forward(x, w, b, stride=1, padding=0, dilation=1, *, residual=None, relu=False):
    """:func:`conv2d_forward` without the checks, for the stages (which validate
    their inputs once, at their public entry). stride, padding, dilation: int or pair.

    residual (an array of the output's shape) and relu: the output is
    ``relu(conv2d(x, w) + b + residual)``, bit for bit those steps one after the other
    (the kernel applies the bias, residual and ReLU to each block of the output as its
    GEMM finishes). The cache is the conv's; :func:`_conv2d_relu_forward` adds the ReLU's.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    Ho = _conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    Wo = _conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    out, cols = _kernel.conv2d_forward(x, w, stride, padding, dilation, (Ho, Wo), keep_cols=True, bias=b,
                                       residual=residual, relu=relu)
    cache = Conv2dCache(x, w, b is not None, stride, padding, dilation, cols)
    return out, cache


def _conv2d_relu_forward(x, w, b, stride=1, padding=0, dilation=1, *, residual=None):
    """``relu(conv2d(x, w, b) + residual)`` for training: (out, conv cache, ReLU cache), bit
    for bit :func:`_conv2d_forward`, ``+= residual`` and ``activations._relu_forward`` one
    after the other, but the bias, residual and ReLU are applied block by block as the
    GEMMs finish (no pass over the whole output for each, no second array). The ReLU's
    mask ``x > 0`` is ``out > 0``: the clamped output is positive exactly where its input
    was (NaN in neither)."""
    out, cache = _conv2d_forward(x, w, b, stride, padding, dilation, residual=residual, relu=True)
    return out, cache, ReluCache(out > 0, out.dtype)


@quiet_math
def conv2d_backward(dout, cache, *, need_dx=True):
    """Gradients of ``conv2d_forward``.

    dout: (N, F, Ho, Wo). cache: the :class:`Conv2dCache` from the forward.
    need_dx: False skips the input gradient (dx is None), e.g. for a first
    layer whose input is the image.
    Returns (dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None).

    ``dw = sum_n dout[n] (F, Ho*Wo) @ cols[n].T`` and ``dx = col2im(w^T @ dout)``:
    the input gradient is the transposed convolution of dout with the same
    weight. The columns are unrolled again (block by block) rather than kept
    from the forward, so the cache holds only x and w.
    """
    check_instance("cache", cache, Conv2dCache, "Conv2dCache (from conv2d_forward)")
    x, w, has_bias, stride, padding, dilation, _ = cache
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho = _conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    Wo = _conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    dout = check_array("dout", dout, shape=(N, F, Ho, Wo), dtype_kind="f")
    check_same_dtype(x=x, dout=dout)
    return _conv2d_backward(dout, cache, need_dx=check_bool("need_dx", need_dx))


def _conv2d_infer(x, w, b, stride=1, padding=0, dilation=1, *, relu=False):
    """:func:`conv2d_forward`'s output for inference (no checks, no cache), clamped at 0 when
    ``relu``, up to float32 rounding: ``kernels.conv.conv2d_infer`` (small images laid end
    to end on one zero-padded grid, kernel row by kernel row, the bias and ReLU applied
    block by block; its docstring bounds the difference)."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    Ho = conv_output_size(H, KH, stride=stride[0], padding=padding[0], dilation=dilation[0])
    Wo = conv_output_size(W, KW, stride=stride[1], padding=padding[1], dilation=dilation[1])
    return _kernel.conv2d_infer(x, w, stride, padding, dilation, (Ho, Wo), bias=b, relu=relu)


def _conv_stack_infer(x, weights, biases, padding=0, dilation=1):
    """``x -> relu(conv2d(x, w_k, b_k))`` for each layer k in turn, stride 1, for inference (no
    checks, no cache): each layer the values of :func:`_conv2d_infer` with ``relu=True``, bit
    for bit. ``kernels.conv.conv_stack_infer`` keeps the activations between layers on one
    padded grid when the layers keep the map size (2*padding = dilation*(kernel - 1))."""
    return _kernel.conv_stack_infer(x, list(weights), list(biases), _pair(padding), _pair(dilation))


def _conv2d_fused(x, w, b, stride=1, padding=0, dilation=1, *, residual=None, relu=False, reuse=True):
    """``relu(conv2d(x, w, b) + residual)`` for inference, no checks, no cache:
    :func:`conv2d_forward`'s output plus ``residual`` (an array of the output's shape, or
    None), clamped at 0 when ``relu``, bit for bit as those steps one after the other.
    ``kernels.conv.conv2d_fused`` applies the bias, residual and ReLU to each block of the
    output right after its GEMM and reuses the memory of dead outputs (``reuse=False``:
    fresh memory, for a training step's frozen layers)."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    Ho = _conv_output_size(H, KH, stride[0], padding[0], dilation[0])
    Wo = _conv_output_size(W, KW, stride[1], padding[1], dilation[1])
    return _kernel.conv2d_fused(x, w, stride, padding, dilation, (Ho, Wo), b, residual, relu, reuse)


def _conv1x1_stacked(x, ws, biases):
    """``[conv2d(x, w, b) for w, b in zip(ws, biases)]`` for 1x1 stride-1 convs, bit for bit,
    for inference (no checks): ``kernels.conv.conv1x1_stacked`` runs them as one GEMM of the
    stacked filters where that keeps the bits (one pass over x instead of one per conv)."""
    return _kernel.conv1x1_stacked(x, list(ws), list(biases))


def _conv2d_backward(dout, cache, need_dx=True):
    """:func:`conv2d_backward` without the checks (for the stages)."""
    x, w, has_bias, stride, padding, dilation, cols = cache
    dx, dw = _kernel.conv2d_backward(dout, x, w, stride, padding, dilation, need_dx=need_dx, cols=cols)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


@quiet_math
def conv_transpose2d_forward(x, w, b, *, stride=1, padding=0, dilation=1, output_padding=0):
    """Transposed convolution, torch's ``F.conv_transpose2d`` (groups=1).

    x: (N, C_in, H, W). w: (C_in, C_out, KH, KW) (torch's ConvTranspose2d layout),
    same dtype. b: (C_out,) or None. stride, padding, dilation: int or pair.
    output_padding: int or pair, each < stride or < dilation (as torch): extra
    rows/columns added at the bottom/right, which makes the map the exact adjoint
    of a strided conv2d whose stride does not divide its padded input.
    Returns out (N, C_out, Ho, Wo),
    ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + 1 + output_padding_h``,
    and a :class:`ConvTranspose2dCache`.

    It is ``conv2d``'s input gradient: with ``w`` read as a conv2d weight
    (F = C_in, C = C_out), ``conv_transpose2d(x, w)`` equals ``conv2d_backward``'s
    dx for dout = x. Computed as ``cols = w^T . x`` (one GEMM) then col2im.
    """
    x, w, b, stride, padding, dilation, output_padding, _ = _check_transpose_args(
        x, w, b, stride, padding, dilation, output_padding
    )
    return _conv_transpose2d_forward(x, w, b, stride, padding, dilation, output_padding)


def _conv_transpose2d_forward(x, w, b, stride=1, padding=0, dilation=1, output_padding=0):
    """:func:`conv_transpose2d_forward` without the checks, for the stages.
    stride, padding, dilation, output_padding: int or pair."""
    stride, padding, dilation, op = _pair(stride), _pair(padding), _pair(dilation), _pair(output_padding)
    Ho, Wo = (_transpose_output_size(n, k, s, p, d, o)
              for n, k, s, p, d, o in zip(x.shape[2:], w.shape[2:], stride, padding, dilation, op))
    out = _kernel.conv_transpose2d_forward(x, w, stride, padding, dilation, (Ho, Wo))
    if b is not None:
        out += b.reshape(1, w.shape[1], 1, 1)
    cache = ConvTranspose2dCache(x, w, b is not None, stride, padding, dilation, (Ho, Wo))
    return out, cache


@quiet_math
def conv_transpose2d_backward(dout, cache):
    """Gradients of ``conv_transpose2d_forward``.

    dout: (N, C_out, Ho, Wo). cache: the :class:`ConvTranspose2dCache`.
    Returns (dx (N, C_in, H, W), dw (C_in, C_out, KH, KW), db (C_out,) or None).
    dx is the ordinary convolution of dout with w (read as (F=C_in, C=C_out, KH, KW)).
    """
    check_instance("cache", cache, ConvTranspose2dCache, "ConvTranspose2dCache (from conv_transpose2d_forward)")
    x, w, has_bias, stride, padding, dilation, (Ho, Wo) = cache
    dout = check_array("dout", dout, shape=(x.shape[0], w.shape[1], Ho, Wo), dtype_kind="f")
    check_same_dtype(x=x, dout=dout)
    return _conv_transpose2d_backward(dout, cache)


def _conv_transpose2d_backward(dout, cache):
    """:func:`conv_transpose2d_backward` without the checks (for the stages)."""
    x, w, has_bias, stride, padding, dilation, _ = cache
    dx, dw = _kernel.conv_transpose2d_backward(dout, x, w, stride, padding, dilation)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
