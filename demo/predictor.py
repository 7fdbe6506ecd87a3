"""Run a trained ATSS detector on single BGR images and draw what it finds.

``COCODemo`` (alias ``DetectionDemo``) keeps the original demo's name and methods::

    from atss_core.config import cfg
    cfg.merge_from_file("configs/atss/atss_R_50_FPN_1x.yaml")
    cfg.MODEL.WEIGHT = "ATSS_R_50_FPN_1x.pth"
    demo = COCODemo(cfg)
    annotated = demo.run_on_opencv_image(cv2.imread("photo.jpg"))

Images go through the config's test-time pipeline (shorter side to INPUT.MIN_SIZE_TEST, longer
side at most INPUT.MAX_SIZE_TEST, BGR 0-255 minus PIXEL_MEAN), and the detections are mapped
back to the input's size. A detection is kept when its score is above its class's threshold:
the original ATSS demo's 80 tuned COCO thresholds (``coco_demo_thresholds.json``) for a COCO
model, one ``confidence_threshold`` otherwise (default 0.5). Class names come from the
categories of the config's data set json, so models trained on other data are labelled right.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from atss_core.predictor import COCO_CATEGORIES, COCO_NUM_CLASSES, Predictor, class_names_from_config

__all__ = ["COCODemo", "DetectionDemo", "class_colors", "class_names_from_config", "load_coco_thresholds"]

COCO_THRESHOLDS_FILE = Path(__file__).resolve().with_name("coco_demo_thresholds.json")
DEFAULT_CONFIDENCE_THRESHOLD = 0.5
def load_coco_thresholds(path=COCO_THRESHOLDS_FILE):
    """The original demo's per-class score thresholds for the 80 COCO classes (labels 1..80)."""
    with open(path) as f:
        thresholds = json.load(f)["thresholds"]
    if len(thresholds) != COCO_NUM_CLASSES - 1:
        raise ValueError(f"{path} lists {len(thresholds)} thresholds, expected {COCO_NUM_CLASSES - 1}")
    return [float(t) for t in thresholds]


def class_colors(num_labels):
    """Distinct, saturated BGR colours, ``(num_labels, 3)`` uint8; row k is label k's colour.

    Hues step by the golden ratio so that neighbouring labels never look alike.
    """
    hues = (np.arange(num_labels) * 0.618034 % 1.0 * 180).astype(np.uint8)  # OpenCV hue: 0..179
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 240)], axis=1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


class COCODemo:
    """Detector + test-time preprocessing + score filtering + drawing, for one image at a time.

    Args:
        cfg: config of the model; ``cfg.MODEL.WEIGHT`` names its weights (a file, URL or
            ``catalog://`` name) and ``cfg.MODEL.DEVICE`` where it runs.
        confidence_thresholds_for_classes: one score threshold per class (labels 1..C); when
            None, the tuned COCO thresholds for a COCO model and ``confidence_threshold`` else.
        min_image_size: shorter input side fed to the model; None keeps INPUT.MIN_SIZE_TEST.
        confidence_threshold: one threshold for every class; overrides the per-class list.
        class_names: ``("__background", name_1, ...)``; None reads them as
            ``class_names_from_config`` does.
        fuse: run the model's inference fast path (``prepare_for_inference``: batch norms folded
            into the convs, channels_last), as tools/test_net.py does.
    """

    CATEGORIES = COCO_CATEGORIES

    def __init__(self, cfg, confidence_thresholds_for_classes=None, min_image_size=None,
                 confidence_threshold=None, class_names=None, fuse=True):
        cfg = cfg.clone()
        if min_image_size is not None:
            cfg.defrost()
            cfg.INPUT.MIN_SIZE_TEST = int(min_image_size)
            cfg.freeze()
        self.predictor = Predictor.from_config(cfg, fuse=fuse, class_names=class_names)
        self.cfg = cfg
        self.model = self.predictor.model
        self.class_names = self.predictor.class_names

        num_classes = self.cfg.MODEL.ATSS.NUM_CLASSES
        self.confidence_thresholds_for_classes = self._thresholds(
            confidence_thresholds_for_classes, confidence_threshold, num_classes - 1)
        self.colors = class_colors(num_classes)

    @staticmethod
    def _thresholds(per_class, single, num_foreground):
        """(C,) float tensor: score threshold of labels 1..C."""
        if single is not None:
            return torch.full((num_foreground,), float(single))
        if per_class is None:
            if num_foreground == COCO_NUM_CLASSES - 1:
                per_class = load_coco_thresholds()
            else:
                per_class = [DEFAULT_CONFIDENCE_THRESHOLD] * num_foreground
        if len(per_class) != num_foreground:
            raise ValueError(f"confidence_thresholds_for_classes has {len(per_class)} entries, the model "
                             f"has {num_foreground} classes; give one per class or a single "
                             "confidence_threshold")
        return torch.as_tensor(per_class, dtype=torch.float32)

    def run_on_opencv_image(self, image):
        """Detect on ``image`` ((H, W, 3) uint8 BGR, as cv2.imread gives) and return an annotated copy."""
        return self.annotate(image)[0]

    def annotate(self, image):
        """``(annotated copy of image, the drawn detections as a BoxList)`` for ``image`` ((H, W, 3)
        uint8 BGR)."""
        top_predictions = self.select_top_predictions(self.compute_prediction(image))
        result = self.overlay_boxes(image.copy(), top_predictions)
        return self.overlay_class_names(result, top_predictions), top_predictions

    def compute_prediction(self, original_image):
        """All detections on ``original_image`` ((H, W, 3) uint8 BGR) as a BoxList of the image's
        size, with fields ``scores`` (N,) and ``labels`` (N,) in 1..C."""
        return self.predictor.predict_boxlist(original_image)

    def select_top_predictions(self, predictions):
        """The detections whose score is above their class's threshold, best first."""
        scores = predictions.get_field("scores")
        labels = predictions.get_field("labels")
        keep = scores > self.confidence_thresholds_for_classes[labels - 1]
        predictions = predictions[keep]
        order = torch.argsort(predictions.get_field("scores"), descending=True, stable=True)
        return predictions[order]

    def compute_colors_for_labels(self, labels):
        """(N, 3) uint8 BGR colour of each label in ``labels`` (N,)."""
        return self.colors[labels.numpy()]

    @staticmethod
    def _line_width(image):
        return max(2, round(sum(image.shape[:2]) / 600))

    def overlay_boxes(self, image, predictions):
        """Draw each box of ``predictions`` on ``image`` (in place) in its class colour.

        Like the tags, boxes are drawn in reverse order, so the first (best) ends up on top.
        """
        thickness = self._line_width(image)
        boxes = predictions.bbox.round().to(torch.int64).tolist()
        colors = self.compute_colors_for_labels(predictions.get_field("labels")).tolist()
        for (x1, y1, x2, y2), color in reversed(list(zip(boxes, colors))):
            cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        return image

    def overlay_class_names(self, image, predictions):
        """Write "name: score" on a filled tag at each box's top-left corner (in place).

        The tag sits above the box, or just inside it when the box touches the image top. Tags
        are drawn last to first, so where they overlap the best detection's is readable.
        """
        height, width = image.shape[:2]
        font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, min(max(sum(image.shape[:2]) / 2400, 0.35), 1.0)
        text_thickness = 1 if font_scale < 0.7 else 2
        boxes = predictions.bbox.round().to(torch.int64).tolist()
        labels = predictions.get_field("labels").tolist()
        scores = predictions.get_field("scores").tolist()
        colors = self.compute_colors_for_labels(predictions.get_field("labels")).tolist()
        for (x1, y1, _, _), label, score, color in reversed(list(zip(boxes, labels, scores, colors))):
            text = f"{self.class_names[label]}: {score:.2f}"
            (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, text_thickness)
            tag_h = text_h + baseline + 2
            top = y1 - tag_h if y1 - tag_h >= 0 else min(y1, height - tag_h)
            left = min(max(x1, 0), max(width - text_w - 2, 0))
            cv2.rectangle(image, (left, top), (left + text_w + 2, top + tag_h), color, cv2.FILLED)
            # Dark text on light tags, white text on dark ones (BT.601 luma of the BGR colour).
            luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
            text_color = (0, 0, 0) if luma > 140 else (255, 255, 255)
            cv2.putText(image, text, (left + 1, top + text_h + 1), font, font_scale, text_color,
                        text_thickness, cv2.LINE_AA)
        return image


# A name that does not suggest COCO-only use.
DetectionDemo = COCODemo
