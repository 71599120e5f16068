"""Differentiable primitives: each op is a ``*_forward`` / ``*_backward`` pair.

Shape shorthand: N images, C (input) channels, F filters (output channels),
H, W spatial sizes, KH, KW kernel sizes. Weights use torch's layouts
(conv (F, C, KH, KW), transposed conv (C_in, C_out, KH, KW), linear (out, in)),
so torchvision weights move over unchanged.

``out, cache = op_forward(x, ..., *, hyper=...)`` and
``grads = op_backward(dout, cache)``; the cache is a NamedTuple, the backward
never modifies ``dout``, and the dtype of the input is kept. Fast ops have a
``*_naive`` loop version beside them, used by tests and notebooks.

Losses return ``(loss, dinput)`` directly: they end the graph.
"""
from .activations import relu_backward, relu_forward, sigmoid, sigmoid_backward, sigmoid_forward, softmax
from .conv import (
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_naive,
    conv_output_size,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    conv_transpose2d_naive,
)
from .linear import linear_backward, linear_forward
from .losses import bce_with_logits, smooth_l1, softmax_cross_entropy
from .norm import frozen_batch_norm_backward, frozen_batch_norm_forward
from .pool import max_pool2d_backward, max_pool2d_forward, max_pool2d_naive
from .resize import (
    resize_bilinear,
    resize_bilinear_backward,
    resize_bilinear_forward,
    resize_bilinear_naive,
    upsample_nearest_backward,
    upsample_nearest_forward,
    upsample_nearest_naive,
)

__all__ = [
    "conv2d_forward", "conv2d_backward", "conv2d_naive", "conv2d_backward_naive", "conv_output_size",
    "conv_transpose2d_forward", "conv_transpose2d_backward", "conv_transpose2d_naive",
    "max_pool2d_forward", "max_pool2d_backward", "max_pool2d_naive",
    "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward", "sigmoid", "softmax",
    "frozen_batch_norm_forward", "frozen_batch_norm_backward",
    "upsample_nearest_forward", "upsample_nearest_backward", "upsample_nearest_naive",
    "resize_bilinear_forward", "resize_bilinear_backward", "resize_bilinear", "resize_bilinear_naive",
    "softmax_cross_entropy", "bce_with_logits", "smooth_l1",
]
