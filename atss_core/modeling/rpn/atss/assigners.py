"""Training-target assignment: which anchors are positives for which ground-truth (GT) box.

One class per ``MODEL.ATSS.POSITIVE_TYPE`` of the original:

* ``ATSSAssigner`` ("ATSS"): adaptive training sample selection, the paper's method.
* ``SSCAssigner`` ("SSC"): FCOS-style spatial and scale constraints.
* ``IoUAssigner`` ("IoU"): RetinaNet-style IoU thresholds through a ``Matcher``.
* ``TopKAssigner`` ("TOPK"): the k anchors with the best IoU per GT.

They work on plain tensors and need no config: call one as
``assigner(anchors, gt_boxes, gt_labels, num_anchors_per_level)`` for one image, where
``anchors`` (N, 4) are all levels' anchors concatenated level by level (or a list of per-level
(N_l, 4) tensors), ``gt_boxes`` (G, 4) and ``gt_labels`` (G,) int64 in 1..C. Boxes are xyxy
pixels. The result is an ``AssignResult``: per-anchor labels (0 background, 1..C class, -1
ignored) and the index of the GT each positive anchor regresses to. Each class names its
``POSITIVE_TYPE`` and builds itself with ``from_config(cfg)``; ``build_assigner(cfg)`` picks the
class for ``MODEL.ATSS.POSITIVE_TYPE`` (a new assigner class registers itself by subclassing).

The anchors' image size plays no part in any rule (the original only used it in a consistency
check between box lists, which the detector's ``check_targets`` keeps).

Conventions shared with the original: IoU uses the legacy "+1" pixel areas; an anchor "centre
inside a GT" means min(l, t, r, b) > 0.01 for its centre's distances to the GT's sides; an anchor
that qualifies for several GTs goes to the one it overlaps most (ties: the lowest GT index). With
zero GTs every anchor is background (the original crashed); zero anchors give an empty result.
Anchors x GTs work is done in blocks of at most ``MAX_PAIRS_PER_BLOCK`` pairs, so memory stays flat
with hundreds of GTs.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type, Union

import torch

from atss_core.modeling.matcher import Matcher
from atss_core.structures.boxlist_ops import box_iou_plus_one

logger = logging.getLogger(__name__)

# Largest anchors x GTs block held at once: 1M pairs, 4 MB per float32 temporary (measured
# faster than 4M-pair blocks: the temporaries stay in cache and freed memory gets reused).
MAX_PAIRS_PER_BLOCK = 1 << 20
# The centre of a positive anchor must be this far (pixels) inside its GT on every side.
CENTRE_MARGIN = 0.01
# SSC: per FPN level, the range of max(l, t, r, b) a GT must have to be learnt on that level.
SSC_SIZES_OF_INTEREST = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))
# POSITIVE_TYPE -> Assigner subclass, filled as the classes below are defined.
ASSIGNERS: Dict[str, Type["Assigner"]] = {}


@dataclass
class AssignResult:
    """Per-anchor training targets of one image.

    Attributes:
        labels: (N,) int64; 0 background, 1..C the GT's class, -1 ignored (IoU assigner only).
        matched_gt_inds: (N,) int64; for positives (labels > 0) the index of their GT, else -1.
    """

    labels: torch.Tensor
    matched_gt_inds: torch.Tensor


@dataclass
class ATSSCandidates:
    """Per-GT statistics of the ATSS selection (one row per GT, K = total candidates per GT).

    Attributes:
        candidate_inds: (G, K) int64; the candidates, indices into the concatenated anchors.
            Level l contributes its k_l = min(topk * A, N_l) anchors nearest to the GT centre,
            levels in order (within a level the order is topk's, nearest first).
        candidate_ious: (G, K) IoU ("+1" areas) of each candidate with the GT.
        iou_mean: (G,) mean of the candidate IoUs.
        iou_std: (G,) their unbiased standard deviation (N - 1).
        iou_threshold: (G,) iou_mean + iou_std.
        centre_inside: (G, K) bool; the candidate's centre lies inside the GT (margin 0.01).
        is_positive: (G, K) bool; IoU >= threshold and centre inside, before anchors wanted by
            several GTs are given to one.
    """

    candidate_inds: torch.Tensor
    candidate_ious: torch.Tensor
    iou_mean: torch.Tensor
    iou_std: torch.Tensor
    iou_threshold: torch.Tensor
    centre_inside: torch.Tensor
    is_positive: torch.Tensor


def box_centres(boxes):
    """Centres of ``boxes`` (..., 4) xyxy: (cx, cy), each (...)."""
    return (boxes[..., 2] + boxes[..., 0]) / 2.0, (boxes[..., 3] + boxes[..., 1]) / 2.0


def centre_inside(cx, cy, boxes):
    """Whether points (cx, cy) lie inside ``boxes`` (..., 4) by more than ``CENTRE_MARGIN`` on all sides.

    All arguments broadcast; returns a bool tensor of the broadcast shape.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    nearest_side = torch.minimum(torch.minimum(cx - x1, cy - y1), torch.minimum(x2 - cx, y2 - cy))
    return nearest_side > CENTRE_MARGIN


def _gt_blocks(num_gt, num_anchors):
    """Slices over the GT axis so that one block holds at most MAX_PAIRS_PER_BLOCK pairs."""
    step = max(1, MAX_PAIRS_PER_BLOCK // max(num_anchors, 1))
    return [slice(start, min(start + step, num_gt)) for start in range(0, num_gt, step)]


def _squared_centre_distances(anchor_cx, anchor_cy, gt_cx, gt_cy):
    """Squared Euclidean distances (G, N) between GT centres (G,) and anchor centres (N,).

    Ranking by these equals ranking by the distances (whose sqrt the original took), at half
    the cost.
    """
    dx = anchor_cx[None, :] - gt_cx[:, None]
    dy = anchor_cy[None, :] - gt_cy[:, None]
    return dx.square_().add_(dy.square_())


def _pick_highest_iou(anchor_inds, gt_inds, ious, num_anchors):
    """Resolves (anchor, GT) positive pairs so that each anchor keeps one GT.

    Args:
        anchor_inds, gt_inds: (P,) int64, the positive pairs (each pair at most once).
        ious: (P,) the pairs' IoUs.
        num_anchors: N.

    Returns:
        (N,) int64: per anchor, the GT of its highest-IoU pair (ties: lowest GT index), -1 if none.
    """
    best_iou = ious.new_full((num_anchors,), -math.inf).scatter_reduce(
        0, anchor_inds, ious, reduce="amax")
    is_best = ious == best_iou[anchor_inds]
    no_gt = torch.iinfo(torch.int64).max
    matched = torch.full((num_anchors,), no_gt, dtype=torch.int64, device=ious.device).scatter_reduce(
        0, anchor_inds[is_best], gt_inds[is_best], reduce="amin")
    return torch.where(matched == no_gt, -1, matched)


def _check_gts(gt_boxes, gt_labels):
    """Raises a one-line ValueError for malformed GT boxes or labels."""
    if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape (G, 4) (xyxy pixels), got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:1]:
        raise ValueError(f"gt_labels must have shape ({gt_boxes.shape[0]},), one per GT box, "
                         f"got {tuple(gt_labels.shape)}")
    bad_box = ~(torch.isfinite(gt_boxes).all(dim=1) & (gt_boxes[:, 2] >= gt_boxes[:, 0])
                & (gt_boxes[:, 3] >= gt_boxes[:, 1]))
    bad_label = gt_labels < 1
    if (bad_box | bad_label).any():
        if bad_box.any():
            i = int(bad_box.nonzero()[0])
            raise ValueError(f"GT box {i} {gt_boxes[i].tolist()} is not finite or has x2 < x1 / y2 < y1; "
                             "drop such boxes first, e.g. BoxList.clip_to_image(remove_empty=True)")
        i = int(bad_label.nonzero()[0])
        raise ValueError(f"GT label {i} is {int(gt_labels[i])}; labels must be class ids 1..C "
                         "(0 is background): shift your dataset's category ids")


class Assigner:
    """Base class: input checks, the zero-GT case and logging; subclasses implement ``_assign``,
    ``from_config`` and set ``POSITIVE_TYPE``, which registers them in ``ASSIGNERS``."""

    POSITIVE_TYPE: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.POSITIVE_TYPE in ASSIGNERS:
            raise ValueError(f"POSITIVE_TYPE {cls.POSITIVE_TYPE!r} is taken by {ASSIGNERS[cls.POSITIVE_TYPE].__name__}")
        ASSIGNERS[cls.POSITIVE_TYPE] = cls

    @classmethod
    def from_config(cls, cfg) -> "Assigner":
        """The assigner configured from ``cfg.MODEL.ATSS``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, anchors: Union[torch.Tensor, Sequence[torch.Tensor]], gt_boxes: torch.Tensor,
                 gt_labels: torch.Tensor, num_anchors_per_level: Optional[Sequence[int]] = None) -> AssignResult:
        """Assigns the anchors of one image.

        Args:
            anchors: Tensor (N, 4) xyxy, all levels concatenated, or a list of per-level (N_l, 4).
            gt_boxes: Tensor (G, 4) xyxy, same device as the anchors.
            gt_labels: Tensor (G,) int64, class ids 1..C.
            num_anchors_per_level: list of N_l when ``anchors`` is one tensor; defaults to a
                single level (only the ATSS and SSC rules look at levels).

        Returns:
            AssignResult.
        """
        if isinstance(anchors, (list, tuple)):
            num_anchors_per_level = [len(level) for level in anchors]
            anchors = torch.cat(list(anchors), dim=0)
        elif num_anchors_per_level is None:
            num_anchors_per_level = [anchors.shape[0]]
        num_anchors_per_level = [int(n) for n in num_anchors_per_level]
        if sum(num_anchors_per_level) != anchors.shape[0]:
            raise ValueError(f"num_anchors_per_level sums to {sum(num_anchors_per_level)} but there are "
                             f"{anchors.shape[0]} anchors; pass one count per level, in order")
        _check_gts(gt_boxes, gt_labels)
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        if num_gt == 0 or num_anchors == 0:
            return AssignResult(
                labels=torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device),
                matched_gt_inds=torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device))
        result = self._assign(anchors, num_anchors_per_level, gt_boxes, gt_labels.long())
        if logger.isEnabledFor(logging.DEBUG):  # the count costs a device sync: only when logged
            matched = result.matched_gt_inds
            positives_per_gt = torch.bincount(matched[matched >= 0], minlength=num_gt)
            num_without = int((positives_per_gt == 0).sum())
            if num_without:
                logger.debug("%s: %d of %d GT boxes got no positive anchor",
                             type(self).__name__, num_without, num_gt)
        return result

    def _assign(self, anchors, num_anchors_per_level, gt_boxes, gt_labels):
        """Same contract as ``__call__`` with checked inputs, G >= 1 and counts as a list."""
        raise NotImplementedError

    @staticmethod
    def _result(matched_gt_inds, gt_labels):
        """AssignResult with labels taken from the matched GT (0 where there is none)."""
        labels = torch.where(matched_gt_inds >= 0, gt_labels[matched_gt_inds.clamp(min=0)], 0)
        return AssignResult(labels=labels, matched_gt_inds=matched_gt_inds)


class ATSSAssigner(Assigner):
    """Adaptive Training Sample Selection (Zhang et al., CVPR 2020).

    For each GT: on every level take the k = min(topk * A, N_l) anchors whose centres are nearest
    to the GT centre; over all these candidates compute the IoU mean and unbiased std; positives
    are the candidates with IoU >= mean + std whose centre lies inside the GT.

    Args:
        topk (int): candidates per level and anchor per location (``MODEL.ATSS.TOPK``).
        num_anchors_per_location (int): A, anchors per grid cell.
    """

    POSITIVE_TYPE = "ATSS"

    def __init__(self, topk: int = 9, num_anchors_per_location: int = 1):
        self.topk = topk
        self.num_anchors_per_location = num_anchors_per_location

    @classmethod
    def from_config(cls, cfg) -> "ATSSAssigner":
        atss = cfg.MODEL.ATSS
        return cls(atss.TOPK, len(atss.ASPECT_RATIOS) * atss.SCALES_PER_OCTAVE)

    @torch.no_grad()
    def select_candidates(self, anchors: torch.Tensor, gt_boxes: torch.Tensor,
                          num_anchors_per_level: Sequence[int]) -> ATSSCandidates:
        """The per-GT candidate statistics (for ``_assign`` and for visualisation).

        Args:
            anchors: (N, 4) xyxy, levels concatenated.
            gt_boxes: (G, 4) xyxy.
            num_anchors_per_level: list of N_l.

        Returns:
            ATSSCandidates.
        """
        anchor_cx, anchor_cy = box_centres(anchors)
        gt_cx, gt_cy = box_centres(gt_boxes)
        candidates_per_level = []
        level_start = 0
        for level_size in num_anchors_per_level:
            level = slice(level_start, level_start + level_size)
            k = min(self.topk * self.num_anchors_per_location, level_size)
            nearest = [
                _squared_centre_distances(anchor_cx[level], anchor_cy[level], gt_cx[gts], gt_cy[gts])
                .topk(k, dim=1, largest=False).indices
                for gts in _gt_blocks(gt_boxes.shape[0], level_size)
            ]
            candidates_per_level.append(torch.cat(nearest, dim=0) + level_start)
            level_start += level_size
        candidate_inds = torch.cat(candidates_per_level, dim=1)  # (G, K)

        candidate_boxes = anchors[candidate_inds]  # (G, K, 4): small, K = sum of k_l
        candidate_ious = box_iou_plus_one(candidate_boxes, gt_boxes[:, None, :])
        iou_mean = candidate_ious.mean(dim=1)
        iou_std = candidate_ious.std(dim=1)
        iou_threshold = iou_mean + iou_std
        inside = centre_inside(anchor_cx[candidate_inds], anchor_cy[candidate_inds], gt_boxes[:, None, :])
        return ATSSCandidates(
            candidate_inds=candidate_inds, candidate_ious=candidate_ious, iou_mean=iou_mean,
            iou_std=iou_std, iou_threshold=iou_threshold, centre_inside=inside,
            is_positive=(candidate_ious >= iou_threshold[:, None]) & inside)

    def _assign(self, anchors, num_anchors_per_level, gt_boxes, gt_labels):
        candidates = self.select_candidates(anchors, gt_boxes, num_anchors_per_level)
        gt_inds, slots = candidates.is_positive.nonzero(as_tuple=True)
        matched = _pick_highest_iou(candidates.candidate_inds[gt_inds, slots], gt_inds,
                                    candidates.candidate_ious[gt_inds, slots], anchors.shape[0])
        return self._result(matched, gt_labels)


class SSCAssigner(Assigner):
    """Spatial and scale constraints, as in FCOS.

    An anchor is a positive for a GT when its centre lies inside the GT and the largest of its
    distances to the GT's sides, max(l, t, r, b), is within the anchor's level range; among such
    GTs it takes the one with the smallest ("+1") area (ties: lowest GT index).

    Args:
        sizes_of_interest: per level, the (low, high) bounds, inclusive, of max(l, t, r, b).
    """

    POSITIVE_TYPE = "SSC"

    def __init__(self, sizes_of_interest: Sequence[Tuple[float, float]] = SSC_SIZES_OF_INTEREST):
        self.sizes_of_interest = tuple(tuple(bounds) for bounds in sizes_of_interest)

    @classmethod
    def from_config(cls, cfg) -> "SSCAssigner":
        return cls()  # the original's ranges are fixed, not configurable

    def _assign(self, anchors, num_anchors_per_level, gt_boxes, gt_labels):
        if len(num_anchors_per_level) != len(self.sizes_of_interest):
            raise ValueError(f"SSCAssigner has size ranges for {len(self.sizes_of_interest)} levels but "
                             f"got {len(num_anchors_per_level)} levels; pass one (low, high) per level")
        bounds = anchors.new_tensor(self.sizes_of_interest).repeat_interleave(
            torch.tensor(num_anchors_per_level, device=anchors.device), dim=0)  # (N, 2)
        low, high = bounds[:, 0:1], bounds[:, 1:2]
        anchor_cx, anchor_cy = box_centres(anchors)
        anchor_cx, anchor_cy = anchor_cx[:, None], anchor_cy[:, None]
        gt_areas = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1)

        num_anchors = anchors.shape[0]
        best_area = anchors.new_full((num_anchors,), math.inf)
        best_gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
        for gts in _gt_blocks(gt_boxes.shape[0], num_anchors):
            x1, y1, x2, y2 = gt_boxes[gts].unbind(dim=1)
            left, top, right, bottom = anchor_cx - x1, anchor_cy - y1, x2 - anchor_cx, y2 - anchor_cy
            nearest_side = torch.minimum(left, top)
            torch.minimum(nearest_side, torch.minimum(right, bottom), out=nearest_side)
            farthest_side = torch.maximum(left, top, out=left)  # left/top are not needed any more
            torch.maximum(farthest_side, torch.maximum(right, bottom, out=right), out=farthest_side)
            allowed = (nearest_side > CENTRE_MARGIN) & (farthest_side >= low) & (farthest_side <= high)
            block_area, block_gt = torch.where(allowed, gt_areas[gts], math.inf).min(dim=1)
            better = block_area < best_area  # strict: an earlier block (lower GT index) keeps ties
            best_area = torch.where(better, block_area, best_area)
            best_gt = torch.where(better, block_gt + gts.start, best_gt)
        return self._result(torch.where(torch.isinf(best_area), -1, best_gt), gt_labels)


class IoUAssigner(Assigner):
    """RetinaNet-style assignment by IoU thresholds, plus the ATSS centre constraint.

    A ``Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches)`` matches anchors
    to GTs by "+1" IoU: best IoU >= fg -> positive, < bg -> background, in between -> ignored
    (-1); with low-quality matches, each GT's best anchors (ties included) are positives anyway.
    Positives whose centre is not inside their GT are then ignored (-1).

    The (G, N) IoU matrix is built whole, as the Matcher needs it (40 MB for 500 GTs x 20k anchors).
    """

    POSITIVE_TYPE = "IoU"

    def __init__(self, fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.4,
                 allow_low_quality_matches: bool = True):
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches)

    @classmethod
    def from_config(cls, cfg) -> "IoUAssigner":
        atss = cfg.MODEL.ATSS
        return cls(atss.FG_IOU_THRESHOLD, atss.BG_IOU_THRESHOLD, allow_low_quality_matches=True)

    def _assign(self, anchors, num_anchors_per_level, gt_boxes, gt_labels):
        ious = anchors.new_empty((gt_boxes.shape[0], anchors.shape[0]))
        for gts in _gt_blocks(gt_boxes.shape[0], anchors.shape[0]):  # bounds the temporaries
            ious[gts] = box_iou_plus_one(gt_boxes[gts, None, :], anchors[None, :, :])
        matches = self.matcher(ious)
        matched_boxes = gt_boxes[matches.clamp(min=0)]
        anchor_cx, anchor_cy = box_centres(anchors)
        is_matched = matches >= 0
        labels = torch.where(is_matched, gt_labels[matches.clamp(min=0)], 0)
        ignored = (matches == Matcher.BETWEEN_THRESHOLDS) | (
            is_matched & ~centre_inside(anchor_cx, anchor_cy, matched_boxes))
        labels = torch.where(ignored, -1, labels)
        return AssignResult(labels=labels, matched_gt_inds=torch.where(labels > 0, matches, -1))


class TopKAssigner(Assigner):
    """The ``topk`` anchors that best overlap each GT, if their centre is inside it.

    Per GT, anchors (all levels together) are ranked by IoU minus a tiny centre-distance term
    (distance / largest anchor-GT distance in the image / 1000, to break IoU ties towards the
    centre); the best ``topk`` whose centre lies inside the GT are positives.

    Args:
        topk (int): positives per GT at most (``MODEL.ATSS.TOPK``).
    """

    POSITIVE_TYPE = "TOPK"

    def __init__(self, topk: int = 9):
        self.topk = topk

    @classmethod
    def from_config(cls, cfg) -> "TopKAssigner":
        return cls(cfg.MODEL.ATSS.TOPK)

    def _assign(self, anchors, num_anchors_per_level, gt_boxes, gt_labels):
        anchor_cx, anchor_cy = box_centres(anchors)
        gt_cx, gt_cy = box_centres(gt_boxes)
        num_anchors = anchors.shape[0]
        blocks = _gt_blocks(gt_boxes.shape[0], num_anchors)
        # The distance term is normalised by the image-wide maximum, so it needs a first pass.
        max_distance = torch.stack([
            _squared_centre_distances(anchor_cx, anchor_cy, gt_cx[gts], gt_cy[gts]).max() for gts in blocks
        ]).max().sqrt()
        k = min(self.topk, num_anchors)
        best_per_block = []
        for gts in blocks:
            distances = _squared_centre_distances(anchor_cx, anchor_cy, gt_cx[gts], gt_cy[gts]).sqrt_()
            scores = box_iou_plus_one(gt_boxes[gts, None, :], anchors[None, :, :]).sub_(
                distances.div_(max_distance).div_(1000))
            best_per_block.append(scores.topk(k, dim=1).indices)
        top_inds = torch.cat(best_per_block, dim=0)  # (G, k)

        top_ious = box_iou_plus_one(anchors[top_inds], gt_boxes[:, None, :])
        inside = centre_inside(anchor_cx[top_inds], anchor_cy[top_inds], gt_boxes[:, None, :])
        gt_inds, slots = inside.nonzero(as_tuple=True)
        matched = _pick_highest_iou(top_inds[gt_inds, slots], gt_inds, top_ious[gt_inds, slots], num_anchors)
        return self._result(matched, gt_labels)


# The POSITIVE_TYPE names in the order the classes are defined: ATSS, SSC, IoU, TOPK.
POSITIVE_TYPES = tuple(ASSIGNERS)


def build_assigner(cfg) -> Assigner:
    """The assigner for ``cfg.MODEL.ATSS.POSITIVE_TYPE``, configured from ``cfg.MODEL.ATSS``."""
    positive_type = cfg.MODEL.ATSS.POSITIVE_TYPE
    if positive_type not in ASSIGNERS:
        raise ValueError(f"MODEL.ATSS.POSITIVE_TYPE is {positive_type!r}; set it to one of {POSITIVE_TYPES}")
    return ASSIGNERS[positive_type].from_config(cfg)
