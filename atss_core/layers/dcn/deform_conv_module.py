"""Deformable convolution modules; their parameters are named as in the original
(``weight``, and ``bias`` for the modulated version)."""
import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .deform_conv_func import _deform_conv2d, modulated_deform_conv


class _DeformConvBase(nn.Module):
    """Shared constructor: weight (out, in / groups, kh, kw), uniform init in
    ±1/sqrt(in_channels * kh * kw) as the original, optional zero-initialised bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 deformable_groups, bias):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels={in_channels} and "
                             f"out_channels={out_channels} must be divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deformable_groups={self.deformable_groups}, bias={self.with_bias}")


class DeformConv(_DeformConvBase):
    """Deformable convolution v1: ``forward(input, offset)``.

    input (N, C, H, W), offset (N, deformable_groups * 2 * kh * kw, H_out, W_out)
    -> (N, out_channels, H_out, W_out).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias)

    def forward(self, input, offset):
        # bias=True is an extension: the original refused a bias on v1.
        return _deform_conv2d(input, offset, None, self.weight, self.bias, self.stride, self.padding,
                              self.dilation, self.groups, self.deformable_groups)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (DCN v2): ``forward(input, offset, mask)``.

    input (N, C, H, W), offset (N, deformable_groups * 2 * kh * kw, H_out, W_out),
    mask (N, deformable_groups * kh * kw, H_out, W_out) -> (N, out_channels, H_out, W_out).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias)

    def forward(self, input, offset, mask):
        return modulated_deform_conv(input, offset, mask, self.weight, self.bias, self.stride,
                                     self.padding, self.dilation, self.groups, self.deformable_groups)
