"""Test-time augmentation for box detection (``TEST.BBOX_AUG``).

The model runs on each image at the test scale, optionally flipped (``H_FLIP``), and at every
extra shorter-side length of ``SCALES`` (flipped too with ``SCALE_H_FLIP``). All detections are
mapped back to the coordinates of the test-scale input and merged, either

* by class-aware NMS at ``MODEL.ATSS.NMS_TH`` keeping ``TEST.DETECTIONS_PER_IMG`` (``VOTE`` off;
  the model then returns its candidates before NMS), or
* by box voting (``VOTE`` on; each pass is already NMS-ed by the model): boxes of one class that
  overlap a higher-scored one by IoU >= ``VOTE_TH`` are averaged into it, weighted by score
  (``MERGE_TYPE`` "vote"); "soft-vote" also keeps the merged boxes with their score damped by
  (1 - IoU). With voting, each extra scale only contributes boxes whose sqrt(area) lies in its
  ``SCALE_RANGES`` entry, and the merged result keeps the ``MODEL.ATSS.PRE_NMS_TOP_N`` best.
"""
import torch
import torchvision.transforms as TT
import torchvision.transforms.functional as TF

from atss_core.data import transforms as T
from atss_core.modeling.rpn.atss.inference import keep_top_per_group
from atss_core.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList
from atss_core.structures.boxlist_ops import box_iou_plus_one, boxlist_ml_nms, cat_boxlist
from atss_core.structures.image_list import to_image_list

__all__ = [
    "im_detect_bbox_aug",
    "im_detect_bbox",
    "im_detect_bbox_hflip",
    "im_detect_bbox_scale",
    "remove_boxes",
    "merge_result_from_multi_scales",
    "boxlist_vote",
    "keep_top_scores",
]

# The original caps the longer side of extra scales below the usual 800-pixel test scale at
# INPUT.MAX_SIZE_TEST instead of BBOX_AUG.MAX_SIZE (voting path only).
_SMALL_SCALE = 800


def im_detect_bbox_aug(model, images, device, cfg):
    """Detections of ``model`` on ``images`` under all augmentations ``cfg`` configures, merged.

    images: sequence of N PIL images at their original size (what ``BBoxAugCollator`` yields).
    cfg: the config (``TEST.BBOX_AUG``, ``INPUT``, ``DATALOADER.SIZE_DIVISIBILITY``, ``MODEL.ATSS``
    NMS settings, ``TEST.DETECTIONS_PER_IMG``).
    Returns N BoxList (xyxy, fields ``scores`` and ``labels``) whose ``size`` is the (W, H) of
    the image resized to ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``.
    """
    aug = cfg.TEST.BBOX_AUG
    if aug.VOTE and len(aug.SCALE_RANGES) < len(aug.SCALES):
        raise ValueError(f"TEST.BBOX_AUG.SCALE_RANGES has {len(aug.SCALE_RANGES)} entries for "
                         f"{len(aug.SCALES)} SCALES; give one (min, max) size range per scale")

    # (shorter side, longer-side cap, flipped, size range or None) per pass; the first is the reference
    passes = [(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, False, None)]
    if aug.H_FLIP:
        passes.append((cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, True, None))
    for index, scale in enumerate(aug.SCALES):
        max_size, size_range = aug.MAX_SIZE, None
        if aug.VOTE:
            size_range = aug.SCALE_RANGES[index]
            if scale < _SMALL_SCALE:
                max_size = cfg.INPUT.MAX_SIZE_TEST
        passes.append((scale, max_size, False, size_range))
        if aug.SCALE_H_FLIP:
            passes.append((scale, max_size, True, size_range))

    detections_per_pass = []
    for scale, max_size, hflip, size_range in passes:
        boxlists = im_detect_bbox_scale(model, images, scale, max_size, device, cfg, hflip=hflip)
        if size_range is not None:
            boxlists = remove_boxes(boxlists, *size_range)
        detections_per_pass.append(boxlists)

    merged = []
    for per_image in zip(*detections_per_pass):
        reference_size = per_image[0].size
        parts = [_scores_and_labels_only(boxlist.resize(reference_size)) for boxlist in per_image]
        merged.append(cat_boxlist(parts))

    if aug.VOTE:
        atss = cfg.MODEL.ATSS
        return merge_result_from_multi_scales(merged, aug.MERGE_TYPE, aug.VOTE_TH, nms_thresh=atss.NMS_TH,
                                              max_detections=atss.PRE_NMS_TOP_N,
                                              soft_vote_score_thresh=atss.INFERENCE_TH)
    return [keep_top_scores(boxlist_ml_nms(boxlist, cfg.MODEL.ATSS.NMS_TH), cfg.TEST.DETECTIONS_PER_IMG)
            for boxlist in merged]


def _scores_and_labels_only(boxlist):
    """Copy of ``boxlist`` (xyxy) with only its ``scores`` and ``labels`` fields."""
    boxlist = boxlist.convert("xyxy")
    result = BoxList(boxlist.bbox, boxlist.size, mode="xyxy")
    result.add_field("scores", boxlist.get_field("scores"))
    result.add_field("labels", boxlist.get_field("labels"))
    return result


def im_detect_bbox(model, images, target_scale, target_max_size, device, cfg, hflip=False):
    """Run ``model`` on ``images`` resized to shorter side ``target_scale`` (longer side at most
    ``target_max_size``), horizontally flipped first when ``hflip``, normalised and batched as
    ``cfg``'s ``INPUT`` and ``DATALOADER.SIZE_DIVISIBILITY`` say.

    Returns the model's BoxLists, in the (possibly flipped) resized image's coordinates.
    """
    steps = [T.Resize(target_scale, target_max_size)]
    if hflip:
        steps.append(TF.hflip)
    steps += [TT.ToTensor(), T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD,
                                         to_bgr255=cfg.INPUT.TO_BGR255)]
    transform = TT.Compose(steps)
    batch = to_image_list([transform(image) for image in images], cfg.DATALOADER.SIZE_DIVISIBILITY)
    return model(batch.to(device))


def im_detect_bbox_hflip(model, images, target_scale, target_max_size, device, cfg):
    """Detections on the flipped resized images, flipped back (``x' = W - x - 1``) so they lie
    in the unflipped resized images' coordinates."""
    boxlists = im_detect_bbox(model, images, target_scale, target_max_size, device, cfg, hflip=True)
    return [boxlist.transpose(FLIP_LEFT_RIGHT) for boxlist in boxlists]


def im_detect_bbox_scale(model, images, target_scale, target_max_size, device, cfg, hflip=False):
    """Detections at one scale, optionally on the flipped image (returned unflipped), in the
    coordinates of the image resized to that scale."""
    if hflip:
        return im_detect_bbox_hflip(model, images, target_scale, target_max_size, device, cfg)
    return im_detect_bbox(model, images, target_scale, target_max_size, device, cfg)


def remove_boxes(boxlists, min_scale, max_scale):
    """Keep, per BoxList, the boxes with ``min_scale**2 < area < max_scale**2`` ("+1" areas)."""
    kept = []
    for boxlist in boxlists:
        areas = boxlist.area()
        kept.append(boxlist[(areas > min_scale * min_scale) & (areas < max_scale * max_scale)])
    return kept


def merge_result_from_multi_scales(boxlists, nms_type="vote", vote_thresh=0.66, *, nms_thresh,
                                   max_detections, soft_vote_score_thresh):
    """Merge each image's pooled detections by box voting, then keep the ``max_detections`` best
    (the original caps this path at ``MODEL.ATSS.PRE_NMS_TOP_N``).

    boxlists: N BoxList (xyxy) with fields ``scores`` and ``labels``. ``nms_type``: "vote" or
    "soft-vote"; soft-vote keeps damped copies scoring at least ``soft_vote_score_thresh``
    (``MODEL.ATSS.INFERENCE_TH``). ``nms_thresh`` (``MODEL.ATSS.NMS_TH``) <= 0 skips the voting.
    """
    if nms_type not in ("vote", "soft-vote"):
        raise ValueError(f"TEST.BBOX_AUG.MERGE_TYPE must be 'vote' or 'soft-vote', got {nms_type!r}")
    soft_score_thresh = soft_vote_score_thresh if nms_type == "soft-vote" else None
    results = []
    for boxlist in boxlists:
        # the original skips merging altogether when NMS is disabled (NMS_TH <= 0)
        if nms_thresh > 0:
            boxlist = boxlist_vote(boxlist, vote_thresh, soft_score_thresh)
        results.append(keep_top_scores(boxlist, max_detections))
    return results


def boxlist_vote(boxlist, vote_thresh, soft_score_thresh=None):
    """Class-aware box voting.

    Within each class, in descending score order, a box that no earlier *seed* overlaps with
    IoU ("+1" convention) >= ``vote_thresh`` becomes a seed; every other box joins the first seed
    that overlaps it (the clusters of greedy NMS). A cluster of one box is kept unchanged; a
    larger one becomes the score-weighted mean of its boxes with the seed's (maximum) score.
    With ``soft_score_thresh``, each member of a larger cluster is also kept, with score
    ``score * (1 - IoU with the seed)``, when that is >= ``soft_score_thresh``.

    boxlist: BoxList (xyxy), fields ``scores`` (K,) and ``labels`` (K,). Returns a BoxList with
    the same size and those two fields, ordered by label, then by descending score.
    """
    boxlist = _scores_and_labels_only(boxlist)
    if len(boxlist) == 0:
        return boxlist
    scores, labels = boxlist.get_field("scores"), boxlist.get_field("labels")
    # by label, then descending score; stable, whereas the original's numpy argsort leaves the
    # order of equal scores unspecified
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    boxes, scores, labels = boxlist.bbox[order], scores[order], labels[order]

    first, later = _same_label_pairs(labels)
    overlapping = box_iou_plus_one(boxes[first], boxes[later]) >= vote_thresh
    first, later = first[overlapping], later[overlapping]
    is_seed = _greedy_seeds(len(boxes), first, later)
    # each box's first (best-scored) overlapping seed; seeds are their own
    positions = torch.arange(len(boxes), device=boxes.device)
    from_seed = is_seed[first]
    seed_of = positions.scatter_reduce(0, later[from_seed], first[from_seed], reduce="amin")
    seed_of = torch.where(is_seed, positions, seed_of)

    cluster_of = (torch.cumsum(is_seed, 0) - 1)[seed_of]  # clusters numbered in seed order
    seed_index = is_seed.nonzero().squeeze(1)
    num_clusters = len(seed_index)
    cluster_size = torch.bincount(cluster_of, minlength=num_clusters)
    weighted_boxes = boxes.new_zeros((num_clusters, 4)).index_add_(0, cluster_of, boxes * scores[:, None])
    score_sums = scores.new_zeros(num_clusters).index_add_(0, cluster_of, scores)
    merged = cluster_size > 1
    out_boxes = torch.where(merged[:, None], weighted_boxes / score_sums[:, None], boxes[seed_index])
    out_scores, out_labels = scores[seed_index], labels[seed_index]

    if soft_score_thresh is not None:
        damped = scores * (1 - box_iou_plus_one(boxes[seed_of], boxes))
        soft = merged[cluster_of] & (damped >= soft_score_thresh)
        out_boxes = torch.cat([out_boxes, boxes[soft]])
        out_scores = torch.cat([out_scores, damped[soft]])
        out_labels = torch.cat([out_labels, labels[soft]])
        order = torch.argsort(out_scores, descending=True, stable=True)
        order = order[torch.argsort(out_labels[order], stable=True)]
        out_boxes, out_scores, out_labels = out_boxes[order], out_scores[order], out_labels[order]

    result = BoxList(out_boxes, boxlist.size, mode="xyxy")
    result.add_field("scores", out_scores)
    result.add_field("labels", out_labels)
    return result


def _same_label_pairs(labels):
    """All index pairs (i, j), i < j, with equal labels, for ``labels`` (K,) sorted ascending.

    Returns two (P,) int64 tensors ``first`` and ``later``; P = sum over labels of n(n-1)/2.
    """
    positions = torch.arange(len(labels), device=labels.device)
    _, counts = torch.unique_consecutive(labels, return_counts=True)
    segment_end = torch.repeat_interleave(torch.cumsum(counts, 0), counts)  # (K,) one past the label's last box
    num_later = segment_end - positions - 1
    first = torch.repeat_interleave(positions, num_later)
    pair_start = torch.repeat_interleave(torch.cumsum(num_later, 0) - num_later, num_later)
    later = first + 1 + torch.arange(len(first), device=labels.device) - pair_start
    return first, later


def _greedy_seeds(count, first, later):
    """Survivors of greedy NMS over ``count`` boxes in priority order, given the overlapping
    pairs ``(first[p], later[p])`` (first < later: ``first`` would suppress ``later``).

    Box j survives iff no surviving box before it overlaps it. Iterating that rule from "all
    survive" settles at least one more box per round (earlier boxes never depend on later
    ones), so it reaches the unique fixed point -- the greedy result -- after as many rounds as
    the longest suppression chain. Returns (count,) bool.
    """
    keep = torch.ones(count, dtype=torch.bool, device=first.device)
    while True:
        suppressed = torch.zeros(count, dtype=torch.int32, device=first.device)
        suppressed.index_add_(0, later, keep[first].to(torch.int32))
        new_keep = suppressed == 0
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def keep_top_scores(boxlist, max_detections):
    """The ``max_detections`` highest-scored boxes of ``boxlist`` (all boxes whose score ties with
    the last one are kept, like the original's kthvalue threshold); no cap when <= 0."""
    scores = boxlist.get_field("scores")
    return boxlist[keep_top_per_group(scores, torch.zeros_like(scores, dtype=torch.int64), max_detections)]
