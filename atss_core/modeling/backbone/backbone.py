"""``build_backbone(cfg)``: body (+ FPN) chosen by ``MODEL.BACKBONE.CONV_BODY``.

Every builder returns ``nn.Sequential(OrderedDict(body=..., [fpn=...]))`` with an
``out_channels`` attribute (channels of each output map), so state-dict keys read
``backbone.body.*`` / ``backbone.fpn.*`` as in the original checkpoints.
"""
from collections import OrderedDict

from torch import nn

from atss_core.modeling import registry
from atss_core.modeling.make_layers import conv_with_kaiming_uniform, group_norm_from_config

from . import fpn as fpn_module
from . import mobilenet, resnet


def _assemble(body, out_channels, fpn=None):
    parts = [("body", body)] if fpn is None else [("body", body), ("fpn", fpn)]
    model = nn.Sequential(OrderedDict(parts))
    model.out_channels = out_channels
    return model


def _fpn_conv_block(cfg):
    return conv_with_kaiming_uniform(cfg.MODEL.FPN.USE_GN, cfg.MODEL.FPN.USE_RELU,
                                     group_norm_from_config(cfg.MODEL.GROUP_NORM))


@registry.BACKBONES.register("R-50-C4")
@registry.BACKBONES.register("R-50-C5")
@registry.BACKBONES.register("R-101-C4")
@registry.BACKBONES.register("R-101-C5")
def build_resnet_backbone(cfg):
    """ResNet body alone; outputs its last stage only."""
    return _assemble(resnet.ResNet(cfg), cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS)


@registry.BACKBONES.register("R-50-FPN")
@registry.BACKBONES.register("R-101-FPN")
@registry.BACKBONES.register("R-152-FPN")
def build_resnet_fpn_backbone(cfg):
    """Faster R-CNN style FPN: P2-P5 from C2-C5, P6 by subsampling P5 (strides 4..64)."""
    stage2_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    fpn = fpn_module.FPN(
        in_channels_list=[stage2_channels * 2 ** i for i in range(4)],
        out_channels=out_channels,
        conv_block=_fpn_conv_block(cfg),
        top_blocks=fpn_module.LastLevelMaxPool(),
    )
    return _assemble(resnet.ResNet(cfg), out_channels, fpn)


@registry.BACKBONES.register("R-50-FPN-RETINANET")
@registry.BACKBONES.register("R-101-FPN-RETINANET")
def build_resnet_fpn_p3p7_backbone(cfg):
    """RetinaNet/ATSS FPN: P3-P5 from C3-C5 (C2 unused), P6/P7 from P5, or from C5 when
    ``MODEL.RETINANET.USE_C5`` (strides 8..128)."""
    stage2_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    in_channels_p6p7 = stage2_channels * 8 if cfg.MODEL.RETINANET.USE_C5 else out_channels
    fpn = fpn_module.FPN(
        in_channels_list=[0, stage2_channels * 2, stage2_channels * 4, stage2_channels * 8],
        out_channels=out_channels,
        conv_block=_fpn_conv_block(cfg),
        top_blocks=fpn_module.LastLevelP6P7(in_channels_p6p7, out_channels),
    )
    return _assemble(resnet.ResNet(cfg), out_channels, fpn)


@registry.BACKBONES.register("MNV2-FPN-RETINANET")
def build_mnv2_fpn_backbone(cfg):
    """MobileNetV2 with the P3-P7 FPN (P6/P7 always from P5)."""
    body = mobilenet.MobileNetV2(cfg)
    body_channels = body.return_features_num_channels
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    fpn = fpn_module.FPN(
        in_channels_list=[0, *body_channels[1:]],
        out_channels=out_channels,
        conv_block=_fpn_conv_block(cfg),
        top_blocks=fpn_module.LastLevelP6P7(out_channels, out_channels),
    )
    return _assemble(body, out_channels, fpn)


def build_backbone(cfg):
    """Build the backbone named by ``cfg.MODEL.BACKBONE.CONV_BODY``."""
    name = cfg.MODEL.BACKBONE.CONV_BODY
    if name not in registry.BACKBONES:
        raise KeyError(f"MODEL.BACKBONE.CONV_BODY '{name}' is not registered; choose one of "
                       f"{sorted(registry.BACKBONES)}")
    return registry.BACKBONES[name](cfg)
