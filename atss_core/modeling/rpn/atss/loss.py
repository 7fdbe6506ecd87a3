"""ATSS training losses: focal classification, centerness-weighted GIoU regression, centerness BCE.

Targets come from the assigner picked by ``MODEL.ATSS.POSITIVE_TYPE`` (see ``assigners.py``).
Normalisation, as in the original:

* cls: focal-loss sum / max(positives averaged over processes, 1);
* reg: GIoU sum weighted by the centerness targets / (centerness-target sum averaged over
  processes), times ``REG_LOSS_WEIGHT``;
* centerness: BCE-with-logits sum over positives / max(positives averaged over processes, 1).

Both all-reduces run on every rank at every iteration, positives or not, so ranks never go out
of step.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from atss_core.layers import SigmoidFocalLoss
from atss_core.structures.bounding_box import BoxList
from atss_core.utils.comm import get_world_size, reduce_sum
from .assigners import Assigner, box_centres, build_assigner
from .box_coder import BoxCoder
from ..utils import flatten_like_anchors

from atss_core.modeling.original_api import make_atss_loss_evaluator  # noqa: F401 (original API import path)

# Keeps GIoU finite for degenerate (zero-area) boxes; areas have no "+1" here.
GIOU_EPS = 1e-7


class ATSSLossComputation:
    """Computes the three ATSS losses for a batch.

    Args:
        box_coder: the ``BoxCoder`` shared with the head's post-processor.
        assigner: picks the positive anchors (``assigners.py``).
        focal_gamma, focal_alpha: focal-loss parameters (``MODEL.ATSS.LOSS_GAMMA`` / ``LOSS_ALPHA``).
        reg_loss_weight: factor of the GIoU loss (``MODEL.ATSS.REG_LOSS_WEIGHT``).
    """

    def __init__(self, box_coder: BoxCoder, assigner: Assigner, focal_gamma: float = 2.0,
                 focal_alpha: float = 0.25, reg_loss_weight: float = 2.0):
        self.cls_loss_func = SigmoidFocalLoss(focal_gamma, focal_alpha)
        self.centerness_loss_func = nn.BCEWithLogitsLoss(reduction="sum")
        self.assigner = assigner
        self.box_coder = box_coder
        self.reg_loss_weight = reg_loss_weight

    @classmethod
    def from_config(cls, cfg, box_coder: BoxCoder) -> "ATSSLossComputation":
        atss = cfg.MODEL.ATSS
        return cls(box_coder, build_assigner(cfg), atss.LOSS_GAMMA, atss.LOSS_ALPHA, atss.REG_LOSS_WEIGHT)

    def GIoULoss(self, pred, target, anchor, weight=None):
        """Summed GIoU loss between decoded predictions and decoded targets.

        Args:
            pred: (P, 4) regression outputs; target: (P, 4) regression targets;
            anchor: (P, 4) the anchors both are relative to.
            weight: optional (P,) per-box weights; ignored when None or summing to <= 0.

        Returns:
            0-dim tensor: sum over boxes of (1 - GIoU) (times the weight). Areas are continuous
            (no "+1"); the predicted x2, y2 are raised to at least x1, y1.
        """
        anchor = anchor.view(-1, 4)
        pred_x1, pred_y1, pred_x2, pred_y2 = self.box_coder.decode(pred.view(-1, 4), anchor).unbind(1)
        pred_x2 = torch.max(pred_x1, pred_x2)
        pred_y2 = torch.max(pred_y1, pred_y2)
        pred_area = (pred_x2 - pred_x1) * (pred_y2 - pred_y1)
        gt_x1, gt_y1, gt_x2, gt_y2 = self.box_coder.decode(target.view(-1, 4), anchor).unbind(1)
        target_area = (gt_x2 - gt_x1) * (gt_y2 - gt_y1)

        inter_x1, inter_y1 = torch.max(pred_x1, gt_x1), torch.max(pred_y1, gt_y1)
        inter_x2, inter_y2 = torch.min(pred_x2, gt_x2), torch.min(pred_y2, gt_y2)
        overlaps = (inter_x2 > inter_x1) & (inter_y2 > inter_y1)
        inter_area = torch.where(overlaps, (inter_x2 - inter_x1) * (inter_y2 - inter_y1), 0.0)
        enclosing_area = ((torch.max(pred_x2, gt_x2) - torch.min(pred_x1, gt_x1))
                          * (torch.max(pred_y2, gt_y2) - torch.min(pred_y1, gt_y1)) + GIOU_EPS)
        union_area = pred_area + target_area - inter_area + GIOU_EPS
        gious = inter_area / union_area - (enclosing_area - union_area) / enclosing_area
        losses = 1 - gious
        if weight is not None and weight.sum() > 0:
            return (losses * weight).sum()
        return losses.sum()

    def prepare_targets(self, targets: Sequence[BoxList], anchors: Sequence[torch.Tensor]
                        ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-anchor classification labels and regression targets for every image.

        Args:
            targets: list over images of ``BoxList`` with field "labels" (int64, 1..C).
            anchors: list over levels of (N_l, 4) xyxy, shared by the images (the anchor
                generator's output); N = sum of N_l.

        Returns:
            labels: list over images of (N,) int64 (0 background, 1..C, -1 ignored);
            reg_targets: list over images of (N, 4), the encoded matched GT for positives (for
            other anchors the anchor itself is encoded; those rows are never used).
        """
        labels, reg_targets = [], []
        anchor_boxes = torch.cat(list(anchors), dim=0)
        num_anchors_per_level = [len(level) for level in anchors]
        for targets_per_image in targets:
            targets_per_image = targets_per_image.convert("xyxy")
            gt_boxes = targets_per_image.bbox
            result = self.assigner(anchor_boxes, gt_boxes, targets_per_image.get_field("labels"),
                                   num_anchors_per_level)
            matched_boxes = anchor_boxes
            if len(gt_boxes):
                matched = result.matched_gt_inds
                matched_boxes = torch.where((matched >= 0)[:, None], gt_boxes[matched.clamp(min=0)],
                                            anchor_boxes)
            labels.append(result.labels)
            reg_targets.append(self.box_coder.encode(matched_boxes, anchor_boxes))
        return labels, reg_targets

    def compute_centerness_targets(self, reg_targets, anchors):
        """Centerness (P,) of anchor centres in their decoded target boxes.

        sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), l, t, r, b being the distances from
        the anchor centre (P anchors (P, 4)) to the sides of ``decode(reg_targets)`` (P, 4).
        """
        gt_x1, gt_y1, gt_x2, gt_y2 = self.box_coder.decode(reg_targets, anchors).unbind(1)
        anchor_cx, anchor_cy = box_centres(anchors)
        left, top = anchor_cx - gt_x1, anchor_cy - gt_y1
        right, bottom = gt_x2 - anchor_cx, gt_y2 - anchor_cy
        centerness = torch.sqrt((torch.min(left, right) / torch.max(left, right))
                                * (torch.min(top, bottom) / torch.max(top, bottom)))
        return centerness

    def __call__(self, box_cls: Sequence[torch.Tensor], box_regression: Sequence[torch.Tensor],
                 centerness: Sequence[torch.Tensor], targets: Sequence[BoxList], anchors: Sequence[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three losses for a batch of N images.

        Args:
            box_cls: list over levels of (N, A*C, H, W) logits.
            box_regression: list over levels of (N, A*4, H, W).
            centerness: list over levels of (N, A, H, W) logits.
            targets: list of N ``BoxList`` with field "labels".
            anchors: list over levels of (H*W*A, 4), shared by the images.

        Returns:
            (loss_cls, loss_reg, loss_centerness): 0-dim tensors; loss_reg includes
            REG_LOSS_WEIGHT. Without any positive, loss_reg and loss_centerness are 0 but stay in
            the graph (so every parameter still gets a gradient, as DDP requires). Always float32:
            under mixed precision the head outputs are upcast and autocast is off in here, since
            the sums over ~10^5 anchors and the exp/log terms need float32.
        """
        with torch.autocast(box_cls[0].device.type, enabled=False):
            return self._losses([x.float() for x in box_cls], [x.float() for x in box_regression],
                                [x.float() for x in centerness], targets, anchors)

    def _losses(self, box_cls, box_regression, centerness, targets, anchors):
        labels, reg_targets = self.prepare_targets(targets, anchors)
        num_classes = box_cls[0].shape[1] // centerness[0].shape[1]
        cls_flat = torch.cat([flatten_like_anchors(x, num_classes) for x in box_cls], dim=1)
        cls_flat = cls_flat.reshape(-1, num_classes)
        regression_flat = torch.cat([flatten_like_anchors(x, 4) for x in box_regression], dim=1).reshape(-1, 4)
        centerness_flat = torch.cat([flatten_like_anchors(x, 1) for x in centerness], dim=1).reshape(-1)
        labels_flat = torch.cat(labels, dim=0)
        reg_targets_flat = torch.cat(reg_targets, dim=0)
        anchor_boxes = torch.cat(list(anchors), dim=0)

        world_size = get_world_size()
        positive = labels_flat > 0
        num_pos = reduce_sum(positive.sum().to(torch.float32)) / world_size
        num_pos_avg_per_gpu = num_pos.clamp(min=1.0)
        cls_loss = self.cls_loss_func(cls_flat, labels_flat.int()) / num_pos_avg_per_gpu

        regression_pos = regression_flat[positive]
        reg_targets_pos = reg_targets_flat[positive]
        # the anchors of the positive rows, in positive's (row-major) order
        anchors_pos = anchor_boxes[positive.view(len(targets), -1).nonzero(as_tuple=True)[1]]
        centerness_pos = centerness_flat[positive]
        centerness_targets = self.compute_centerness_targets(reg_targets_pos, anchors_pos)
        centerness_sum_avg_per_gpu = reduce_sum(centerness_targets.sum()) / world_size

        if regression_pos.numel() > 0:
            reg_loss = self.GIoULoss(regression_pos, reg_targets_pos, anchors_pos,
                                     weight=centerness_targets) / centerness_sum_avg_per_gpu
            centerness_loss = (self.centerness_loss_func(centerness_pos, centerness_targets)
                               / num_pos_avg_per_gpu)
        else:
            # Empty sums: exact zeros that keep the head outputs in the graph.
            reg_loss = regression_pos.sum()
            centerness_loss = centerness_pos.sum()
        return cls_loss, reg_loss * self.reg_loss_weight, centerness_loss
