"""Batch normalisation with fixed statistics and affine parameters."""
import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose ``weight``, ``bias``, ``running_mean`` and ``running_var`` are
    all buffers (never trained). As in the original there is no eps:
    ``y = x * weight / sqrt(running_var) + (bias - running_mean * weight / sqrt(running_var))``.

    When ``applied_by_conv`` is set (``atss_core.modeling.fuse.apply_frozen_bn_in_convs``), the
    conv in front of it folds it into its weights at every forward and this module passes its
    input through.
    """

    def __init__(self, num_features):
        super().__init__()
        self.applied_by_conv = False
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        """x (N, C, H, W) -> (N, C, H, W)."""
        if self.applied_by_conv:
            return x
        scale, shift = self._affine()
        # One fused pass over x (x * scale + shift would be two, with a temporary in between).
        return torch.addcmul(shift.to(x.dtype).view(1, -1, 1, 1), x, scale.to(x.dtype).view(1, -1, 1, 1))

    def _affine(self):
        scale = self.weight * self.running_var.rsqrt()
        return scale, self.bias - self.running_mean * scale

    def fold_into(self, weight, bias):
        """Weight ``(C, C_in/g, kh, kw)`` and bias ``(C,)`` (or None) of a conv that also applies
        this norm; differentiable in ``weight`` and ``bias``."""
        scale, shift = self._affine()
        folded_bias = shift if bias is None else bias * scale + shift
        return weight * scale.to(weight.dtype).view(-1, 1, 1, 1), folded_bias.to(weight.dtype)

    def extra_repr(self):
        return str(self.weight.shape[0])
