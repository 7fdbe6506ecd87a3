"""Deterministic synthetic detection data set behind the quick start ("quickstart_shapes").

Images show flat-shaded circles, rectangles, triangles and crosses of varied size, aspect,
colour and (bounded) overlap on textured backgrounds: smooth colour fields, stripes and grain.
Each image is a pure function of ``(seed, split, index)``, so the set is byte-identical on
every run on a given machine, and a smaller set is a prefix of a larger one.

Layout under ``root`` (what the ``quickstart_shapes_*`` catalog names point to)::

    train/000001.jpg ...               val/000001.jpg ...
    annotations/instances_train.json   annotations/instances_val.json

The json files are COCO instances format with box-only annotations: ``bbox`` is the tight
``[x, y, w, h]`` of the shape's *visible* pixels (``x + w - 1`` is its last column), ``area``
the visible pixel count and ``iscrowd`` 0.
"""
import argparse
import json
import logging
import math
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "rectangle", "triangle", "cross")
DEFAULT_SPLIT_SIZES = {"train": 400, "val": 100}
IMAGE_SIZE = 320
MAX_OBJECTS = 6
MIN_VISIBLE_FRACTION = 0.6  # an occluded shape keeps at least this share of its pixels
MIN_COLOUR_CONTRAST = 60.0  # mean |RGB difference| between a shape and the background under it

logger = logging.getLogger(__name__)


def _background(rng, height, width):
    """Textured background, (H, W, 3) float32 in about [0, 255]."""
    cells = int(rng.integers(2, 9))  # coarseness of the colour field
    coarse = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 48)
    rows = np.arange(height, dtype=np.float32)[:, None] * np.float32(math.sin(angle))
    cols = np.arange(width, dtype=np.float32)[None, :] * np.float32(math.cos(angle))
    stripes = np.sin(np.float32(2 * math.pi / period) * (rows + cols))  # (H, W)
    stripe_colour = rng.uniform(-1, 1, size=3).astype(np.float32) * rng.uniform(0, 45)
    field += stripes[..., None] * stripe_colour
    return field


def _shape_mask(rng, class_index, width, height):
    """Binary mask (height, width) of one shape that touches all four canvas borders."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    right, bottom = width - 1, height - 1
    name = CLASS_NAMES[class_index]
    if name == "circle":
        draw.ellipse([0, 0, right, bottom], fill=1)
    elif name == "rectangle":
        draw.rectangle([0, 0, right, bottom], fill=1)
    elif name == "triangle":
        apex = rng.uniform(0, right)
        draw.polygon([(apex, 0), (0, bottom), (right, bottom)], fill=1)
    else:  # cross: two centred bars
        thickness = rng.uniform(0.25, 0.45)
        half_w, half_h = thickness * width / 2, thickness * height / 2
        draw.rectangle([right / 2 - half_w, 0, right / 2 + half_w, bottom], fill=1)
        draw.rectangle([0, bottom / 2 - half_h, right, bottom / 2 + half_h], fill=1)
    mask = np.asarray(canvas, dtype=bool)
    if name == "triangle":  # point it up, left, down or right
        mask = np.rot90(mask, k=int(rng.integers(0, 4)))
    return mask


def _shape_colour(rng, background_under_shape):
    """A random RGB colour that stands out from the background it covers."""
    reference = background_under_shape.mean(axis=0)
    candidates = rng.uniform(0, 255, size=(16, 3))
    contrast = np.abs(candidates - reference).mean(axis=1)
    good = np.flatnonzero(contrast >= MIN_COLOUR_CONTRAST)
    return candidates[good[0] if good.size else contrast.argmax()]


def render_image(rng, height=IMAGE_SIZE, width=IMAGE_SIZE):
    """Draw one image.

    Returns:
        image: (H, W, 3) uint8 RGB.
        boxes_xywh: (K, 4) int64 tight boxes of the visible pixels, COCO ``[x, y, w, h]``.
        labels: (K,) int64 class indices into ``CLASS_NAMES``.
        areas: (K,) int64 visible pixel counts.
    """
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int64)  # which shape shows at each pixel
    full_areas, labels = [], []
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(10 * wanted):
        if len(labels) == wanted:
            break
        class_index = int(rng.integers(0, len(CLASS_NAMES)))
        long_side = math.exp(rng.uniform(math.log(14), math.log(150)))
        is_circle = CLASS_NAMES[class_index] == "circle"
        aspect = 1.0 if is_circle else math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        box_w = max(8, round(long_side * min(1.0, aspect)))
        box_h = max(8, round(long_side * min(1.0, 1.0 / aspect)))
        mask = _shape_mask(rng, class_index, box_w, box_h)
        top = int(rng.integers(0, height - mask.shape[0] + 1))
        left = int(rng.integers(0, width - mask.shape[1] + 1))
        window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))

        # Reject placements that would hide too much of a shape drawn earlier.
        covered = np.bincount(owner[window][mask & (owner[window] >= 0)], minlength=len(labels))
        visible = np.bincount(owner[owner >= 0], minlength=len(labels))
        if np.any(visible - covered < MIN_VISIBLE_FRACTION * np.asarray(full_areas, dtype=np.float64)):
            continue

        colour = _shape_colour(rng, image[window][mask])
        # A soft linear shading across the shape so it is not perfectly flat.
        rows, cols = np.nonzero(mask)
        direction = rng.normal(size=2)
        ramp = (rows * direction[0] + cols * direction[1]) / (np.linalg.norm(direction) * max(mask.shape))
        image[window][mask] = colour * (1 + 0.25 * ramp[:, None])
        owner[window][mask] = len(labels)
        full_areas.append(int(mask.sum()))
        labels.append(class_index)

    # Sensor-like grain (uniform: several times cheaper to draw than Gaussian).
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(rng.uniform(7, 35))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    boxes, areas = visible_boxes(owner, len(labels))
    return image, boxes, np.asarray(labels, dtype=np.int64), areas


def visible_boxes(owner, num_objects):
    """Tight COCO boxes of the pixels each object owns.

    Args:
        owner: (H, W) int map, object number 0..K-1 at each pixel, -1 for background.
        num_objects: K; every object must own at least one pixel.
    Returns:
        boxes_xywh: (K, 4) int64 ``[x_min, y_min, x_max - x_min + 1, y_max - y_min + 1]``.
        areas: (K,) int64 owned pixel counts.
    """
    height, width = owner.shape
    present = owner[None] == np.arange(num_objects)[:, None, None]  # (K, H, W)
    rows_hit, cols_hit = present.any(axis=2), present.any(axis=1)  # (K, H), (K, W)
    y_min, x_min = rows_hit.argmax(axis=1), cols_hit.argmax(axis=1)
    y_max = height - 1 - rows_hit[:, ::-1].argmax(axis=1)
    x_max = width - 1 - cols_hit[:, ::-1].argmax(axis=1)
    boxes = np.stack([x_min, y_min, x_max - x_min + 1, y_max - y_min + 1], axis=1).astype(np.int64)
    return boxes.reshape(-1, 4), present.sum(axis=(1, 2)).astype(np.int64)


def write_split(root, split, num_images, seed=0, image_size=IMAGE_SIZE):
    """Render ``num_images`` images of ``split`` into ``root/split`` and write its COCO json."""
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    split_key = zlib.crc32(split.encode("utf-8"))
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng([seed, split_key, image_id])
        pixels, boxes, labels, areas = render_image(rng, image_size, image_size)
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(root / split / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        annotations += [
            {"id": len(annotations) + k + 1, "image_id": image_id, "category_id": int(label) + 1,
             "bbox": box.tolist(), "area": int(area), "iscrowd": 0}
            for k, (box, label, area) in enumerate(zip(boxes, labels, areas))
        ]
    content = {
        "info": {"description": f"atss_core quick-start synthetic shapes, {split} split, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(CLASS_NAMES)],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


def generate_shapes_dataset(root, split_sizes=None, seed=0, image_size=IMAGE_SIZE):
    """Write every split of ``split_sizes`` (default 400 train / 100 val) under ``root``."""
    for split, num_images in (split_sizes or DEFAULT_SPLIT_SIZES).items():
        write_split(root, split, num_images, seed=seed, image_size=image_size)


def ensure_quickstart_shapes(root):
    """Generate the default quick-start set at ``root`` unless it is already there.

    The set is written to a temporary sibling folder and renamed into place in one step, so an
    interrupted run never leaves a half-written set behind; concurrent processes (one per GPU)
    may all generate, the first rename wins and the others discard their identical copy.
    """
    root = Path(root)
    expected = [root / "annotations" / f"instances_{split}.json" for split in DEFAULT_SPLIT_SIZES]
    if all(path.is_file() for path in expected):
        return root
    if root.exists():
        missing = ", ".join(str(p) for p in expected if not p.is_file())
        raise FileExistsError(f"{root} exists but lacks {missing}; delete {root} to regenerate "
                              "the quick-start data")
    staging = root.parent / f".{root.name}.partial-{os.getpid()}"
    logger.info("Generating the quick-start synthetic data set into %s", root)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        generate_shapes_dataset(staging)
        try:
            os.rename(staging, root)
        except OSError:
            if not all(path.is_file() for path in expected):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the quick-start synthetic shapes data set.")
    parser.add_argument("root", nargs="?", default="datasets/quickstart_shapes", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(ensure_quickstart_shapes(args.root))


if __name__ == "__main__":
    main()
