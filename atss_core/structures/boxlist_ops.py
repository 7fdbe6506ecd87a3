"""Operations on ``BoxList``: IoU, NMS, concatenation, filtering."""
import torch

from .bounding_box import BoxList

# Width of a one-pixel box under the inclusive pixel convention (see bounding_box.py).
_TO_REMOVE = 1


def _select_after_nms(boxlist, keep, max_proposals):
    if max_proposals > 0:
        keep = keep[:max_proposals]
    return boxlist[keep]


def boxlist_nms(boxlist, nms_thresh, max_proposals=-1, score_field="scores"):
    """Non-maximum suppression over all boxes, ranked by the field ``score_field``.

    Args:
        boxlist: N boxes with a (N,) score field.
        nms_thresh: IoU threshold; a value <= 0 disables NMS and returns ``boxlist``.
        max_proposals: if > 0, keep at most this many of the boxes NMS returns, in its order.

    Returns:
        The kept boxes, in ``boxlist``'s mode.
    """
    from atss_core.layers import nms  # late import: structures must not depend on layers

    if nms_thresh <= 0:
        return boxlist
    xyxy = boxlist.convert("xyxy")
    keep = nms(xyxy.bbox, xyxy.get_field(score_field), nms_thresh)
    return _select_after_nms(xyxy, keep, max_proposals).convert(boxlist.mode)


def boxlist_ml_nms(boxlist, nms_thresh, max_proposals=-1, score_field="scores",
                   label_field="labels"):
    """Class-aware NMS: boxes only suppress boxes carrying the same ``label_field`` value.

    Same arguments and return value as :func:`boxlist_nms`.
    """
    from atss_core.layers import ml_nms  # late import: structures must not depend on layers

    if nms_thresh <= 0:
        return boxlist
    xyxy = boxlist.convert("xyxy")
    keep = ml_nms(xyxy.bbox, xyxy.get_field(score_field), xyxy.get_field(label_field),
                  nms_thresh)
    return _select_after_nms(xyxy, keep, max_proposals).convert(boxlist.mode)


def remove_small_boxes(boxlist, min_size):
    """Keep the boxes whose width and height (inclusive, ``x2 - x1 + 1``) are >= ``min_size``."""
    widths_heights = boxlist.convert("xywh").bbox[:, 2:]
    keep = (widths_heights >= min_size).all(dim=1)
    return boxlist[keep]


def boxlist_iou(boxlist1, boxlist2):
    """Pairwise IoU of two box sets of the same image, with inclusive ("+1") pixel areas.

    Args:
        boxlist1: N boxes.
        boxlist2: M boxes; must have the same ``size`` as ``boxlist1``.

    Returns:
        (N, M) tensor: IoU of box i of ``boxlist1`` with box j of ``boxlist2``.
    """
    if boxlist1.size != boxlist2.size:
        raise RuntimeError(
            f"boxlist_iou needs boxes of one image size, got {boxlist1.size} and "
            f"{boxlist2.size} (width, height); give both BoxLists the same, unpadded size")
    boxlist1, boxlist2 = boxlist1.convert("xyxy"), boxlist2.convert("xyxy")
    area1, area2 = boxlist1.area(), boxlist2.area()
    box1, box2 = boxlist1.bbox, boxlist2.bbox

    top_left = torch.max(box1[:, None, :2], box2[:, :2])  # (N, M, 2)
    bottom_right = torch.min(box1[:, None, 2:], box2[:, 2:])  # (N, M, 2)
    overlap_wh = (bottom_right - top_left + _TO_REMOVE).clamp(min=0)  # (N, M, 2)
    intersection = overlap_wh[..., 0] * overlap_wh[..., 1]  # (N, M)
    return intersection / (area1[:, None] + area2 - intersection)


def cat_boxlist(bboxes):
    """Concatenate BoxLists of one image (same size, mode and field names) into one.

    Args:
        bboxes: non-empty list or tuple of BoxList.
    """
    if not isinstance(bboxes, (list, tuple)) or not bboxes:
        raise ValueError("cat_boxlist needs a non-empty list of BoxList")
    if not all(isinstance(b, BoxList) for b in bboxes):
        raise TypeError("cat_boxlist needs a list of BoxList, got "
                        f"{sorted({type(b).__name__ for b in bboxes})}")
    first = bboxes[0]
    for other in bboxes[1:]:
        if other.size != first.size:
            raise ValueError(f"cat_boxlist needs one image size, got {first.size} and "
                             f"{other.size}")
        if other.mode != first.mode:
            raise ValueError(f"cat_boxlist needs one box mode, got '{first.mode}' and "
                             f"'{other.mode}'; convert() them first")
        if set(other.fields()) != set(first.fields()):
            raise ValueError(f"cat_boxlist needs the same fields everywhere, got "
                             f"{sorted(first.fields())} and {sorted(other.fields())}")

    result = BoxList(torch.cat([b.bbox for b in bboxes], dim=0), first.size, first.mode)
    for field in first.fields():
        result.add_field(field, torch.cat([b.get_field(field) for b in bboxes], dim=0))
    return result
