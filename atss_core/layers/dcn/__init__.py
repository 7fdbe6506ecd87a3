"""Deformable convolution (DCN v1 and v2)."""
from .deform_conv_func import deform_conv, modulated_deform_conv
from .deform_conv_module import DeformConv, ModulatedDeformConv

__all__ = ["deform_conv", "modulated_deform_conv", "DeformConv", "ModulatedDeformConv"]
