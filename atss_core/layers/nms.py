"""Greedy non-maximum suppression with the original's "+1" pixel convention.

Both functions visit boxes in a stable descending score order (equal scores: lower
index first) and suppress a box when its IoU with an already kept box is strictly
greater than ``iou_threshold``. Areas and intersections count ``x2 - x1 + 1`` pixels.
They return the kept indices (int64) in descending-score order; the original's
``ml_nms`` returned them ascending, so compare results as sets.
"""
import torch
import torchvision

from ._ext import compiled_ops


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-agnostic NMS.

    Args:
        boxes: (N, 4) float xyxy boxes.
        scores: (N,) scores.
        iou_threshold: suppress when IoU > this.
    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, highest score first.
    """
    _check_nms_inputs("nms", boxes, scores)
    ops = compiled_ops(boxes.device)
    if ops is not None:
        return ops.nms(*_kernel_dtype(boxes, scores), float(iou_threshold))
    return _nms_fallback(boxes, scores, None, iou_threshold)


def ml_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware ("multi-label") NMS: a box only suppresses boxes of its own label.

    Args:
        boxes: (N, 4) float xyxy boxes.
        scores: (N,) scores.
        labels: (N,) class ids, integer or integral float.
        iou_threshold: suppress when IoU > this.
    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, highest score first.
    """
    _check_nms_inputs("ml_nms", boxes, scores)
    if labels.shape != scores.shape:
        raise ValueError(f"ml_nms: labels must have shape {tuple(scores.shape)} like scores, "
                         f"got {tuple(labels.shape)}")
    ops = compiled_ops(boxes.device)
    if ops is not None:
        return ops.ml_nms(*_kernel_dtype(boxes, scores), labels, float(iou_threshold))
    return _nms_fallback(boxes, scores, labels, iou_threshold)


def _check_nms_inputs(name, boxes, scores):
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: boxes must be an (N, 4) xyxy tensor, got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name}: boxes must be a floating-point tensor, got {boxes.dtype}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"{name}: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")


def _kernel_dtype(boxes, scores):
    """``boxes`` and ``scores`` as the compiled kernels take them: float16 / bfloat16 become float32
    (exact, so the kept set is that of the low-precision boxes), other dtypes pass unchanged."""
    low_precision = (torch.float16, torch.bfloat16)
    if boxes.dtype in low_precision:
        boxes = boxes.float()
    if scores.dtype in low_precision:
        scores = scores.float()
    return boxes, scores


def _nms_fallback(boxes, scores, labels, iou_threshold):
    """Same semantics through ``torchvision.ops.nms`` (continuous areas, IoU > thr).

    Adding 1 to x2 and y2 turns the "+1" areas and intersections into torchvision's
    continuous ones. Boxes of different labels are moved apart so they never overlap.
    Everything runs in float64, where both shifts are exact for float32 inputs, and the
    scores are replaced by their stable descending rank so ties resolve like the kernels.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    shifted = boxes[order].double() + boxes.new_tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    if labels is not None:
        low, high = shifted.min(), shifted.max()
        shifted = shifted - low + labels[order].double()[:, None] * (high - low + 1)
    rank_scores = torch.arange(len(order), 0, -1, dtype=torch.float64, device=boxes.device)
    return order[torchvision.ops.nms(shifted, rank_scores, float(iou_threshold))]
