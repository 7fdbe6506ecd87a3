"""Layers and compiled ops of atss_core, under the original module paths and names."""
from .batch_norm import FrozenBatchNorm2d
from .dcn import DeformConv, ModulatedDeformConv, deform_conv, modulated_deform_conv
from .misc import BatchNorm2d, Conv2d, ConvTranspose2d, DFConv2d, interpolate
from .nms import ml_nms, nms
from .onednn_conv import OneDNNConv2d, conv_norm_relu, use_onednn_convolutions
from .scale import Scale
from .sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss

__all__ = [
    "nms",
    "ml_nms",
    "Conv2d",
    "DFConv2d",
    "ConvTranspose2d",
    "interpolate",
    "BatchNorm2d",
    "FrozenBatchNorm2d",
    "SigmoidFocalLoss",
    "sigmoid_focal_loss",
    "deform_conv",
    "modulated_deform_conv",
    "DeformConv",
    "ModulatedDeformConv",
    "Scale",
    "OneDNNConv2d",
    "conv_norm_relu",
    "use_onednn_convolutions",
]
