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
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from atss_core.data.build import QUICKSTART_PREFIX
from atss_core.data.transforms import build_transforms
from atss_core.engine.precision import autocast_dtype, inference_autocast
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.imports import import_file

__all__ = ["COCODemo", "DetectionDemo", "class_colors", "class_names_from_config", "load_coco_thresholds"]

logger = logging.getLogger(__name__)

COCO_THRESHOLDS_FILE = Path(__file__).resolve().with_name("coco_demo_thresholds.json")
DEFAULT_CONFIDENCE_THRESHOLD = 0.5
COCO_NUM_CLASSES = 81  # 80 categories + background

# The 80 COCO categories in contiguous label order 1..80 (json category id order).
COCO_CATEGORIES = (
    "__background",
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def load_coco_thresholds(path=COCO_THRESHOLDS_FILE):
    """The original demo's per-class score thresholds for the 80 COCO classes (labels 1..80)."""
    with open(path) as f:
        thresholds = json.load(f)["thresholds"]
    if len(thresholds) != COCO_NUM_CLASSES - 1:
        raise ValueError(f"{path} lists {len(thresholds)} thresholds, expected {COCO_NUM_CLASSES - 1}")
    return [float(t) for t in thresholds]


def _categories_in_json(ann_file):
    """Category names of a COCO json in the order COCODataset numbers them, or None if unreadable."""
    try:
        with open(ann_file) as f:
            categories = json.load(f).get("categories")
    except (OSError, ValueError):
        return None
    if not categories:
        return None
    return tuple(str(category["name"]) for category in categories)


def class_names_from_config(cfg):
    """``("__background", name_1, ..., name_C)`` for the model of ``cfg``.

    Looks at the categories of the json of DATASETS.TEST[0], then DATASETS.TRAIN[0] (catalog of
    PATHS_CATALOG); without a readable json that fits NUM_CLASSES it falls back to the shape
    names for the quick-start set, the COCO names for NUM_CLASSES 81, and "class k" otherwise.
    """
    num_classes = cfg.MODEL.ATSS.NUM_CLASSES
    dataset_names = [names[0] for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN) if names]
    try:
        catalog = import_file("atss_core.config.paths_catalog", cfg.PATHS_CATALOG, True).DatasetCatalog
    except (FileNotFoundError, ValueError):
        catalog = None
    for dataset_name in dataset_names if catalog is not None else ():
        try:
            ann_file = catalog.get(dataset_name)["args"].get("ann_file")
        except (RuntimeError, ValueError):
            continue
        names = _categories_in_json(ann_file) if ann_file else None
        if names is not None and len(names) == num_classes - 1:
            return ("__background",) + names

    if any(name.startswith(QUICKSTART_PREFIX) for name in dataset_names):
        # The set is generated on first use; its json lists exactly these categories.
        from atss_core.data.datasets.synthetic_shapes import CLASS_NAMES
        if len(CLASS_NAMES) == num_classes - 1:
            return ("__background",) + tuple(CLASS_NAMES)
    if num_classes == COCO_NUM_CLASSES:
        return COCO_CATEGORIES
    logger.warning("no category names found for DATASETS %s; labelling detections 'class k'",
                   dataset_names)
    return ("__background",) + tuple(f"class {label}" for label in range(1, num_classes))


def class_colors(num_labels):
    """Distinct, saturated BGR colours, ``(num_labels, 3)`` uint8; row k is label k's colour.

    Hues step by the golden ratio so that neighbouring labels never look alike.
    """
    hues = (np.arange(num_labels) * 0.618034 % 1.0 * 180).astype(np.uint8)  # OpenCV hue: 0..179
    hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 240)], axis=1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def _check_device(device_name):
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {device_name!r} but no CUDA device is available; "
                         "set MODEL.DEVICE cpu")
    return device


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
        self.cfg = cfg.clone()
        if min_image_size is not None:
            self.cfg.defrost()
            self.cfg.INPUT.MIN_SIZE_TEST = int(min_image_size)
            self.cfg.freeze()
        self.device = _check_device(self.cfg.MODEL.DEVICE)
        autocast_dtype(self.cfg.TEST.DTYPE, "TEST.DTYPE")  # a bad value fails here, in one line
        self.cpu_device = torch.device("cpu")

        model = build_detection_model(self.cfg)
        model.eval()
        # No save_dir: a last_checkpoint left in OUTPUT_DIR must not replace the weights asked for.
        DetectronCheckpointer(self.cfg, model, save_dir="").load(self.cfg.MODEL.WEIGHT, allow_shape_mismatch=False)
        model.to(self.device)
        if fuse:
            model.prepare_for_inference()
        self.model = model
        self.transforms = build_transforms(self.cfg, is_train=False)

        num_classes = self.cfg.MODEL.ATSS.NUM_CLASSES
        if class_names is None:
            class_names = class_names_from_config(self.cfg)
        self.class_names = tuple(class_names)
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries; MODEL.ATSS.NUM_CLASSES "
                             f"{num_classes} needs {num_classes} ('__background' first)")
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
        if original_image.ndim != 3 or original_image.shape[2] != 3 or original_image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got shape {original_image.shape} "
                             f"dtype {original_image.dtype}")
        # The test-time transforms take a PIL RGB image (as the data loader gives them).
        image = self.transforms(Image.fromarray(cv2.cvtColor(original_image, cv2.COLOR_BGR2RGB)))
        image_list = to_image_list(image, self.cfg.DATALOADER.SIZE_DIVISIBILITY).to(self.device)
        with torch.inference_mode(), inference_autocast(self.cfg, self.device):
            prediction = self.model(image_list)[0].to(self.cpu_device)
        height, width = original_image.shape[:2]
        return prediction.resize((width, height))

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
