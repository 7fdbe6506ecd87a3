"""Run a trained ATSS detector on numpy images::

    from atss_core import model_zoo
    from atss_core.predictor import Predictor

    predictor = Predictor(model_zoo.get_config_file("quickstart/atss_mnv2_fpn_shapes.yaml"),
                          "output/quickstart/model_final.pth", opts=["MODEL.DEVICE", "cpu"])
    result = predictor(cv2.imread("shapes.png"))   # (H, W, 3) uint8 BGR
    result["boxes"], result["scores"], result["labels"], result["class_names"]

The image goes through the config's test-time pipeline (shorter side to INPUT.MIN_SIZE_TEST,
longer side at most INPUT.MAX_SIZE_TEST, normalised as INPUT says), the model runs its inference
fast path (``prepare_for_inference``), and the boxes come back in the original image's pixels.
"""
import json
import logging
import os

import numpy as np
import torch
from PIL import Image

from atss_core.config import cfg as default_cfg, merge_config
from atss_core.data.build import QUICKSTART_PREFIX
from atss_core.data.transforms import build_transforms
from atss_core.engine.launch import resolve_device
from atss_core.engine.precision import inference_autocast, warn_if_slow_on_cpu
from atss_core.modeling.detector import build_detection_model
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.imports import import_file

__all__ = ["COCO_CATEGORIES", "Predictor", "class_names_from_config", "load_inference_model"]

logger = logging.getLogger(__name__)

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


def load_inference_model(cfg, weights, fuse=True, channels_last=True):
    """The model of ``cfg`` with ``weights`` (a file, URL or ``catalog://`` name) loaded, on
    ``cfg.MODEL.DEVICE``, in eval mode; with ``fuse`` also through ``prepare_for_inference``.

    Raises FileNotFoundError / ValueError (one line) for missing or unfitting weights.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_detection_model(cfg).eval()
    # No save_dir: a last_checkpoint left in OUTPUT_DIR must not replace the weights asked for.
    DetectronCheckpointer(cfg, model, save_dir="").load(os.fspath(weights), allow_shape_mismatch=False)
    model.to(device)
    if fuse:
        model.prepare_for_inference(channels_last=channels_last)
    return model


class Predictor:
    """Detector + test-time preprocessing for numpy images.

    Args:
        config_file: yaml config of the model (e.g. from ``atss_core.model_zoo.get_config_file``).
        weights: its trained weights (a .pth file, URL or ``catalog://`` name).
        opts: config overrides as a KEY VALUE list, as on the command line.
        input_format: channel order of the images given, "BGR" (cv2's) or "RGB".
    ``predictor(image)`` with image ``(H, W, 3)`` uint8 returns a dict: ``boxes`` (K, 4) float32
    xyxy in the image's pixels, ``scores`` (K,) float32, ``labels`` (K,) int64 in 1..C, by
    descending score, and ``class_names`` (K,) the labels' names. ``predictor.predict_batch(images)``
    returns one such dict per image of a list, running them through the network as one batch.
    """

    def __init__(self, config_file, weights, opts=None, input_format="BGR"):
        cfg = merge_config(default_cfg.clone(), str(config_file), opts)
        self._setup(cfg, weights, input_format, fuse=True)

    @classmethod
    def from_config(cls, cfg, weights=None, input_format="BGR", fuse=True, class_names=None):
        """A predictor for an already merged ``cfg``; ``weights`` defaults to ``cfg.MODEL.WEIGHT``;
        ``fuse=False`` skips ``prepare_for_inference``; ``class_names`` overrides the config's."""
        predictor = cls.__new__(cls)
        predictor._setup(cfg, cfg.MODEL.WEIGHT if weights is None else weights, input_format, fuse,
                         class_names)
        return predictor

    def _setup(self, cfg, weights, input_format, fuse, class_names=None):
        """weights: a path, URL or catalog:// name; the rest as in ``from_config``."""
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
        # A bad TEST.DTYPE or MODEL.DEVICE fails here, in one line, before the model is built.
        warn_if_slow_on_cpu(logger, cfg.TEST.DTYPE, resolve_device(cfg.MODEL.DEVICE), "TEST.DTYPE")
        self.cfg = cfg
        self.input_format = input_format
        self.model = load_inference_model(cfg, weights, fuse=fuse)
        self.device = next(self.model.parameters()).device
        self.transforms = build_transforms(cfg, is_train=False)
        num_classes = cfg.MODEL.ATSS.NUM_CLASSES
        self.class_names = tuple(class_names_from_config(cfg) if class_names is None else class_names)
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries; MODEL.ATSS.NUM_CLASSES "
                             f"{num_classes} needs {num_classes} ('__background' first)")

    def predict_boxlist(self, image):
        """All detections on ``image`` ((H, W, 3) uint8 in ``input_format``) as a CPU BoxList of the
        image's size (W, H), fields ``scores`` and ``labels``."""
        return self.predict_boxlists([image])[0]

    def predict_boxlists(self, images):
        """``predict_boxlist`` for a list of images, run through the network as one batch.

        The batch is padded to its largest image, as test_net pads TEST.IMS_PER_BATCH images, so
        a smaller image's detections may differ slightly from its own ``predict_boxlist`` (the
        head's GroupNorm sees the padding). Images of one size give the same detections.
        """
        images = list(images)  # also a generator: it is read twice
        tensors = [self._to_model_input(image) for image in images]
        if not tensors:
            return []
        image_list = to_image_list(tensors, self.cfg.DATALOADER.SIZE_DIVISIBILITY).to(self.device)
        # TEST.DTYPE: the network in that dtype, the post-processing in float32.
        with torch.inference_mode(), inference_autocast(self.cfg, self.device):
            predictions = self.model(image_list)
        return [prediction.to("cpu").resize((image.shape[1], image.shape[0]))
                for prediction, image in zip(predictions, images)]

    def _to_model_input(self, image):
        """The test-time transforms of one numpy image: a (3, h, w) float tensor."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"expected an (H, W, 3) uint8 {self.input_format} numpy image, got shape {shape} "
                             f"dtype {dtype}")
        rgb = image[:, :, ::-1] if self.input_format == "BGR" else image
        # The test-time transforms take a PIL RGB image, as the data loader gives them.
        return self.transforms(Image.fromarray(np.ascontiguousarray(rgb)))

    def __call__(self, image):
        return self._as_dict(self.predict_boxlist(image))

    def predict_batch(self, images):
        """``predictor(image)`` for each of ``images``, run as one batch (see ``predict_boxlists``)."""
        return [self._as_dict(prediction) for prediction in self.predict_boxlists(images)]

    def _as_dict(self, prediction):
        labels = prediction.get_field("labels")
        return {
            "boxes": prediction.bbox.numpy().astype(np.float32),
            "scores": prediction.get_field("scores").numpy(),
            "labels": labels.numpy(),
            "class_names": [self.class_names[label] for label in labels.tolist()],
        }
