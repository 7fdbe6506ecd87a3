"""PASCAL VOC detection evaluation (average precision per class at one IoU threshold).

Follows the original's port of chainercv's ``eval_detection_voc``: each detection, in
descending score order within its class, is matched to the same-class ground truth it overlaps
most; it is a true positive when that overlap reaches the threshold and the ground truth was not
claimed before, ignored when the ground truth is "difficult", a false positive otherwise.
"""
import os

import numpy as np
import torch

from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import boxlist_iou

__all__ = ["do_voc_evaluation", "eval_detection_voc", "calc_detection_voc_prec_rec", "calc_detection_voc_ap"]


def do_voc_evaluation(dataset, predictions, output_folder, logger):
    """VOC07 11-point mAP at IoU 0.5 of ``predictions`` (one BoxList per dataset index).

    Predictions are rescaled to the original image size first. Writes ``result.txt`` (mAP and
    per-class AP) into ``output_folder`` when given. Returns ``{"ap": (K,) array, "map": float}``.
    """
    pred_boxlists, gt_boxlists = [], []
    for index, prediction in enumerate(predictions):
        info = dataset.get_img_info(index)
        pred_boxlists.append(prediction.resize((info["width"], info["height"])))
        gt_boxlists.append(dataset.get_groundtruth(index))
    result = eval_detection_voc(pred_boxlists, gt_boxlists, iou_thresh=0.5, use_07_metric=True)
    lines = [f"mAP: {result['map']:.4f}"]
    lines += [f"{dataset.map_class_id_to_class_name(label):<16}: {ap:.4f}"
              for label, ap in enumerate(result["ap"]) if label > 0]  # label 0 is the background
    result_str = "\n".join(lines) + "\n"
    logger.info(result_str)
    if output_folder:
        with open(os.path.join(output_folder, "result.txt"), "w") as f:
            f.write(result_str)
    return result


def eval_detection_voc(pred_boxlists, gt_boxlists, iou_thresh=0.5, use_07_metric=False):
    """AP per label and their nan-mean.

    pred_boxlists: BoxLists with fields ``labels`` and ``scores``; gt_boxlists: BoxLists (same
    image sizes) with fields ``labels`` and ``difficult`` (bool). Returns
    ``{"ap": (K,) float array, nan for labels without ground truth, "map": float}``.
    """
    if len(gt_boxlists) != len(pred_boxlists):
        raise ValueError(f"got {len(pred_boxlists)} prediction lists for {len(gt_boxlists)} ground-truth "
                         f"lists; pass one of each per image")
    prec, rec = calc_detection_voc_prec_rec(gt_boxlists, pred_boxlists, iou_thresh=iou_thresh)
    ap = calc_detection_voc_ap(prec, rec, use_07_metric=use_07_metric)
    return {"ap": ap, "map": np.nanmean(ap)}


def _match_image(gt_boxlist, pred_boxlist, iou_thresh):
    """Match one image's detections. Returns (labels (P,), scores (P,), match (P,) int8 in
    {1 true positive, 0 false positive, -1 ignored}, non-difficult gt count per label (bincount))."""
    pred_labels = pred_boxlist.get_field("labels").cpu().long()
    pred_scores = pred_boxlist.get_field("scores").cpu()
    gt_labels = gt_boxlist.get_field("labels").cpu().long()
    gt_difficult = gt_boxlist.get_field("difficult").cpu().bool()
    positives = torch.bincount(gt_labels[~gt_difficult], minlength=1)

    match = torch.zeros(len(pred_labels), dtype=torch.int8)
    if len(pred_labels) and len(gt_labels):
        # VOC boxes are integer pixel ranges: the original adds 1 to x2/y2 before an IoU that
        # itself uses "+1" widths, so widths are effectively x2 - x1 + 2. Kept for equal numbers.
        shift = torch.tensor([0.0, 0.0, 1.0, 1.0])
        iou = boxlist_iou(BoxList(pred_boxlist.bbox.cpu() + shift, gt_boxlist.size),
                          BoxList(gt_boxlist.bbox.cpu() + shift, gt_boxlist.size))
        iou = iou.masked_fill(pred_labels[:, None] != gt_labels[None, :], -1.0)
        best_iou, gt_index = iou.max(dim=1)
        matched = best_iou >= iou_thresh
        # rank of each detection in descending score order; the best-ranked claimant of a
        # ground truth is the true positive, later ones are duplicates
        rank = torch.empty_like(pred_labels)
        rank[torch.argsort(pred_scores, descending=True, stable=True)] = torch.arange(len(rank))
        first_claim = torch.full((len(gt_labels),), len(rank), dtype=rank.dtype)
        first_claim.scatter_reduce_(0, gt_index[matched], rank[matched], reduce="amin")
        is_first = matched & (rank == first_claim[gt_index])
        match[is_first] = 1
        match[matched & gt_difficult[gt_index]] = -1
    return pred_labels, pred_scores, match, positives


def calc_detection_voc_prec_rec(gt_boxlists, pred_boxlists, iou_thresh=0.5):
    """Precision and recall curves per label, over detections of all images in score order.

    Returns two lists indexed by label (length = largest label seen + 1): ``prec[l]`` and
    ``rec[l]`` are arrays over label ``l``'s detections, or None for labels never seen
    (``rec[l]`` is also None when ``l`` has no non-difficult ground truth).
    """
    per_image = [_match_image(gt, pred, iou_thresh) for gt, pred in zip(gt_boxlists, pred_boxlists)]
    labels = torch.cat([p[0] for p in per_image]).numpy()
    scores = torch.cat([p[1] for p in per_image]).numpy()
    match = torch.cat([p[2] for p in per_image]).numpy()
    gt_labels = np.concatenate([gt.get_field("labels").cpu().long().numpy() for gt in gt_boxlists])
    seen = np.union1d(labels, gt_labels).astype(np.int64)
    num_labels = int(seen.max()) + 1 if len(seen) else 0
    positives = np.zeros(num_labels, dtype=np.int64)
    for counts in (p[3].numpy() for p in per_image):
        positives[: len(counts)] += counts

    # sort by label, then by descending score; cumulate tp/fp within each label's segment
    order = np.lexsort((-scores, labels))
    labels, match = labels[order], match[order]
    tp = np.cumsum(match == 1)
    fp = np.cumsum(match == 0)
    segment_start = np.searchsorted(labels, labels, side="left")
    tp_before = np.where(segment_start > 0, tp[segment_start - 1], 0)
    fp_before = np.where(segment_start > 0, fp[segment_start - 1], 0)
    tp, fp = tp - tp_before, fp - fp_before
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)  # nan where only ignored detections came so far
    bounds = np.searchsorted(labels, np.arange(num_labels + 1))

    prec, rec = [None] * num_labels, [None] * num_labels
    for label in seen:  # slicing per label; the arithmetic above is done once for all
        start, end = bounds[label], bounds[label + 1]
        prec[label] = precision[start:end]
        if positives[label] > 0:
            rec[label] = tp[start:end] / positives[label]
    return prec, rec


def calc_detection_voc_ap(prec, rec, use_07_metric=False):
    """Average precision per label from ``calc_detection_voc_prec_rec``'s curves.

    ``use_07_metric``: VOC2007's 11-point interpolation (recall 0, 0.1, ..., 1); otherwise the
    area under the monotone precision envelope. Labels with a None curve get nan.
    """
    ap = np.full(len(prec), np.nan)
    recall_points = np.arange(0.0, 1.1, 0.1)
    for label, (precision, recall) in enumerate(zip(prec, rec)):
        if precision is None or recall is None:
            continue
        precision = np.nan_to_num(precision)
        if use_07_metric:
            reached = recall[None, :] >= recall_points[:, None]  # (11, D)
            best = np.where(reached, precision[None, :], 0).max(axis=1, initial=0)
            ap[label] = np.sum(best / 11)
        else:
            envelope = np.concatenate(([0], precision, [0]))
            envelope = np.maximum.accumulate(envelope[::-1])[::-1]
            recall = np.concatenate(([0], recall, [1]))
            steps = np.nonzero(recall[1:] != recall[:-1])[0]
            ap[label] = np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1])
    return ap
