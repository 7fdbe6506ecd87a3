"""Small layer factories shared by the backbone, the FPN and the heads."""
import functools
from typing import Callable

from torch import nn


def get_group_gn(dim, dim_per_gp, num_groups):
    """Number of GroupNorm groups for ``dim`` channels.

    Exactly one of ``dim_per_gp`` (channels per group) and ``num_groups`` must be given;
    the other is -1.
    """
    if (dim_per_gp == -1) == (num_groups == -1):
        raise ValueError("GroupNorm: set exactly one of MODEL.GROUP_NORM.DIM_PER_GP and "
                         f"MODEL.GROUP_NORM.NUM_GROUPS (the other to -1), got {dim_per_gp} "
                         f"and {num_groups}")
    if dim_per_gp > 0:
        if dim % dim_per_gp:
            raise ValueError(f"GroupNorm: {dim} channels do not split into groups of "
                             f"{dim_per_gp}; change MODEL.GROUP_NORM.DIM_PER_GP")
        return dim // dim_per_gp
    if dim % num_groups:
        raise ValueError(f"GroupNorm: {dim} channels do not split into {num_groups} groups; "
                         "change MODEL.GROUP_NORM.NUM_GROUPS")
    return num_groups


def group_norm(out_channels: int, affine: bool = True, divisor: int = 1, dim_per_gp: int = -1, num_groups: int = 32,
               eps: float = 1e-5) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``out_channels``; the defaults are those of ``MODEL.GROUP_NORM``.

    ``divisor`` shrinks channels, channels-per-group and groups alike (used by narrow layers).
    """
    out_channels = out_channels // divisor
    groups = get_group_gn(out_channels, dim_per_gp // divisor, num_groups // divisor)
    return nn.GroupNorm(groups, out_channels, eps, affine)


def group_norm_from_config(group_norm_cfg) -> Callable[..., nn.GroupNorm]:
    """``group_norm`` with ``MODEL.GROUP_NORM`` (``group_norm_cfg``) bound: ``fn(out_channels, ...)``."""
    return functools.partial(group_norm, dim_per_gp=group_norm_cfg.DIM_PER_GP,
                             num_groups=group_norm_cfg.NUM_GROUPS, eps=group_norm_cfg.EPSILON)


def conv_with_kaiming_uniform(use_gn=False, use_relu=False, norm_func=group_norm):
    """Return ``make_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1)``.

    The conv gets "same" padding and Caffe2's XavierFill init (= ``kaiming_uniform_(a=1)``)
    with a zero bias. With ``use_gn`` the bias is dropped and ``norm_func(out_channels)`` (a
    GroupNorm, see ``group_norm_from_config``) follows; with
    ``use_relu`` a ReLU follows. A bare conv is returned when nothing follows it, so its
    state-dict names have no ``.0`` index.
    """
    def make_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                         padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                         bias=not use_gn)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers = [conv]
        if use_gn:
            layers.append(norm_func(out_channels))
        if use_relu:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers) if len(layers) > 1 else conv

    return make_conv
