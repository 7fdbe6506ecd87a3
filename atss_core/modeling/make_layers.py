"""Small layer factories shared by the backbone, the FPN and the heads."""
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


def group_norm(out_channels, affine=True, divisor=1):
    """``nn.GroupNorm`` over ``out_channels`` configured by the global ``MODEL.GROUP_NORM``.

    ``divisor`` shrinks channels, channels-per-group and groups alike (used by narrow layers).
    """
    # Imported here so that building layers never forces the config module to load first.
    from atss_core.config import cfg

    gn_cfg = cfg.MODEL.GROUP_NORM
    out_channels = out_channels // divisor
    num_groups = get_group_gn(out_channels, gn_cfg.DIM_PER_GP // divisor,
                              gn_cfg.NUM_GROUPS // divisor)
    return nn.GroupNorm(num_groups, out_channels, gn_cfg.EPSILON, affine)


def conv_with_kaiming_uniform(use_gn=False, use_relu=False):
    """Return ``make_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1)``.

    The conv gets "same" padding and Caffe2's XavierFill init (= ``kaiming_uniform_(a=1)``)
    with a zero bias. With ``use_gn`` the bias is dropped and a GroupNorm follows; with
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
            layers.append(group_norm(out_channels))
        if use_relu:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers) if len(layers) > 1 else conv

    return make_conv
