"""Batch normalisation with fixed statistics and affine parameters."""
import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose ``weight``, ``bias``, ``running_mean`` and ``running_var`` are
    all buffers (never trained). As in the original there is no eps:
    ``y = x * weight / sqrt(running_var) + (bias - running_mean * weight / sqrt(running_var))``.
    """

    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        """x (N, C, H, W) -> (N, C, H, W)."""
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self):
        return str(self.weight.shape[0])
