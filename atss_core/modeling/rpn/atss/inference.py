"""Turns ATSS head outputs into detections (the original's ``ATSSPostProcessor``).

Per level and image: candidates are the (anchor, class) pairs with ``sigmoid(cls) >
pre_nms_thresh`` (before centerness), ranked by ``sigmoid(cls) * sigmoid(centerness)``; the best
``pre_nms_top_n`` are decoded, clipped to the unpadded image and filtered by ``min_size``, with
``sqrt`` of the product as the reported score. All levels of an image then go through
class-aware NMS, and the ``fpn_post_nms_top_n`` best detections over all classes are kept.

Everything is batched over images and levels: one thresholding pass per level, then a single
ranking, decode, NMS (grouped by image and class) and per-image cap for the whole batch.
"""
import torch

from atss_core.layers import ml_nms
from atss_core.structures.bounding_box import BoxList
from ..utils import flatten_like_anchors

__all__ = ["ATSSPostProcessor", "make_atss_postprocessor"]


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

    forward(box_cls, box_regression, centerness, anchors):
        box_cls: list of L ``(N, A*C, H_l, W_l)`` logits; box_regression: list of L
        ``(N, A*4, H_l, W_l)``; centerness: list of L ``(N, A, H_l, W_l)`` logits;
        anchors: ``anchors[image][level]`` BoxList ``(H_l*W_l*A, 4)`` whose ``size`` is the
        unpadded image (W, H).
    Returns a list of N BoxList (xyxy) with fields ``labels`` (int64, 1..C) and ``scores``, in
    descending score order. With ``bbox_aug_enabled`` and not ``bbox_aug_vote`` (test-time
    augmentation merges first) the candidates before NMS are returned instead.
    """

    def __init__(self, pre_nms_thresh, pre_nms_top_n, nms_thresh, fpn_post_nms_top_n, min_size,
                 num_classes, box_coder, bbox_aug_enabled=False, bbox_aug_vote=False):
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

    def _candidates(self, box_cls, box_regression, centerness, anchors):
        """Thresholded, per-(image, level) top-k, decoded, clipped and size-filtered candidates.

        Returns the candidates (scores already square-rooted) and the images' (W, H) sizes.
        """
        anchors_per_image = sum(a.bbox.size(0) for a in anchors[0])
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
        anchor_boxes = torch.cat([a.bbox for per_image in anchors for a in per_image])
        boxes = self.box_coder.decode(regression[row], anchor_boxes[row])

        # clip_to_image: x to [0, W - 1], y to [0, H - 1] of each unpadded image
        image_sizes_wh = [per_image[0].size for per_image in anchors]
        limits = torch.tensor(image_sizes_wh, dtype=boxes.dtype, device=boxes.device) - 1
        boxes = torch.minimum(boxes.clamp(min=0), limits[image].repeat(1, 2))
        # remove_small_boxes with the legacy "+1" sizes (with min_size 0 it only drops NaN boxes)
        keep = (boxes[:, 2:] - boxes[:, :2] + 1 >= self.min_size).all(dim=1)
        return _Detections(image, boxes, score.sqrt(), label)[keep], image_sizes_wh

    def forward_for_single_feature_map(self, box_cls, box_regression, centerness, anchors):
        """One level: ``anchors`` is that level's BoxList per image. Returns one BoxList per image
        (the candidates before NMS)."""
        candidates, image_sizes_wh = self._candidates(
            [box_cls], [box_regression], [centerness], [[a] for a in anchors])
        return candidates.to_boxlists(image_sizes_wh)

    def forward(self, box_cls, box_regression, centerness, anchors):
        candidates, image_sizes_wh = self._candidates(box_cls, box_regression, centerness, anchors)
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


def make_atss_postprocessor(config, box_coder):
    return ATSSPostProcessor(
        pre_nms_thresh=config.MODEL.ATSS.INFERENCE_TH,
        pre_nms_top_n=config.MODEL.ATSS.PRE_NMS_TOP_N,
        nms_thresh=config.MODEL.ATSS.NMS_TH,
        fpn_post_nms_top_n=config.TEST.DETECTIONS_PER_IMG,
        min_size=0,
        num_classes=config.MODEL.ATSS.NUM_CLASSES,
        box_coder=box_coder,
        bbox_aug_enabled=config.TEST.BBOX_AUG.ENABLED,
        bbox_aug_vote=config.TEST.BBOX_AUG.VOTE,
    )
