"""COCO-format detection data set: a json annotation file plus a folder of images."""
import contextlib
import io
import json
import logging
import math
import os
import reprlib
from collections import Counter

import torch
from pycocotools.coco import COCO

from atss_core.data.errors import DataError
from atss_core.data.image_io import read_image
from atss_core.data.transforms import seeded_random
from atss_core.structures.bounding_box import BoxList

logger = logging.getLogger(__name__)


def coco_boxes_to_clipped_xyxy(boxes_xywh, image_width, image_height):
    """Convert COCO ``[x, y, w, h]`` boxes to pixel ``xyxy``, clip them, and flag usable ones.

    Uses the legacy "+1" pixel convention of the original: ``x2 = x + max(w - 1, 0)`` and
    coordinates are clipped to ``[0, W - 1] x [0, H - 1]``. A box is usable when it keeps
    ``x2 > x1`` and ``y2 > y1`` after clipping, i.e. it is more than one pixel wide and tall
    inside the image.

    Args:
        boxes_xywh: (N, 4) float32 tensor.
        image_width, image_height: scalars or (N,) tensors (one image size per box).
    Returns:
        boxes_xyxy: (N, 4) float32 tensor, clipped.
        usable: (N,) bool tensor.
    """
    top_left = boxes_xywh[:, :2]
    bottom_right = top_left + (boxes_xywh[:, 2:] - 1).clamp(min=0)
    size = torch.stack([torch.as_tensor(image_width), torch.as_tensor(image_height)], dim=-1).float()
    upper = torch.cat([size, size], dim=-1) - 1  # [W-1, H-1, W-1, H-1], shape (4,) or (N, 4)
    boxes_xyxy = torch.minimum(torch.cat([top_left, bottom_right], dim=1).clamp(min=0), upper)
    usable = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
    return boxes_xyxy, usable


def _read_annotation_file(ann_file):
    if not os.path.isfile(ann_file):
        raise DataError(f"annotation file {ann_file} not found; check DATASETS and the "
                        "DATA_DIR / paths_catalog entry that points to it")
    try:
        with open(ann_file, encoding="utf-8") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"annotation file {ann_file} is not valid JSON ({err}); "
                        "regenerate or fix it") from None
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DataError(f"annotation file {ann_file} has no 'images' list; it must be COCO instances format")
    for key in ("annotations", "categories"):
        if not isinstance(content.setdefault(key, []), list):
            raise DataError(f"'{key}' in annotation file {ann_file} is not a list; it must be COCO "
                            "instances format")
    return content


def _describe(entry, kind, position):
    """``"annotation 17"``, or for an entry without an integer id its position and a short repr."""
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    if _is_integer(entry_id):
        return f"{kind} {entry_id}"
    return f"{kind} at position {position} of '{kind}s' ({reprlib.repr(entry)})"


def _is_integer(value):
    return type(value) is int  # json gives plain ints; True / False are no ids


def _first_bad_row(rows, width, positive=False):
    """Position of the first row of ``rows`` that is not ``width`` finite numbers (all above 0
    with ``positive``), or None.

    One tensor conversion checks all rows at once; the rows are walked only when it fails.
    """
    try:
        table = torch.tensor(rows, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):  # ragged, nested or not numbers
        table = None
    if table is not None and table.shape == (len(rows), width):
        bad = ~torch.isfinite(table).all(dim=1)
        if positive:
            bad |= (table <= 0).any(dim=1)
        positions = torch.nonzero(bad).flatten().tolist()
        return positions[0] if positions else None
    for position, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == width
                and all(isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
                        for v in row)):
            return position
    return None


def _check_ids(entries, kind, ann_file):
    """Every entry is a dict with a unique integer ``id``: pycocotools indexes them by id, and a
    repeated id silently replaces the earlier entry (images paired with another image's boxes)."""
    ids = [entry.get("id") if isinstance(entry, dict) else None for entry in entries]
    if not all(_is_integer(entry_id) for entry_id in ids):
        position = next(i for i, entry_id in enumerate(ids) if not _is_integer(entry_id))
        raise DataError(f"{_describe(entries[position], kind, position)} in {ann_file} has no integer "
                        "'id'; give every entry a unique integer id")
    if len(set(ids)) != len(ids):
        repeated = next(entry_id for entry_id, count in Counter(ids).items() if count > 1)
        raise DataError(f"{kind} id {repeated} appears {ids.count(repeated)} times in {ann_file}; "
                        f"{kind} ids must be unique (renumber the {kind}s)")


def validate_coco_content(content, ann_file):
    """Refuse, in one line naming ``ann_file`` and the entry, a COCO json that pycocotools would
    index wrongly or that would fail later; warn once about annotations of no listed image.

    Checks: unique integer ids of images, annotations and categories; images with a string
    ``file_name`` and positive numeric ``width`` / ``height``; annotations with an integer
    ``image_id``, a ``bbox`` of 4 finite numbers and a listed ``category_id``.
    """
    images, annotations, categories = content["images"], content["annotations"], content["categories"]
    for entries, kind in ((images, "image"), (annotations, "annotation"), (categories, "category")):
        _check_ids(entries, kind, ann_file)

    for position, image in enumerate(images):
        if not isinstance(image.get("file_name"), str):
            raise DataError(f"{_describe(image, 'image', position)} in {ann_file} needs a 'file_name'")
    for position, category in enumerate(categories):
        if "name" not in category:
            raise DataError(f"{_describe(category, 'category', position)} in {ann_file} needs a 'name'")
    position = _first_bad_row([[image.get("width"), image.get("height")] for image in images], 2, positive=True)
    if position is not None:
        image = images[position]
        raise DataError(f"{_describe(image, 'image', position)} in {ann_file} needs a positive numeric "
                        f"'width' and 'height' (got {image.get('width')!r} x {image.get('height')!r})")

    position = next((i for i, a in enumerate(annotations) if not _is_integer(a.get("image_id"))), None)
    if position is not None:
        raise DataError(f"{_describe(annotations[position], 'annotation', position)} in {ann_file} has "
                        f"no integer 'image_id' (got {annotations[position].get('image_id')!r})")
    position = _first_bad_row([annotation.get("bbox") for annotation in annotations], 4)
    if position is not None:
        raise DataError(f"{_describe(annotations[position], 'annotation', position)} in {ann_file} needs "
                        f"a 'bbox' of 4 numbers [x, y, w, h] (got {annotations[position].get('bbox')!r})")
    category_ids = {category["id"] for category in categories}
    position = next((i for i, a in enumerate(annotations) if a.get("category_id") not in category_ids), None)
    if position is not None:
        raise DataError(f"{_describe(annotations[position], 'annotation', position)} in {ann_file} has "
                        f"category_id {annotations[position].get('category_id')!r}, which 'categories' "
                        "does not list")

    image_ids = {image["id"] for image in images}
    orphans = sum(annotation["image_id"] not in image_ids for annotation in annotations)
    if orphans:
        logger.warning("%d annotations in %s belong to no image listed in 'images'; they are ignored",
                       orphans, ann_file)


class COCODataset(torch.utils.data.Dataset):
    """Detection samples from a COCO instances json and its image folder.

    Category ids are mapped to contiguous labels 1..C in the json's category order (0 is the
    background). Crowd annotations are ignored, boxes are clipped to the image and boxes no
    more than one pixel wide or tall after clipping are dropped. Only ``bbox`` is read, so
    box-only annotations (no ``segmentation``) work, and so do image-only files (test splits).
    The json is checked by ``validate_coco_content`` before pycocotools indexes it; images are read
    lazily by ``atss_core.data.image_io.read_image`` (``check_image_files`` checks they all exist).

    Args:
        ann_file (str): COCO json.
        root (str): folder the ``file_name`` of every image is relative to.
        remove_images_without_annotations (bool): drop images left with no usable box after the
            filtering above (for training, so an empty target never reaches the loss).
        transforms (callable): ``(PIL image, BoxList) -> (image, BoxList)``, or None.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` index.
        ids: image ids in dataset order (sorted).
        id_to_img_map: dataset index → image id.
        json_category_id_to_contiguous_id / contiguous_category_id_to_json_id: label maps.
        categories: json category id → category name.
        class_names: tuple indexed by contiguous label; entry 0 is "__background".
    """

    def __init__(self, ann_file, root, remove_images_without_annotations, transforms=None):
        self.ann_file = ann_file
        self.root = root
        self.coco = COCO()
        self.coco.dataset = _read_annotation_file(ann_file)
        validate_coco_content(self.coco.dataset, ann_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        category_ids = self.coco.getCatIds()  # json order, as the original
        self.json_category_id_to_contiguous_id = {
            cat_id: label for label, cat_id in enumerate(category_ids, start=1)}
        self.contiguous_category_id_to_json_id = {
            label: cat_id for cat_id, label in self.json_category_id_to_contiguous_id.items()}
        self.categories = {cat_id: self.coco.cats[cat_id]["name"] for cat_id in category_ids}
        self.class_names = ("__background",) + tuple(self.categories.values())

        self.ids = sorted(self.coco.imgs)  # sorted for reproducible order
        if remove_images_without_annotations:
            self.ids = self._ids_with_usable_boxes()
        self.id_to_img_map = dict(enumerate(self.ids))
        self._transforms = transforms

    def check_image_files(self):
        """Raise DataError unless every image of the data set is a file (one ``os.path`` call per
        image, none is opened). ``build_dataset`` calls it, so that a missing file stops a run at
        its start, not hours in."""
        paths = [self._image_path(self.coco.imgs[image_id]) for image_id in self.ids]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            problem = "is a folder, not an image file" if os.path.isdir(missing[0]) else "does not exist"
            raise DataError(f"{len(missing)} of the {len(paths)} images listed in {self.ann_file} are "
                            f"not files: {missing[0]} {problem}; check that the image folder {self.root} "
                            "belongs to this annotation file")

    def _annotation_arrays(self, annotations):
        """Boxes (N,4) float32, contiguous labels (N,) int64 and crowd flags (N,) bool."""
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        to_label = self.json_category_id_to_contiguous_id
        labels = torch.tensor([to_label[a["category_id"]] for a in annotations], dtype=torch.int64)
        crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in annotations], dtype=torch.bool)
        return boxes, labels, crowd

    def _ids_with_usable_boxes(self):
        """Sorted ids of the images with at least one non-crowd box that survives clipping.

        Judged on all annotations at once, with the same arithmetic as ``__getitem__`` so the
        two can never disagree.
        """
        annotations = [a for a in self.coco.anns.values() if a["image_id"] in self.coco.imgs]
        if not annotations:
            return []
        boxes, _, crowd = self._annotation_arrays(annotations)
        image_ids = torch.tensor([a["image_id"] for a in annotations], dtype=torch.int64)
        widths = torch.tensor([self.coco.imgs[a["image_id"]]["width"] for a in annotations])
        heights = torch.tensor([self.coco.imgs[a["image_id"]]["height"] for a in annotations])
        _, usable = coco_boxes_to_clipped_xyxy(boxes, widths, heights)
        return torch.unique(image_ids[usable & ~crowd]).tolist()

    def _image_path(self, image_info):
        return os.path.join(self.root, image_info["file_name"])

    def _load_image(self, image_info):
        path = self._image_path(image_info)
        expected = (image_info["width"], image_info["height"])
        image = read_image(path, annotated_size=expected)
        if image.size != expected:
            raise DataError(f"image file {path} is {image.size[0]}x{image.size[1]} but "
                            f"{self.ann_file} says {expected[0]}x{expected[1]}; fix its width/height")
        return image

    def __getitem__(self, index):
        """Return ``(image, target, index)``; target is a BoxList (xyxy) with field "labels".

        ``index`` may be an ``(index, seed)`` pair (from a seeded IterationBasedBatchSampler):
        the random transforms then draw from that seed, which makes training resumable exactly.
        """
        index, seed = index if isinstance(index, tuple) else (index, None)
        image_id = self.id_to_img_map[index]
        image_info = self.coco.imgs[image_id]
        image = self._load_image(image_info)

        boxes, labels, crowd = self._annotation_arrays(self.coco.imgToAnns[image_id])
        boxes, usable = coco_boxes_to_clipped_xyxy(boxes, *image.size)
        keep = usable & ~crowd
        target = BoxList(boxes[keep], image.size, mode="xyxy")
        target.add_field("labels", labels[keep])

        if self._transforms is not None:
            with seeded_random(seed):
                image, target = self._transforms(image, target)
        return image, target, index

    def get_img_info(self, index):
        """The json image entry (``id``, ``file_name``, ``width``, ``height``, ...) of ``index``."""
        return self.coco.imgs[self.id_to_img_map[index]]

    def __len__(self):
        return len(self.ids)
