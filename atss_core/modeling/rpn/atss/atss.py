"""The ATSS head and the module that ties it to anchors, targets and post-processing.

``ATSSModule`` is the detector's ``rpn`` (its dense head): in training it returns the
three losses, in evaluation the detections of every image.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from atss_core.layers import DFConv2d, Scale
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import ImageList
from ..anchor_generator import AnchorGenerator
from .box_coder import BoxCoder
from .inference import ATSSPostProcessor
from .loss import ATSSLossComputation

from atss_core.modeling.original_api import build_atss  # noqa: F401 (original API import path)

__all__ = ["ATSSHead", "ATSSModule", "BoxCoder"]


def _tower(channels, num_convs, use_dcn):
    """num_convs x (3x3 conv, GroupNorm(32), ReLU) as one Sequential (convs at 0, 3, 6, ...).

    With ``use_dcn`` the last conv is deformable, as in the original.
    """
    layers = []
    for index in range(num_convs):
        deformable = use_dcn and index == num_convs - 1
        conv_class = DFConv2d if deformable else nn.Conv2d
        layers += [
            conv_class(channels, channels, kernel_size=3, stride=1, padding=1, bias=True),
            nn.GroupNorm(32, channels),
            nn.ReLU(inplace=True),  # GroupNorm's backward needs only its input: saves a copy
        ]
    return nn.Sequential(*layers)


class ATSSHead(nn.Module):
    """Classification, box-regression and centerness predictions for every FPN level.

    Input: a list of L feature maps ``(N, in_channels, H_l, W_l)``.
    Output: three lists of L tensors, ``box_cls (N, A*C, H_l, W_l)`` raw logits,
    ``box_regression (N, A*4, H_l, W_l)`` after the level's ``Scale`` (and a ReLU in POINT mode)
    and ``centerness (N, A, H_l, W_l)`` raw logits, where A = anchors per location and
    C = foreground classes.

    Args:
        in_channels: channels of every feature map.
        num_foreground_classes: C (``MODEL.ATSS.NUM_CLASSES - 1``).
        num_anchors: A, anchors per location.
        num_levels: L, one ``Scale`` per level (``len(MODEL.ATSS.ANCHOR_STRIDES)``).
        num_convs: convs per tower; use_dcn_in_tower: the last one deformable.
        prior_prob: initial class probability (focal-loss prior).
        point_regression: POINT regression (a ReLU on the outputs, bias init 4).
    """

    def __init__(self, in_channels: int, num_foreground_classes: int, num_anchors: int = 1, num_levels: int = 5,
                 num_convs: int = 4, use_dcn_in_tower: bool = False, prior_prob: float = 0.01,
                 point_regression: bool = False):
        super().__init__()
        if point_regression and num_anchors != 1:
            raise ValueError(
                f"MODEL.ATSS.REGRESSION_TYPE 'POINT' needs one anchor per location, got {num_anchors} "
                "(ASPECT_RATIOS x SCALES_PER_OCTAVE): use a single aspect ratio and SCALES_PER_OCTAVE 1")
        self.point_regression = point_regression

        self.cls_tower = _tower(in_channels, num_convs, use_dcn_in_tower)
        self.bbox_tower = _tower(in_channels, num_convs, use_dcn_in_tower)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_foreground_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(in_channels, num_anchors, kernel_size=3, padding=1)

        # Every plain conv (the DCN offset convs included, which subclass nn.Conv2d) starts at
        # N(0, 0.01) with zero bias; the deformable convs keep their own init, as in the original.
        for module in [self.cls_tower, self.bbox_tower, self.cls_logits, self.bbox_pred, self.centerness]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        # Focal-loss prior: every class starts at probability prior_prob.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if self.point_regression:
            nn.init.constant_(self.bbox_pred.bias, 4)

        self.scales = nn.ModuleList([Scale(init_value=1.0) for _ in range(num_levels)])

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "ATSSHead":
        atss = cfg.MODEL.ATSS
        return cls(in_channels, num_foreground_classes=atss.NUM_CLASSES - 1,
                   num_anchors=len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE,
                   num_levels=len(atss.ANCHOR_STRIDES), num_convs=atss.NUM_CONVS,
                   use_dcn_in_tower=atss.USE_DCN_IN_TOWER, prior_prob=atss.PRIOR_PROB,
                   point_regression=atss.REGRESSION_TYPE == "POINT")

    def forward(self, features: Sequence[torch.Tensor]
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        box_cls, box_regression, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feature = self.cls_tower(feature)
            box_feature = self.bbox_tower(feature)
            box_cls.append(self.cls_logits(cls_feature))
            regression = self.scales[level](self.bbox_pred(box_feature))
            if self.point_regression:
                regression = F.relu(regression)
            box_regression.append(regression)
            centerness.append(self.centerness(box_feature))
        return box_cls, box_regression, centerness


class ATSSModule(nn.Module):
    """Head + anchor generator + loss evaluator (training) + post-processor (evaluation).

    ``forward(images, features, targets=None)`` returns ``(None, losses)`` in training, with
    losses ``{"loss_cls", "loss_reg", "loss_centerness"}``, and ``(detections, {})`` in
    evaluation, one ``BoxList`` per image with fields ``labels`` (1..C) and ``scores``.
    """

    def __init__(self, head: ATSSHead, anchor_generator: AnchorGenerator,
                 loss_evaluator: ATSSLossComputation, box_selector_test: ATSSPostProcessor):
        super().__init__()
        self.head = head
        self.loss_evaluator = loss_evaluator
        self.box_selector_test = box_selector_test
        self.anchor_generator = anchor_generator

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "ATSSModule":
        box_coder = BoxCoder.from_config(cfg)
        return cls(ATSSHead.from_config(cfg, in_channels), AnchorGenerator.from_config(cfg),
                   ATSSLossComputation.from_config(cfg, box_coder), ATSSPostProcessor.from_config(cfg, box_coder))

    def forward(self, images: ImageList, features: Sequence[torch.Tensor],
                targets: Optional[List[BoxList]] = None
                ) -> Tuple[Optional[List[BoxList]], Dict[str, torch.Tensor]]:
        """images: ``ImageList`` (only its ``image_sizes`` are read); features: list of L
        ``(N, C, H_l, W_l)``; targets: list of N ``BoxList`` (xyxy, field ``labels``), training only."""
        box_cls, box_regression, centerness = self.head(features)
        anchors = self.anchor_generator(features)
        if self.training:
            loss_cls, loss_reg, loss_centerness = self.loss_evaluator(
                box_cls, box_regression, centerness, targets, anchors)
            return None, {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_centerness}
        # Under TEST.DTYPE bfloat16 / float16 the head's maps come out in that type: decoding,
        # NMS and the scores still run in float32.
        with torch.autocast(box_cls[0].device.type, enabled=False):
            head_maps = [[level.float() for level in maps] for maps in (box_cls, box_regression, centerness)]
            return self.box_selector_test(*head_maps, anchors, images.image_sizes), {}
