"""MobileNetV2 body for ``MNV2-FPN-RETINANET``.

The layout follows the MobileNetV2 that the original FCOS/ATSS code ships (after Ji Lin's
pytorch-mobilenet-v2): a flat ``features`` list of a 3×3/2 stem conv and 17 inverted
residual blocks, with plain (trainable) ``nn.BatchNorm2d``. The outputs of blocks 3, 6, 13
and 17 (strides 4, 8, 16, 32; 24, 32, 96, 320 channels at width 1.0) are returned.
"""
import math

from torch import nn


def conv_bn(inp, oup, stride):
    """3×3 conv -> BN -> ReLU6."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


def conv_1x1_bn(inp, oup):
    """1×1 conv -> BN -> ReLU6."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """[1×1 expand -> BN -> ReLU6 ->] 3×3 depthwise -> BN -> ReLU6 -> 1×1 linear -> BN,
    with an identity shortcut when the shape is unchanged. The expansion conv is left out
    when ``expand_ratio`` is 1."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup

        expand = [] if expand_ratio == 1 else list(conv_1x1_bn(inp, hidden_dim))
        self.conv = nn.Sequential(
            *expand,
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """``forward(x)``: (N, 3, H, W) -> list of 4 maps at strides 4, 8, 16, 32 with
    ``return_features_num_channels`` channels. ``MODEL.BACKBONE.FREEZE_CONV_BODY_AT = k``
    stops gradients for ``features[0..k-1]`` (the BN statistics still update in train mode,
    as in the original)."""

    # (expansion t, output channels c, repeats n, first stride s) per group of blocks.
    INVERTED_RESIDUAL_SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, cfg, width_mult=1.0):
        super().__init__()
        self.return_features_indices = [3, 6, 13, 17]
        self.return_features_num_channels = []
        input_channel = int(32 * width_mult)
        self.features = nn.ModuleList([conv_bn(3, input_channel, 2)])
        for expand_ratio, channels, repeats, first_stride in self.INVERTED_RESIDUAL_SETTING:
            output_channel = int(channels * width_mult)
            for repeat in range(repeats):
                self.features.append(InvertedResidual(
                    input_channel, output_channel, first_stride if repeat == 0 else 1,
                    expand_ratio))
                input_channel = output_channel
                if len(self.features) - 1 in self.return_features_indices:
                    self.return_features_num_channels.append(output_channel)

        self._initialize_weights()
        self._freeze_backbone(cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT)

    def _freeze_backbone(self, freeze_at):
        for layer in self.features[:max(freeze_at, 0)]:
            for param in layer.parameters():
                param.requires_grad_(False)

    def forward(self, x):
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.return_features_indices:
                outputs.append(x)
        return outputs

    def _initialize_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He normal over fan-out, as the reference MobileNetV2.
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
