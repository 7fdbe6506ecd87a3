"""Small layers used by the model.

The original wrapped ``Conv2d``, ``ConvTranspose2d``, ``BatchNorm2d`` and
``interpolate`` to accept empty tensors; current PyTorch does that natively, so these
names are the torch ones, kept so that the original import paths still work.
"""
import torch.nn.functional as F
from torch import nn

from .dcn import DeformConv, ModulatedDeformConv

Conv2d = nn.Conv2d
ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
interpolate = F.interpolate


class DFConv2d(nn.Module):
    """Deformable convolution that predicts its own sampling offsets.

    ``offset`` is a plain convolution with the same geometry as the deformable one. For
    DCN v2 (``with_modulated_dcn``) it outputs ``deformable_groups * 3 * kh * kw``
    channels: the first ``deformable_groups * 2 * kh * kw`` are the offsets and the rest,
    after a sigmoid, the mask. For v1 it outputs only the offsets. ``conv`` is the
    :class:`ModulatedDeformConv` or :class:`DeformConv` that consumes them.

    x (N, in_channels, H, W) -> (N, out_channels, H_out, W_out).
    """

    def __init__(self, in_channels, out_channels, with_modulated_dcn=True, kernel_size=3, stride=1,
                 groups=1, padding=1, dilation=1, deformable_groups=1, bias=False):
        super().__init__()
        kernel_h, kernel_w = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        taps = kernel_h * kernel_w
        self.offset = Conv2d(in_channels, deformable_groups * taps * (3 if with_modulated_dcn else 2),
                             kernel_size=kernel_size, stride=stride, padding=padding, groups=1,
                             dilation=dilation)
        nn.init.kaiming_uniform_(self.offset.weight, a=1)
        nn.init.zeros_(self.offset.bias)
        conv_block = ModulatedDeformConv if with_modulated_dcn else DeformConv
        self.conv = conv_block(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                               padding=padding, dilation=dilation, groups=groups,
                               deformable_groups=deformable_groups, bias=bias)
        self.with_modulated_dcn = with_modulated_dcn
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.offset_channels = deformable_groups * taps * 2

    def forward(self, x):
        offset_mask = self.offset(x)
        if not self.with_modulated_dcn:
            return self.conv(x, offset_mask)
        offset = offset_mask[:, :self.offset_channels]
        mask = offset_mask[:, self.offset_channels:].sigmoid()
        return self.conv(x, offset, mask)
