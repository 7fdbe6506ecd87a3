"""Which anchors become positives, and why: per-GT assignment statistics.

Backs ``tools/visualize_assignment.py`` (whose text tables and figures come from
``atss_core.utils.assignment_report``). Everything happens in network-input coordinates (the
image resized as at test time): the anchors of the configured pyramid are laid over the padded
input, the configured assigner (any ``MODEL.ATSS.POSITIVE_TYPE``) labels them, and
:func:`assignment_statistics` gathers per GT:

* the ATSS candidates: on every level the ``TOPK * A`` anchors whose centres are nearest to the
  GT centre, their IoUs ("+1" areas), the IoU mean, unbiased std and the threshold mean + std;
* the positives the assigner gave that GT, and how many on each level.

The ATSS candidates are collected whatever the positive type, so a figure of an IoU, SSC or TOPK
assignment shows the adaptive threshold ATSS would have used for the same object.

Programmatic use::

    stats = assign_image(cfg, gt_boxes, gt_labels, image_size_hw=(800, 1066))
    stats.positive_inds[g]          # anchor indices of GT g's positives
    stats.iou_threshold[g]          # mean + std of its candidate IoUs
"""
import math
from dataclasses import dataclass

import torch

from ..anchor_generator import AnchorGenerator
from .assigners import POSITIVE_TYPES, Assigner, ATSSAssigner, build_assigner


@dataclass
class AssignmentStatistics:
    """One image's assignment, per anchor and per GT (G GTs, N anchors, L levels, K candidates).

    Attributes:
        positive_type: the assigner's POSITIVE_TYPE ("ATSS", "SSC", "IoU" or "TOPK").
        anchors: (N, 4) xyxy, levels concatenated in order.
        num_anchors_per_level: list of L counts N_l.
        level_names: list of L names ("P3" for stride 8, ...).
        gt_boxes: (G, 4) xyxy; gt_labels: (G,) int64 class ids.
        labels: (N,) int64, the assigner's labels (0 background, 1..C, -1 ignored).
        matched_gt_inds: (N,) int64, the GT of every positive anchor, -1 elsewhere.
        candidate_inds: (G, K) int64, the ATSS candidates (indices into ``anchors``), level
            by level, nearest first within a level.
        candidate_levels: (K,) int64, the level of each candidate slot (the same for all GTs).
        candidate_ious: (G, K) IoU ("+1" areas) of each candidate with its GT.
        iou_mean, iou_std, iou_threshold: (G,) mean, unbiased std and mean + std of those IoUs.
        candidate_centre_inside: (G, K) bool, the candidate's centre is inside the GT (margin 0.01).
        candidate_is_positive: (G, K) bool, the candidate is a positive of this GT.
        positive_inds: list of G tensors (P_g,) int64, each GT's positive anchors, ascending.
        positives_per_level: (G, L) int64.
    """

    positive_type: str
    anchors: torch.Tensor
    num_anchors_per_level: list
    level_names: list
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    labels: torch.Tensor
    matched_gt_inds: torch.Tensor
    candidate_inds: torch.Tensor
    candidate_levels: torch.Tensor
    candidate_ious: torch.Tensor
    iou_mean: torch.Tensor
    iou_std: torch.Tensor
    iou_threshold: torch.Tensor
    candidate_centre_inside: torch.Tensor
    candidate_is_positive: torch.Tensor
    positive_inds: list
    positives_per_level: torch.Tensor

    @property
    def num_gts(self):
        return self.gt_boxes.shape[0]

    @property
    def anchor_levels(self):
        """(N,) int64 level of every anchor."""
        sizes = torch.tensor(self.num_anchors_per_level, device=self.anchors.device)
        return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)

    @property
    def candidates_per_level(self):
        """(L,) int64: candidates each GT has on every level."""
        return torch.bincount(self.candidate_levels, minlength=len(self.num_anchors_per_level))

    @property
    def gts_without_positive(self):
        """(M,) int64 indices of the GTs no anchor was assigned to."""
        return (self.positives_per_level.sum(dim=1) == 0).nonzero().flatten()


def canonical_positive_type(name):
    """The POSITIVE_TYPE spelled as the config wants it ("iou" -> "IoU"); ValueError if unknown."""
    by_lower = {positive_type.lower(): positive_type for positive_type in POSITIVE_TYPES}
    canonical = by_lower.get(str(name).strip().lower())
    if canonical is None:
        raise ValueError(f"unknown positive type {name!r}; choose from {', '.join(POSITIVE_TYPES)}")
    return canonical


def level_names_for_strides(strides):
    """FPN level names from strides: 8 -> "P3", 16 -> "P4", ..."""
    return [f"P{round(math.log2(stride))}" for stride in strides]


def feature_grid_sizes(image_size_hw, strides, size_divisibility):
    """Per level (height, width) of the feature maps a network input of ``image_size_hw`` gives.

    The batch is padded to a multiple of ``size_divisibility`` (0: no padding); every stride-2
    stage then rounds up, so level l has ceil(padded / stride_l) cells along each side.
    """
    padded = [math.ceil(side / size_divisibility) * size_divisibility if size_divisibility > 0 else side
              for side in image_size_hw]
    return [tuple(math.ceil(side / stride) for side in padded) for stride in strides]


def anchors_for_image(cfg, image_size_hw):
    """The model's anchors for one network input of ``image_size_hw`` = (height, width).

    Returns:
        list over levels of (N_l, 4) float32 xyxy anchors, covering the padded grid as in training.
    """
    generator = AnchorGenerator.from_config(cfg)
    grid_sizes = feature_grid_sizes(image_size_hw, cfg.MODEL.ATSS.ANCHOR_STRIDES,
                                    cfg.DATALOADER.SIZE_DIVISIBILITY)
    return generator.grid_anchors(grid_sizes)


def assignment_statistics(anchors_per_level, gt_boxes, gt_labels, assigner: Assigner, topk,
                          num_anchors_per_location=1, positive_type=None, level_names=None):
    """Runs ``assigner`` on one image and gathers its per-GT statistics.

    Args:
        anchors_per_level: list over levels of (N_l, 4) xyxy anchors.
        gt_boxes: (G, 4) xyxy, G >= 1; gt_labels: (G,) int64 class ids 1..C.
        assigner: an assigner from ``assigners.py`` (any positive type).
        topk, num_anchors_per_location: the ATSS candidate count per level is
            min(topk * num_anchors_per_location, N_l) (``MODEL.ATSS.TOPK`` and A).
        positive_type: name recorded in the result (default: ``assigner.POSITIVE_TYPE``).
        level_names: names of the levels (default "level0", ...).

    Returns:
        AssignmentStatistics.
    """
    if gt_boxes.shape[0] == 0:
        raise ValueError("the image has no usable ground-truth box (crowd and degenerate boxes are dropped), "
                         "so nothing is assigned; pick an image with at least one box")
    num_anchors_per_level = [len(level) for level in anchors_per_level]
    anchors = torch.cat(list(anchors_per_level), dim=0)
    result = assigner(anchors, gt_boxes, gt_labels, num_anchors_per_level)
    candidates = ATSSAssigner(topk, num_anchors_per_location).select_candidates(
        anchors, gt_boxes, num_anchors_per_level)

    num_gts, num_levels = gt_boxes.shape[0], len(num_anchors_per_level)
    level_ends = torch.tensor(num_anchors_per_level, device=anchors.device).cumsum(0)

    def anchor_level(inds):
        return torch.bucketize(inds, level_ends, right=True)

    # Positives grouped by GT: sort them by GT (stable, so anchor order holds within a GT) and split.
    positive_anchors = (result.matched_gt_inds >= 0).nonzero().flatten()
    positive_gts = result.matched_gt_inds[positive_anchors]
    order = torch.argsort(positive_gts, stable=True)
    counts_per_gt = torch.bincount(positive_gts, minlength=num_gts)
    positive_inds = list(torch.split(positive_anchors[order], counts_per_gt.tolist()))
    positives_per_level = torch.bincount(positive_gts * num_levels + anchor_level(positive_anchors),
                                         minlength=num_gts * num_levels).view(num_gts, num_levels)

    gt_index = torch.arange(num_gts, device=anchors.device)[:, None]
    return AssignmentStatistics(
        positive_type=positive_type or assigner.POSITIVE_TYPE,
        anchors=anchors,
        num_anchors_per_level=num_anchors_per_level,
        level_names=list(level_names or [f"level{i}" for i in range(num_levels)]),
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        labels=result.labels,
        matched_gt_inds=result.matched_gt_inds,
        candidate_inds=candidates.candidate_inds,
        candidate_levels=anchor_level(candidates.candidate_inds[0]),
        candidate_ious=candidates.candidate_ious,
        iou_mean=candidates.iou_mean,
        iou_std=candidates.iou_std,
        iou_threshold=candidates.iou_threshold,
        candidate_centre_inside=candidates.centre_inside,
        candidate_is_positive=result.matched_gt_inds[candidates.candidate_inds] == gt_index,
        positive_inds=positive_inds,
        positives_per_level=positives_per_level,
    )


def assign_image(cfg, gt_boxes, gt_labels, image_size_hw, positive_type=None):
    """:func:`assignment_statistics` with the anchors and assigner of ``cfg``.

    Args:
        cfg: the config (``MODEL.ATSS`` anchors and assignment, ``DATALOADER.SIZE_DIVISIBILITY``).
        gt_boxes: (G, 4) xyxy in network-input pixels; gt_labels: (G,) int64.
        image_size_hw: the unpadded network input's (height, width).
        positive_type: overrides ``MODEL.ATSS.POSITIVE_TYPE`` (any case: "iou" works).
    """
    atss = cfg.MODEL.ATSS
    positive_type = canonical_positive_type(positive_type or atss.POSITIVE_TYPE)
    if positive_type != atss.POSITIVE_TYPE:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ATSS.POSITIVE_TYPE = positive_type
    anchors_per_level = [level.to(gt_boxes.device) for level in anchors_for_image(cfg, image_size_hw)]
    return assignment_statistics(
        anchors_per_level, gt_boxes.to(torch.float32), gt_labels.to(torch.int64), build_assigner(cfg),
        topk=atss.TOPK, num_anchors_per_location=len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE,
        positive_type=positive_type, level_names=level_names_for_strides(atss.ANCHOR_STRIDES))
