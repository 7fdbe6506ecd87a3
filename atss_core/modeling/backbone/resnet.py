"""ResNet and ResNeXt bodies built from the config.

``ResNet(cfg)`` reads ``MODEL.BACKBONE.CONV_BODY`` (depth and which stages return their
output), ``MODEL.RESNETS.*`` (width, groups, stride placement, stem/block flavour, DCN) and
``MODEL.BACKBONE.FREEZE_CONV_BODY_AT``. Stage ``i`` (``layer1``..``layer4``, i.e. C2..C5)
has stride ``2**(i+1)`` and ``RES2_OUT_CHANNELS * 2**(i-1)`` output channels.

Module names (``stem.conv1``, ``layer2.0.downsample.1``, ``layer3.5.conv2.offset``, ...)
are the state-dict names of the original checkpoints, so keep them stable.
"""
from collections import namedtuple

import torch.nn.functional as F
from torch import nn

from atss_core.layers import DFConv2d, FrozenBatchNorm2d, conv_norm_relu
from atss_core.modeling.make_layers import group_norm, group_norm_from_config
from atss_core.utils.registry import Registry

# index: stage number 1..4 (layer1 = C2); block_count: residual blocks in the stage;
# return_features: whether forward() returns the stage's output.
StageSpec = namedtuple("StageSpec", ["index", "block_count", "return_features"])


def _stage_specs(block_counts, return_features):
    return tuple(StageSpec(index, count, ret) for index, (count, ret)
                 in enumerate(zip(block_counts, return_features), start=1))


_ALL_FOUR = (True, True, True, True)
ResNet50StagesTo5 = _stage_specs((3, 4, 6, 3), (False, False, False, True))
ResNet50StagesTo4 = _stage_specs((3, 4, 6), (False, False, True))
ResNet101StagesTo5 = _stage_specs((3, 4, 23, 3), (False, False, False, True))
ResNet101StagesTo4 = _stage_specs((3, 4, 23), (False, False, True))
ResNet50FPNStagesTo5 = _stage_specs((3, 4, 6, 3), _ALL_FOUR)
ResNet101FPNStagesTo5 = _stage_specs((3, 4, 23, 3), _ALL_FOUR)
ResNet152FPNStagesTo5 = _stage_specs((3, 8, 36, 3), _ALL_FOUR)


class ResNet(nn.Module):
    """ResNet/ResNeXt body.

    ``forward(x)``: ``x`` (N, 3, H, W) -> list of the returning stages' outputs, for the FPN
    bodies ``[C2, C3, C4, C5]`` with shapes (N, 256·2^k, ceil(H/2^(k+2)), ceil(W/2^(k+2)))
    for the default widths.
    """

    def __init__(self, cfg):
        super().__init__()
        res_cfg = cfg.MODEL.RESNETS
        stage_specs = _lookup(_STAGE_SPECS, cfg.MODEL.BACKBONE.CONV_BODY,
                              "MODEL.BACKBONE.CONV_BODY")
        stem_module = _lookup(_STEM_MODULES, res_cfg.STEM_FUNC, "MODEL.RESNETS.STEM_FUNC")
        block_module = _lookup(_TRANSFORMATION_MODULES, res_cfg.TRANS_FUNC,
                               "MODEL.RESNETS.TRANS_FUNC")

        self.stem = stem_module(cfg)
        # GroupNorm blocks take MODEL.GROUP_NORM from this cfg (there is no global config below tools/).
        block_options = ({"group_norm_cfg": cfg.MODEL.GROUP_NORM}
                         if block_module is BottleneckWithGN else {})
        in_channels = res_cfg.STEM_OUT_CHANNELS
        self.stages = []
        self.return_features = {}
        for spec in stage_specs:
            width_factor = 2 ** (spec.index - 1)
            out_channels = res_cfg.RES2_OUT_CHANNELS * width_factor
            name = f"layer{spec.index}"
            self.add_module(name, _make_stage(
                block_module,
                in_channels,
                res_cfg.NUM_GROUPS * res_cfg.WIDTH_PER_GROUP * width_factor,
                out_channels,
                spec.block_count,
                res_cfg.NUM_GROUPS,
                res_cfg.STRIDE_IN_1X1,
                first_stride=1 if spec.index == 1 else 2,  # the stem already has stride 4
                dcn_config={
                    "stage_with_dcn": res_cfg.STAGE_WITH_DCN[spec.index - 1],
                    "with_modulated_dcn": res_cfg.WITH_MODULATED_DCN,
                    "deformable_groups": res_cfg.DEFORMABLE_GROUPS,
                },
                **block_options,
            ))
            self.stages.append(name)
            self.return_features[name] = spec.return_features
            in_channels = out_channels

        self._freeze_backbone(cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT)

    def _freeze_backbone(self, freeze_at):
        """Stop gradients for the stem (stage 0) and ``layer1``..``layer{freeze_at-1}``.

        ``freeze_at`` < 1 freezes nothing.
        """
        frozen = [self.stem] + [getattr(self, name) for name in self.stages]
        for module in frozen[:max(freeze_at, 0)]:
            for param in module.parameters():
                param.requires_grad_(False)

    def forward(self, x):
        outputs = []
        x = self.stem(x)
        for name in self.stages:
            x = getattr(self, name)(x)
            if self.return_features[name]:
                outputs.append(x)
        return outputs


def _lookup(registry, name, key):
    if name not in registry:
        raise KeyError(f"{key} '{name}' is unknown; choose one of {sorted(registry)}")
    return registry[name]


def _make_stage(transformation_module, in_channels, bottleneck_channels, out_channels,
                block_count, num_groups, stride_in_1x1, first_stride, dilation=1,
                dcn_config=None, **block_options):
    """``block_count`` blocks in an ``nn.Sequential``; only the first one changes the
    channel count and strides by ``first_stride``. ``block_options`` go to every block."""
    blocks = []
    for block_index in range(block_count):
        blocks.append(transformation_module(
            in_channels if block_index == 0 else out_channels,
            bottleneck_channels,
            out_channels,
            num_groups,
            stride_in_1x1,
            first_stride if block_index == 0 else 1,
            dilation=dilation,
            dcn_config=dcn_config,
            **block_options,
        ))
    return nn.Sequential(*blocks)


class Bottleneck(nn.Module):
    """1×1 reduce -> 3×3 (grouped for ResNeXt, optionally deformable) -> 1×1 expand,
    each followed by ``norm_func``, plus a shortcut (projected when the channel count
    changes). ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``.
    """

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups,
                 stride_in_1x1, stride, dilation, norm_func, dcn_config):
        super().__init__()
        dcn_config = dcn_config or {}
        # Created first so that it comes first in the state dict, as in the checkpoints.
        self.downsample = None
        if in_channels != out_channels:
            projection = nn.Conv2d(in_channels, out_channels, kernel_size=1,
                                   stride=stride if dilation == 1 else 1, bias=False)
            nn.init.kaiming_uniform_(projection.weight, a=1)
            self.downsample = nn.Sequential(projection, norm_func(out_channels))

        if dilation > 1:
            stride = 1  # dilated stages keep their resolution
        # MSRA ResNets stride in the first 1×1 conv; Caffe2/torch ResNeXts in the 3×3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)

        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1,
                               stride=stride_1x1, bias=False)
        self.bn1 = norm_func(bottleneck_channels)
        if dcn_config.get("stage_with_dcn", False):
            self.conv2 = DFConv2d(
                bottleneck_channels,
                bottleneck_channels,
                with_modulated_dcn=dcn_config.get("with_modulated_dcn", False),
                kernel_size=3,
                stride=stride_3x3,
                groups=num_groups,
                dilation=dilation,
                deformable_groups=dcn_config.get("deformable_groups", 1),
                bias=False,
            )
        else:
            self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3,
                                   stride=stride_3x3, padding=dilation, dilation=dilation,
                                   groups=num_groups, bias=False)
            nn.init.kaiming_uniform_(self.conv2.weight, a=1)
        self.bn2 = norm_func(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_func(out_channels)
        for conv in (self.conv1, self.conv3):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x):
        out = conv_norm_relu(self.conv1, self.bn1, x)
        out = conv_norm_relu(self.conv2, self.bn2, out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return conv_norm_relu(self.conv3, self.bn3, out, residual=shortcut)


class BaseStem(nn.Module):
    """7×7/2 conv, norm, ReLU, 3×3/2 max-pool: (N, 3, H, W) -> (N, C, H/4, W/4)."""

    def __init__(self, cfg, norm_func):
        super().__init__()
        out_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3,
                               bias=False)
        self.bn1 = norm_func(out_channels)
        nn.init.kaiming_uniform_(self.conv1.weight, a=1)

    def forward(self, x):
        x = conv_norm_relu(self.conv1, self.bn1, x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckWithFixedBatchNorm(Bottleneck):
    """Bottleneck normalised by ``FrozenBatchNorm2d`` (ImageNet statistics, no eps)."""

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups=1,
                 stride_in_1x1=True, stride=1, dilation=1, dcn_config=None):
        super().__init__(in_channels, bottleneck_channels, out_channels, num_groups,
                         stride_in_1x1, stride, dilation, FrozenBatchNorm2d, dcn_config)


class StemWithFixedBatchNorm(BaseStem):
    def __init__(self, cfg):
        super().__init__(cfg, norm_func=FrozenBatchNorm2d)


class BottleneckWithGN(Bottleneck):
    """Bottleneck normalised by GroupNorm configured by ``group_norm_cfg`` (``MODEL.GROUP_NORM``;
    None: its defaults)."""

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups=1,
                 stride_in_1x1=True, stride=1, dilation=1, dcn_config=None, group_norm_cfg=None):
        norm_func = group_norm if group_norm_cfg is None else group_norm_from_config(group_norm_cfg)
        super().__init__(in_channels, bottleneck_channels, out_channels, num_groups,
                         stride_in_1x1, stride, dilation, norm_func, dcn_config)


class StemWithGN(BaseStem):
    def __init__(self, cfg):
        super().__init__(cfg, norm_func=group_norm_from_config(cfg.MODEL.GROUP_NORM))


_TRANSFORMATION_MODULES = Registry({
    "BottleneckWithFixedBatchNorm": BottleneckWithFixedBatchNorm,
    "BottleneckWithGN": BottleneckWithGN,
})

_STEM_MODULES = Registry({
    "StemWithFixedBatchNorm": StemWithFixedBatchNorm,
    "StemWithGN": StemWithGN,
})

_STAGE_SPECS = Registry({
    "R-50-C4": ResNet50StagesTo4,
    "R-50-C5": ResNet50StagesTo5,
    "R-101-C4": ResNet101StagesTo4,
    "R-101-C5": ResNet101StagesTo5,
    "R-50-FPN": ResNet50FPNStagesTo5,
    "R-50-FPN-RETINANET": ResNet50FPNStagesTo5,
    "R-101-FPN": ResNet101FPNStagesTo5,
    "R-101-FPN-RETINANET": ResNet101FPNStagesTo5,
    "R-152-FPN": ResNet152FPNStagesTo5,
})
