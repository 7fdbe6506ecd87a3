"""A tensor-only ATSS detector for export to ONNX and TorchScript.

``ExportableATSS`` wraps the backbone, the head and the anchor generator of a built
``GeneralizedRCNN`` and runs the post-processing on plain tensors, for one image::

    boxes (K, 4) xyxy, scores (K,), labels (K,) int64 = ExportableATSS(model)(image (1, 3, H, W))

The image is in the model's input convention (resized as at test time, normalised as ``INPUT``
says). H and W are free: the image is zero-padded to multiples of ``SIZE_DIVISIBILITY`` inside
the graph and boxes are clipped to the unpadded H x W, so the result is what ``model([image[0]])``
gives in eval mode, in the same (descending score) order.

Post-processing follows ``ATSSPostProcessor`` step by step, reproducing its tie rules: per level
the candidates above ``pre_nms_thresh`` ranked by a stable sort (equal scores: lower anchor /
class index first) and cut at ``pre_nms_top_n``; decoding with the model's ``BoxCoder``;
class-aware NMS with "+1" areas (x2, y2 shifted by one, then a standard NMS) over the candidates
ordered by a stable sort of their scores, with those ranks as NMS scores so that equal scores
resolve as in the original; and the per-image cap where ties with the last kept score survive.

NMS is ``torchvision.ops.nms`` in float64 (for eager use and TorchScript) or, for ONNX, the
standard ``NonMaxSuppression`` op with one class per score row (float32 IoU arithmetic, so a
pair whose IoU lies within float32 rounding of the threshold may resolve differently).
"""
import math
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from atss_core.layers import DFConv2d
from atss_core.modeling.rpn.utils import flatten_like_anchors

__all__ = ["ExportableATSS", "check_exportable", "export_onnx", "export_torchscript"]

OUTPUT_NAMES = ("boxes", "scores", "labels")


def _plus_one_boxes(boxes):
    """(M, 4) xyxy with x2, y2 moved by one pixel: continuous-area IoU of these equals the
    original's "+1" IoU of ``boxes``."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def torchvision_class_nms(boxes, rank_scores, labels, iou_threshold):
    """Class-aware NMS through ``torchvision.ops.nms``; kept indices (K,) by descending score.

    boxes (M, 4) xyxy, rank_scores (M,) distinct, labels (M,) int64. Float64, where the "+1"
    shift and the per-class offsets that keep classes apart are exact for float32 boxes.
    """
    shifted = _plus_one_boxes(boxes.double())
    # A zero joins the extremes so that an empty candidate set needs no branch.
    extremes = torch.cat([shifted.reshape(-1), shifted.new_zeros(1)])
    low, high = extremes.min(), extremes.max()
    separated = shifted - low + labels.double()[:, None] * (high - low + 1)
    return torchvision.ops.nms(separated, rank_scores.double(), float(iou_threshold))


@torch.library.custom_op("atss_export::class_nms", mutates_args=())
def _onnx_class_nms(boxes: torch.Tensor, class_scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """What ONNX ``NonMaxSuppression`` computes (``export_onnx`` maps this op to it): boxes (1, M, 4)
    with "+1" already applied, class_scores (1, C, M), zero outside a box's class. Returns the
    kept box indices (K,) in no particular order."""
    labels = class_scores[0].argmax(0)
    scores = class_scores[0].amax(0)
    boxes = boxes[0] - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    return torchvision_class_nms(boxes, scores, labels, iou_threshold)


def onnx_class_nms(boxes, rank_scores, labels, iou_threshold, num_classes):
    """Class-aware NMS as one ONNX ``NonMaxSuppression``: each class is a score row, so boxes of
    different classes never meet. Same arguments and result as ``torchvision_class_nms``."""
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    class_scores = torch.where(labels[None, :] == classes[:, None], rank_scores[None, :], 0.0)
    kept = _onnx_class_nms(_plus_one_boxes(boxes)[None], class_scores[None], float(iou_threshold))
    return torch.sort(kept).values  # candidates are in descending score order


def check_exportable(model):
    """Raise ValueError naming why ``model`` cannot be exported (deformable convolutions)."""
    if any(isinstance(module, DFConv2d) for module in model.modules()):
        raise ValueError(
            "this model has deformable convolutions (a dcnv2 config), which neither format can export: "
            "ONNX has no standard deformable-conv op that onnxruntime runs and TorchScript would need "
            "atss_core's compiled op; run dcnv2 models with atss_core in PyTorch")


class ExportableATSS(nn.Module):
    """The detector of ``model`` on one image as tensors; see the module docstring.

    Args:
        model: a ``GeneralizedRCNN`` with its weights loaded (it is used, not copied).
        nms: "torchvision" (eager, TorchScript) or "onnx" (the graph ``export_onnx`` writes).
    forward(image (1, 3, H, W) float32) -> boxes (K, 4) float32 xyxy in image pixels,
    scores (K,) float32, labels (K,) int64 in 1..C, by descending score.
    """

    def __init__(self, model, nms="torchvision"):
        super().__init__()
        check_exportable(model)
        if nms not in ("torchvision", "onnx"):
            raise ValueError(f"nms must be 'torchvision' or 'onnx', got {nms!r}")
        self.backbone = model.backbone
        self.head = model.rpn.head
        self.anchor_generator = model.rpn.anchor_generator
        postprocessor = model.rpn.box_selector_test
        self.box_coder = postprocessor.box_coder
        self.pre_nms_thresh = postprocessor.pre_nms_thresh
        self.pre_nms_top_n = postprocessor.pre_nms_top_n
        self.nms_thresh = postprocessor.nms_thresh
        self.detections_per_image = postprocessor.fpn_post_nms_top_n
        self.min_size = postprocessor.min_size
        self.num_classes = postprocessor.num_classes - 1
        self.size_divisibility = model.size_divisibility
        self.nms = nms

    def forward(self, image):
        height, width = image.shape[-2], image.shape[-1]
        if self.size_divisibility > 0:
            # Pad bottom/right to the next multiple, as to_image_list does.
            image = F.pad(image, (0, (-width) % self.size_divisibility, 0, (-height) % self.size_divisibility))
        features = self.backbone(image)
        box_cls, box_regression, centerness = self.head(features)
        anchors = self.anchor_generator.grid_anchors([feature.shape[-2:] for feature in features])
        return self.detect(box_cls, box_regression, centerness, anchors, height, width)

    def _level_candidates(self, cls_logits, regression, ctr_logits, level_anchors):
        """One level's candidates in the original's order (ascending anchor, then class): their
        regressions (M, 4), anchors (M, 4), labels (M,) and ranking scores sigmoid(cls) *
        sigmoid(centerness) (M,), at most ``pre_nms_top_n`` of them."""
        cls_prob = flatten_like_anchors(cls_logits, self.num_classes).sigmoid()[0]  # (HWA, C)
        ctr_prob = flatten_like_anchors(ctr_logits, 1).sigmoid()[0, :, 0]  # (HWA,)
        flat = (cls_prob > self.pre_nms_thresh).reshape(-1).nonzero().reshape(-1)  # into (HWA, C)
        anchor = flat // self.num_classes
        score = cls_prob.reshape(-1)[flat] * ctr_prob[anchor]
        best = torch.sort(score, descending=True, stable=True).indices[:self.pre_nms_top_n]
        best = torch.sort(best).values  # back to the original's candidate order
        anchor = anchor[best]
        return (flatten_like_anchors(regression, 4)[0][anchor], level_anchors[anchor],
                flat[best] % self.num_classes + 1, score[best])

    def detect(self, box_cls, box_regression, centerness, anchors, height, width):
        """Detections from head outputs (lists of L ``(1, *, H_l, W_l)``, as ``ATSSHead`` gives) and
        per-level anchors ``(H_l*W_l*A, 4)``, for an unpadded image of ``height`` x ``width``."""
        per_level = [self._level_candidates(*level) for level in zip(box_cls, box_regression, centerness, anchors)]
        regression, level_anchors, labels, score = (torch.cat(parts) for parts in zip(*per_level))
        boxes = self.box_coder.decode(regression, level_anchors)
        # clip_to_image: x to [0, W - 1], y to [0, H - 1]
        boxes = torch.stack([boxes[:, 0].clamp(0, width - 1), boxes[:, 1].clamp(0, height - 1),
                             boxes[:, 2].clamp(0, width - 1), boxes[:, 3].clamp(0, height - 1)], dim=1)
        # remove_small_boxes with "+1" sizes (with min_size 0 it only drops NaN boxes)
        keep = ((boxes[:, 2:] - boxes[:, :2] + 1) >= self.min_size).all(dim=1).nonzero().reshape(-1)
        boxes, scores, labels = boxes[keep], score[keep].sqrt(), labels[keep]

        # NMS visits candidates by a stable descending sort of the scores; ranks make that explicit.
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        rank_scores = torch.arange(scores.shape[0], 0, -1, dtype=torch.float32, device=scores.device)
        if self.nms == "onnx":
            kept = onnx_class_nms(boxes, rank_scores, labels, self.nms_thresh, self.num_classes)
        else:
            kept = torchvision_class_nms(boxes, rank_scores, labels, self.nms_thresh)
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]

        if self.detections_per_image > 0:
            # Keep scores >= the cap-th best (ties survive); -inf padding when fewer remain.
            padded = torch.cat([scores, scores.new_full((self.detections_per_image,), -math.inf)])
            capped = (scores >= padded[self.detections_per_image - 1]).nonzero().reshape(-1)
            boxes, scores, labels = boxes[capped], scores[capped], labels[capped]
        return boxes, scores, labels


def _nms_symbolic(g, boxes, class_scores, iou_threshold):
    """``atss_export::class_nms`` as ONNX ``NonMaxSuppression`` + the box-index column."""
    def constant(values, dtype):
        return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    iou_threshold = torch.onnx.symbolic_helper._maybe_get_const(iou_threshold, "f")
    selected = g.op("NonMaxSuppression", boxes, class_scores,
                    constant([2 ** 31 - 1], torch.int64),  # no per-class output limit
                    constant([iou_threshold], torch.float32),
                    constant([0.5], torch.float32))  # rank scores are >= 1, other classes' rows 0
    box_column = g.op("Gather", selected, constant([2], torch.int64), axis_i=1)
    return g.op("Reshape", box_column, constant([-1], torch.int64))


def _sort_symbolic(g, values, *args):
    """``torch.sort`` (stable or not) as ONNX ``TopK`` over the whole axis, which the ONNX standard
    defines as stable (equal values: lower index first)."""
    dim, descending = (torch.onnx.symbolic_helper._maybe_get_const(arg, kind)
                       for arg, kind in zip(args[-2:], "ib"))
    count = g.op("Gather", g.op("Shape", values), g.op("Constant", value_t=torch.tensor([dim])), axis_i=0)
    return g.op("TopK", values, count, axis_i=dim, largest_i=int(bool(descending)), sorted_i=1, outputs=2)


ONNX_OPSET = 17


def export_onnx(model, example_image, path):
    """Write ``ExportableATSS(model, nms="onnx")`` to the ONNX file ``path``; H and W stay dynamic.

    Uses the TorchScript-based exporter (a trace, as for ``export_torchscript``): the
    torch.export-based one needs the same custom translations and took about nine times longer
    here (minutes for R-50). example_image: any (1, 3, H, W) float32 image; the traced
    post-processing has no data-dependent branch, so an image without detections serves too.
    """
    exportable = ExportableATSS(model, nms="onnx").eval()
    symbolics = {"atss_export::class_nms": _nms_symbolic, "aten::sort": _sort_symbolic}
    for name, symbolic in symbolics.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, ONNX_OPSET)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                exportable, (example_image,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["image"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={"image": {2: "height", 3: "width"},
                              **{name: {0: "detections"} for name in OUTPUT_NAMES}})
    finally:
        for name in symbolics:
            torch.onnx.unregister_custom_op_symbolic(name, ONNX_OPSET)


def export_torchscript(model, example_image, path):
    """Write ``ExportableATSS(model)`` traced on ``example_image`` (any (1, 3, H, W) float32 image) to
    ``path``; it runs with ``torch.jit.load`` once torchvision is imported."""
    exportable = ExportableATSS(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)  # jit.trace is deprecated
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(exportable, (example_image,), check_trace=False)
    # An inference file: outputs that need no torch.no_grad() to become numpy arrays.
    traced.requires_grad_(False)
    traced.save(str(path))
