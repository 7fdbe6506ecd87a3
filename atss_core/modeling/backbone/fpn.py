"""Feature Pyramid Network on top of a list of body features."""
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Top-down pyramid with lateral 1×1 convs (``fpn_inner{i}``) and 3×3 output convs
    (``fpn_layer{i}``), plus optional extra levels from ``top_blocks``.

    Args:
        in_channels_list (list[int]): channels of each body feature, finest first. A 0 means
            "no lateral for this feature": those (leading) features are ignored, which is
            how the RetinaNet-style P3-P7 pyramid skips C2.
        out_channels (int): channels of every pyramid level.
        conv_block: ``fn(in_channels, out_channels, kernel_size, stride=1) -> nn.Module``,
            e.g. ``conv_with_kaiming_uniform()``.
        top_blocks (nn.Module | None): ``LastLevelP6P7`` or ``LastLevelMaxPool``.
    """

    def __init__(self, in_channels_list, out_channels, conv_block, top_blocks=None):
        super().__init__()
        self.inner_blocks = []
        self.layer_blocks = []
        for level, in_channels in enumerate(in_channels_list, start=1):
            if in_channels == 0:
                continue
            inner_name, layer_name = f"fpn_inner{level}", f"fpn_layer{level}"
            self.add_module(inner_name, conv_block(in_channels, out_channels, 1))
            self.add_module(layer_name, conv_block(out_channels, out_channels, 3, 1))
            self.inner_blocks.append(inner_name)
            self.layer_blocks.append(layer_name)
        self.top_blocks = top_blocks

    def forward(self, x):
        """``x``: body features, finest first (N, C_i, H_i, W_i). Returns a tuple of
        (N, out_channels, h, w) maps, finest first: one per lateral, then the top blocks'."""
        # Only the coarsest len(inner_blocks) features have laterals.
        features = x[len(x) - len(self.inner_blocks):]
        last_inner = getattr(self, self.inner_blocks[-1])(features[-1])
        results = [getattr(self, self.layer_blocks[-1])(last_inner)]
        for feature, inner_name, layer_name in zip(features[-2::-1], self.inner_blocks[-2::-1],
                                                   self.layer_blocks[-2::-1]):
            lateral = getattr(self, inner_name)(feature)
            # Upsample to the lateral's exact size: odd sizes do not halve evenly.
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, getattr(self, layer_name)(last_inner))

        if isinstance(self.top_blocks, LastLevelP6P7):
            results.extend(self.top_blocks(x[-1], results[-1]))
        elif self.top_blocks is not None:
            results.extend(self.top_blocks(results[-1]))
        return tuple(results)


class LastLevelMaxPool(nn.Module):
    """Extra level P6 = stride-2 subsampling of the coarsest output (Faster R-CNN FPN)."""

    def forward(self, x):
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """RetinaNet extra levels: ``P6 = conv3×3/2(src)``, ``P7 = conv3×3/2(relu(P6))``.

    ``src`` is P5 when ``in_channels == out_channels`` and C5 otherwise; that is how
    ``MODEL.RETINANET.USE_C5`` reaches this module (through the channel count).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.use_P5 = in_channels == out_channels

    def forward(self, c5, p5):
        """``c5`` (N, C_in, h, w) body output, ``p5`` (N, C_out, h, w) -> ``[p6, p7]``."""
        p6 = self.p6(p5 if self.use_P5 else c5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]
