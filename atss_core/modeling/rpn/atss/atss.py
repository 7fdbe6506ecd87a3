"""The ATSS head and the module that ties it to anchors, targets and post-processing.

``ATSSModule`` is what ``build_rpn`` returns for ``MODEL.ATSS_ON``: in training it returns the
three losses, in evaluation the detections of every image.
"""
import math

import torch.nn.functional as F
from torch import nn

from atss_core.layers import DFConv2d, Scale
from ..anchor_generator import make_anchor_generator_atss
from .box_coder import BoxCoder
from .inference import make_atss_postprocessor
from .loss import make_atss_loss_evaluator

__all__ = ["ATSSHead", "ATSSModule", "BoxCoder", "build_atss"]


def _tower(cfg, channels):
    """NUM_CONVS x (3x3 conv, GroupNorm(32), ReLU) as one Sequential (convs at 0, 3, 6, ...).

    With USE_DCN_IN_TOWER the last conv is deformable, as in the original.
    """
    num_convs = cfg.MODEL.ATSS.NUM_CONVS
    layers = []
    for index in range(num_convs):
        deformable = cfg.MODEL.ATSS.USE_DCN_IN_TOWER and index == num_convs - 1
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
    C = NUM_CLASSES - 1.
    """

    def __init__(self, cfg, in_channels):
        super().__init__()
        num_classes = cfg.MODEL.ATSS.NUM_CLASSES - 1
        num_anchors = len(cfg.MODEL.ATSS.ASPECT_RATIOS) * cfg.MODEL.ATSS.SCALES_PER_OCTAVE
        self.point_regression = cfg.MODEL.ATSS.REGRESSION_TYPE == "POINT"
        if self.point_regression and num_anchors != 1:
            raise ValueError(
                f"MODEL.ATSS.REGRESSION_TYPE 'POINT' needs one anchor per location, got {num_anchors} "
                "(ASPECT_RATIOS x SCALES_PER_OCTAVE): use a single aspect ratio and SCALES_PER_OCTAVE 1")

        self.cls_tower = _tower(cfg, in_channels)
        self.bbox_tower = _tower(cfg, in_channels)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(in_channels, num_anchors, kernel_size=3, padding=1)

        # Every plain conv (the DCN offset convs included, which subclass nn.Conv2d) starts at
        # N(0, 0.01) with zero bias; the deformable convs keep their own init, as in the original.
        for module in [self.cls_tower, self.bbox_tower, self.cls_logits, self.bbox_pred, self.centerness]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        # Focal-loss prior: every class starts at probability PRIOR_PROB.
        prior_prob = cfg.MODEL.ATSS.PRIOR_PROB
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if self.point_regression:
            nn.init.constant_(self.bbox_pred.bias, 4)

        self.scales = nn.ModuleList([Scale(init_value=1.0) for _ in range(5)])

    def forward(self, features):
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

    def __init__(self, cfg, in_channels):
        super().__init__()
        self.cfg = cfg
        self.head = ATSSHead(cfg, in_channels)
        box_coder = BoxCoder(cfg)
        self.loss_evaluator = make_atss_loss_evaluator(cfg, box_coder)
        self.box_selector_test = make_atss_postprocessor(cfg, box_coder)
        self.anchor_generator = make_anchor_generator_atss(cfg)

    def forward(self, images, features, targets=None):
        """images: ``ImageList``; features: list of L ``(N, C, H_l, W_l)``; targets: list of N
        ``BoxList`` (xyxy, field ``labels``, size = the unpadded image (W, H)), training only."""
        box_cls, box_regression, centerness = self.head(features)
        anchors = self.anchor_generator(images, features)
        if self.training:
            return self._forward_train(box_cls, box_regression, centerness, targets, anchors)
        return self._forward_test(box_cls, box_regression, centerness, anchors)

    def _forward_train(self, box_cls, box_regression, centerness, targets, anchors):
        loss_cls, loss_reg, loss_centerness = self.loss_evaluator(
            box_cls, box_regression, centerness, targets, anchors)
        return None, {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_centerness}

    def _forward_test(self, box_cls, box_regression, centerness, anchors):
        return self.box_selector_test(box_cls, box_regression, centerness, anchors), {}


def build_atss(cfg, in_channels):
    return ATSSModule(cfg, in_channels)
