"""Deformable convolution functions: v1 (``deform_conv``) and v2 (``modulated_deform_conv``).

Offsets follow the original DCN layout: for deformable group g and kernel tap
k = i * kernel_w + j, offset channel ``2 * (g * K + k)`` is the y (row) shift and the
next channel the x (column) shift, K = kernel_h * kernel_w. Mask channel ``g * K + k``
modulates that tap. Samples are bilinear; pixels outside the input read as 0.
"""
import torch
import torchvision
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from .._ext import compiled_ops


class _DeformConvFunction(Function):
    """Autograd wrapper of the compiled kernels (mask and bias may be None)."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, groups,
                deformable_groups, ops):
        ctx.conv_args = (stride, padding, dilation, groups, deformable_groups)
        ctx.with_bias = bias is not None
        ctx.ops = ops
        ctx.save_for_backward(input, offset, mask, weight)
        return ops.deform_conv_forward(input, weight, offset, mask, bias, *ctx.conv_args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask, weight = ctx.saved_tensors
        grad_input, grad_offset, grad_mask, grad_weight, grad_bias = ctx.ops.deform_conv_backward(
            grad_output, input, weight, offset, mask, ctx.with_bias, *ctx.conv_args)
        return (grad_input, grad_offset, grad_mask, grad_weight, grad_bias) + (None,) * 6


def _deform_conv2d(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                   deformable_groups):
    if torch.is_autocast_enabled(input.device.type):
        # Mixed precision (DTYPE float16/bfloat16): the kernels take float32/float64 only and
        # would get half-precision activations with float32 weights, so this op runs in float32.
        tensors = [None if t is None else t.float() for t in (input, offset, mask, weight, bias)]
        with torch.autocast(input.device.type, enabled=False):
            return _deform_conv2d(*tensors, stride, padding, dilation, groups, deformable_groups)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _check_deform_inputs(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                         deformable_groups)
    ops = compiled_ops(input.device)
    if ops is not None:
        return _DeformConvFunction.apply(input, offset, mask, weight, bias, stride, padding,
                                         dilation, groups, deformable_groups, ops)
    # torchvision infers groups and deformable groups from the weight and offset shapes.
    return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding,
                                         dilation=dilation, mask=mask)


def deform_conv(input, offset, weight, stride=1, padding=0, dilation=1, groups=1, deformable_groups=1):
    """Deformable convolution v1 (no bias).

    Args:
        input: (N, C, H, W).
        offset: (N, deformable_groups * 2 * kh * kw, H_out, W_out).
        weight: (C_out, C / groups, kh, kw).
        stride, padding, dilation: int or (h, w) pair.
    Returns:
        (N, C_out, H_out, W_out).
    """
    return _deform_conv2d(input, offset, None, weight, None, stride, padding, dilation, groups,
                          deformable_groups)


def modulated_deform_conv(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                          groups=1, deformable_groups=1):
    """Modulated deformable convolution (DCN v2): each tap's sample is scaled by ``mask``.

    Args:
        input: (N, C, H, W).
        offset: (N, deformable_groups * 2 * kh * kw, H_out, W_out).
        mask: (N, deformable_groups * kh * kw, H_out, W_out), typically in [0, 1].
        weight: (C_out, C / groups, kh, kw); bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair.
    Returns:
        (N, C_out, H_out, W_out).
    """
    return _deform_conv2d(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                          deformable_groups)


def _check_deform_inputs(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                         deformable_groups):
    """One-line errors for the shapes the kernels rely on."""
    if input.dim() != 4:
        raise ValueError(f"deform_conv: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"deform_conv: weight must be (C_out, C/groups, kh, kw), got shape {tuple(weight.shape)}")
    channels, kernel = input.shape[1], weight.shape[2:]
    if channels % groups or weight.shape[0] % groups or weight.shape[1] * groups != channels:
        raise ValueError(f"deform_conv: weight {tuple(weight.shape)} does not fit {channels} input "
                         f"channels in {groups} groups")
    if channels % deformable_groups:
        raise ValueError(f"deform_conv: {channels} input channels are not divisible by "
                         f"deformable_groups={deformable_groups}")
    out_size = tuple((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1
                     for size, pad, dil, k, step in zip(input.shape[2:], padding, dilation, kernel, stride))
    if min(out_size) <= 0:
        raise ValueError(f"deform_conv: input {tuple(input.shape)} is too small for kernel {tuple(kernel)} "
                         f"(output would be {out_size})")
    taps = kernel[0] * kernel[1]
    expected_offset = (input.shape[0], deformable_groups * 2 * taps) + out_size
    if tuple(offset.shape) != expected_offset:
        raise ValueError(f"deform_conv: offset must have shape {expected_offset}, got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (input.shape[0], deformable_groups * taps) + out_size:
        raise ValueError(f"deform_conv: mask must have shape "
                         f"{(input.shape[0], deformable_groups * taps) + out_size}, got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"deform_conv: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
