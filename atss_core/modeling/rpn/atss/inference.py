"""Turns ATSS head outputs into detections (the original's ``ATSSPostProcessor``).

Per level and image: candidates are the (anchor, class) pairs with ``sigmoid(cls) >
pre_nms_thresh`` (before centerness), ranked by ``sigmoid(cls) * sigmoid(centerness)``; the best
``pre_nms_top_n`` are decoded, clipped to the unpadded image and filtered by ``min_size``, with
``sqrt`` of the product as the reported score. All levels of an image then go through
class-aware NMS, and the ``fpn_post_nms_top_n`` best detections over all classes are kept.

Everything is batched over images and levels: one thresholding pass per level, then a single
ranking, decode, NMS (grouped by image and class) and per-image cap for the whole batch.
"""
from typing import List, Sequence, Tuple

import torch

from atss_core.layers import ml_nms
from atss_core.structures.bounding_box import BoxList
from .box_coder import BoxCoder
from ..utils import flatten_like_anchors

from atss_core.modeling.original_api import make_atss_postprocessor  # noqa: F401 (original API import path)

__all__ = ["ATSSPostProcessor"]


def _rank_within_groups(values, groups):
    """Rank (0 = largest) of every value among those of its group; values, groups: (M,)."""
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(groups[by_value], stable=True)]  # by group, then value
    counts = torch.bincount(groups)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device) - group_start[groups[order]]
    return rank


def keep_top_per_group(scores, groups, top_n):
    """Mask (M,) of the entries whose score is at least the ``top_n``-th best of their group:
    ties with it survive, as with the original's kthvalue threshold. All True when
    ``top_n <= 0`` or a group has no more than ``top_n`` entries. scores, groups: (M,)."""
    if top_n <= 0 or len(scores) == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    rank = _rank_within_groups(scores, groups)
    nth_best = torch.full((int(groups.max()) + 1,), -float("inf"), device=scores.device, dtype=scores.dtype)
    at_cap = rank == top_n - 1
    nth_best[groups[at_cap]] = scores[at_cap]
    return scores >= nth_best[groups]


class _Detections:
    """Flat detections of a whole batch, each row tagged with its image: ``image`` (M,) int64,
    ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,) int64 in 1..C."""

    def __init__(self, image, boxes, scores, labels):
        self.image, self.boxes, self.scores, self.labels = image, boxes, scores, labels

    def __getitem__(self, index):
        return _Detections(self.image[index], self.boxes[index], self.scores[index], self.labels[index])

    def to_boxlists(self, image_sizes_wh):
        """One ``BoxList`` per image, rows in their current relative order, fields ``labels`` and
        ``scores``."""
        counts = torch.bincount(self.image, minlength=len(image_sizes_wh)).tolist()
        by_image = self[torch.argsort(self.image, stable=True)]
        results = []
        for boxes, labels, scores, size in zip(by_image.boxes.split(counts), by_image.labels.split(counts),
                                               by_image.scores.split(counts), image_sizes_wh):
            boxlist = BoxList(boxes, size, mode="xyxy")
            boxlist.add_field("labels", labels)
            boxlist.add_field("scores", scores)
            results.append(boxlist)
        return results


class ATSSPostProcessor(torch.nn.Module):
    """Detections from ATSS head outputs; see the module docstring for the steps.

    forward(box_cls, box_regression, centerness, anchors, image_sizes):
        box_cls: list of L ``(N, A*C, H_l, W_l)`` logits; box_regression: list of L
        ``(N, A*4, H_l, W_l)``; centerness: list of L ``(N, A, H_l, W_l)`` logits;
        anchors: list of L ``(H_l*W_l*A, 4)`` xyxy, shared by the images; image_sizes: N unpadded
        (H, W), as ``ImageList.image_sizes``.
    Returns a list of N BoxList (xyxy, size (W, H)) with fields ``labels`` (int64, 1..C) and ``scores``, in
    descending score order. With ``bbox_aug_enabled`` and not ``bbox_aug_vote`` (test-time
    augmentation merges first) the candidates before NMS are returned instead.
    """

    def __init__(self, pre_nms_thresh: float, pre_nms_top_n: int, nms_thresh: float, fpn_post_nms_top_n: int,
                 min_size: float, num_classes: int, box_coder: BoxCoder, bbox_aug_enabled: bool = False,
                 bbox_aug_vote: bool = False):
        super().__init__()
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.fpn_post_nms_top_n = fpn_post_nms_top_n
        self.min_size = min_size
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.bbox_aug_enabled = bbox_aug_enabled
        self.bbox_aug_vote = bbox_aug_vote

    @classmethod
    def from_config(cls, cfg, box_coder: BoxCoder) -> "ATSSPostProcessor":
        return cls(
            pre_nms_thresh=cfg.MODEL.ATSS.INFERENCE_TH,
            pre_nms_top_n=cfg.MODEL.ATSS.PRE_NMS_TOP_N,
            nms_thresh=cfg.MODEL.ATSS.NMS_TH,
            fpn_post_nms_top_n=cfg.TEST.DETECTIONS_PER_IMG,
            min_size=0,
            num_classes=cfg.MODEL.ATSS.NUM_CLASSES,
            box_coder=box_coder,
            bbox_aug_enabled=cfg.TEST.BBOX_AUG.ENABLED,
            bbox_aug_vote=cfg.TEST.BBOX_AUG.VOTE,
        )

    def _candidates(self, box_cls, box_regression, centerness, anchors, image_sizes):
        """Thresholded, per-(image, level) top-k, decoded, clipped and size-filtered candidates
        (scores already square-rooted)."""
        anchors_per_image = sum(len(level) for level in anchors)
        # Candidates are addressed by "row", an index into the (N * anchors_per_image) anchors of
        # the whole batch, all levels concatenated; 1-D gathers keep the indexing cheap.
        rows, labels, scores, levels = [], [], [], []
        first_anchor = 0
        for level, (cls_logits, ctr_logits) in enumerate(zip(box_cls, centerness)):
            num_classes = cls_logits.size(1) // ctr_logits.size(1)
            cls_prob = flatten_like_anchors(cls_logits, num_classes).sigmoid()  # (N, HWA, C)
            ctr_prob = flatten_like_anchors(ctr_logits, 1).sigmoid().view(-1)  # (N * HWA)
            level_anchors = cls_prob.size(1)
            flat = (cls_prob > self.pre_nms_thresh).view(-1).nonzero().squeeze(1)  # into (N, HWA, C)
            anchor = flat // num_classes  # into (N * HWA)
            scores.append(cls_prob.view(-1)[flat] * ctr_prob[anchor])
            image, anchor_in_level = anchor // level_anchors, anchor % level_anchors
            rows.append(image * anchors_per_image + first_anchor + anchor_in_level)
            labels.append(flat % num_classes + 1)
            levels.append(torch.full_like(flat, level))
            first_anchor += level_anchors
        row, label, score, level = map(torch.cat, (rows, labels, scores, levels))
        image = row // anchors_per_image

        top = _rank_within_groups(score, image * len(box_cls) + level) < self.pre_nms_top_n
        row, image, label, score = row[top], image[top], label[top], score[top]

        # Gather regressions and anchors of the survivors only, then decode them in one call.
        regression = torch.cat([flatten_like_anchors(r, 4) for r in box_regression], dim=1).view(-1, 4)
        anchor_boxes = torch.cat(list(anchors))
        boxes = self.box_coder.decode(regression[row], anchor_boxes[row % anchors_per_image])

        # clip_to_image: x to [0, W - 1], y to [0, H - 1] of each unpadded image
        limits = torch.tensor([(int(w), int(h)) for h, w in image_sizes], dtype=boxes.dtype,
                              device=boxes.device) - 1
        boxes = torch.minimum(boxes.clamp(min=0), limits[image].repeat(1, 2))
        # remove_small_boxes with the legacy "+1" sizes (with min_size 0 it only drops NaN boxes)
        keep = (boxes[:, 2:] - boxes[:, :2] + 1 >= self.min_size).all(dim=1)
        return _Detections(image, boxes, score.sqrt(), label)[keep]

    def forward(self, box_cls: Sequence[torch.Tensor], box_regression: Sequence[torch.Tensor],
                centerness: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                image_sizes: Sequence[Tuple[int, int]]) -> List[BoxList]:
        candidates = self._candidates(box_cls, box_regression, centerness, anchors, image_sizes)
        image_sizes_wh = [(int(w), int(h)) for h, w in image_sizes]
        if self.bbox_aug_enabled and not self.bbox_aug_vote:
            return candidates.to_boxlists(image_sizes_wh)
        return self.select_over_all_levels(candidates).to_boxlists(image_sizes_wh)

    def select_over_all_levels(self, candidates):
        """Class-aware NMS per image, then the ``fpn_post_nms_top_n`` best per image.

        Takes and returns batch-wide ``_Detections``; the result is sorted by descending score.
        """
        # One NMS call for the whole batch: each (image, class) pair is its own group, so boxes
        # of different images or classes never suppress each other.
        groups = candidates.image * (self.num_classes + 1) + candidates.labels
        kept = candidates[ml_nms(candidates.boxes, candidates.scores, groups, self.nms_thresh)]
        kept = kept[torch.argsort(kept.scores, descending=True, stable=True)]
        return kept[keep_top_per_group(kept.scores, kept.image, self.fpn_post_nms_top_n)]
