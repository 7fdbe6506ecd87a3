"""Operations on ``BoxList``: IoU, NMS, concatenation, filtering."""
import torch

from .bounding_box import BoxList


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


def box_iou_plus_one(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU with the legacy "+1" areas ((x2 - x1 + 1) * (y2 - y1 + 1)), as the original's boxlist_iou.

    ``boxes1`` (..., 4) and ``boxes2`` (..., 4) xyxy broadcast against each other: pass
    ``a[:, None], b[None]`` for the (M, N) pairwise matrix, or equal shapes for paired IoUs.
    Not differentiable (in-place arithmetic keeps big matrices to few allocations). Integer boxes
    are computed in float32.
    """
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    x1a, y1a, x2a, y2a = boxes1.unbind(dim=-1)
    x1b, y1b, x2b, y2b = boxes2.unbind(dim=-1)
    inter = torch.minimum(x2a, x2b).sub_(torch.maximum(x1a, x1b)).add_(1).clamp_(min=0)
    inter_h = torch.minimum(y2a, y2b).sub_(torch.maximum(y1a, y1b)).add_(1).clamp_(min=0)
    inter.mul_(inter_h)
    area_a = (x2a - x1a + 1) * (y2a - y1a + 1)
    area_b = (x2b - x1b + 1) * (y2b - y1b + 1)
    return inter.div_((area_a + area_b).sub_(inter))


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
    return box_iou_plus_one(boxlist1.bbox[:, None, :], boxlist2.bbox[None, :, :])


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
