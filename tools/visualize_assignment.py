"""Draw which anchors become positive samples for one image, and why.

The image and its ground-truth boxes are resized as at test time, the configured anchors are
laid over the (padded) network input, and the configured assigner (MODEL.ATSS.POSITIVE_TYPE)
labels them. No weights and no forward pass are needed. Runs on the CPU.

    # an image of a COCO-format data set from the catalog (the quick-start set is generated on first use)
    python tools/visualize_assignment.py --config-file configs/quickstart/atss_mnv2_fpn_shapes.yaml \
        --dataset quickstart_shapes_val --index 0 --output assignment.png

    # any image with a COCO json describing it (its entry is found by file name, or --image-id)
    python tools/visualize_assignment.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --image photo.jpg --annotations instances.json

    # ATSS, IoU and SSC side by side (any subset of ATSS, SSC, IoU, TOPK)
    python tools/visualize_assignment.py ... --compare ATSS,IoU,SSC

Trailing KEY VALUE pairs override the config (e.g. MODEL.ATSS.TOPK 15 INPUT.MIN_SIZE_TEST 600).
A per-GT table (candidates and positives per level, IoU mean / std / threshold, GTs without a
positive) is printed.
"""
import argparse
import os
import sys
import time

import torch

from atss_core.config import cfg as default_cfg, merge_config
from atss_core.data.build import build_dataset
from atss_core.data.datasets import COCODataset
from atss_core.data.transforms import build_transforms
from atss_core.modeling.rpn.atss.assignment_stats import assign_image, canonical_positive_type
from atss_core.utils.assignment_report import (
    FIGURE_DPI, draw_assignment, draw_comparison, format_comparison, format_summary, network_input_to_rgb)
from atss_core.utils.imports import import_file

PROGRAM = "visualize_assignment"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Draw the positive samples an ATSS assigner picks for one image")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a yaml config file")
    source = parser.add_argument_group("image (one of)")
    source.add_argument("--dataset", metavar="NAME", help="a data set of the catalog, e.g. quickstart_shapes_val")
    source.add_argument("--index", type=int, default=0, help="image index in --dataset (default 0)")
    source.add_argument("--image", metavar="PATH", help="an image file (with --annotations)")
    source.add_argument("--annotations", metavar="JSON", help="COCO json with the image's boxes")
    source.add_argument("--image-id", type=int, default=None,
                        help="the image's id in --annotations (default: the entry with the image's file name)")
    parser.add_argument("--output", default="assignment.png", metavar="PNG", help="figure file (default %(default)s)")
    parser.add_argument("--compare", metavar="TYPES", default=None,
                        help="comma-separated positive types to draw side by side, e.g. ATSS,IoU,SSC")
    parser.add_argument("--max-gt-panels", type=int, default=10,
                        help="most per-GT IoU panels in the figure (default %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.ATSS.TOPK 15")
    return parser.parse_args(argv)


def load_dataset_sample(cfg, dataset_name, index):
    """(image (3, H, W) network input, target BoxList, class names, image name) of a catalog data set."""
    paths_catalog = import_file("atss_core.config.paths_catalog", cfg.PATHS_CATALOG, True)
    try:
        (dataset,) = build_dataset([dataset_name], build_transforms(cfg, is_train=False),
                                   paths_catalog.DatasetCatalog, is_train=False)
    except RuntimeError as error:  # unknown catalog name
        raise ValueError(str(error)) from None
    if not 0 <= index < len(dataset):
        raise ValueError(f"--index {index} is out of range for {dataset_name} ({len(dataset)} images); "
                         f"pass --index 0..{len(dataset) - 1}")
    image, target, _ = dataset[index]
    info = dataset.get_img_info(index) if hasattr(dataset, "get_img_info") else {}
    return image, target, getattr(dataset, "class_names", None), f"{dataset_name}[{index}] {info.get('file_name', '')}"


def load_image_sample(cfg, image_path, ann_file, image_id=None):
    """(image, target, class names, image name) of ``image_path`` with its boxes from a COCO json.

    The json entry is ``image_id`` or, by default, the one whose file name is the image's.
    """
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image file {image_path!r} not found; pass an existing image with --image")
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file {ann_file!r} not found; "
                                "pass the image's COCO json with --annotations")
    dataset = COCODataset(ann_file, root="", remove_images_without_annotations=False,
                          transforms=build_transforms(cfg, is_train=False))
    entries = dataset.coco.imgs
    image_name = os.path.basename(image_path)
    if image_id is None:
        matches = sorted(i for i, entry in entries.items() if os.path.basename(entry["file_name"]) == image_name)
        if not matches:
            raise ValueError(f"no image entry of {ann_file} has the file name {image_name!r}; "
                             "add one or pass the image's id with --image-id")
        if len(matches) > 1:
            raise ValueError(f"image entries {matches} of {ann_file} are all named {image_name!r}; "
                             "pick one with --image-id")
        image_id = matches[0]
    elif image_id not in entries:
        ids = sorted(entries)
        listed = f"ids {ids[0]}..{ids[-1]}" if ids else "no images"
        raise ValueError(f"image id {image_id} is not in {ann_file} ({listed}); pass one of its ids with --image-id")

    # The data set reads <root>/<file_name>: choose the root that makes this the given image.
    file_name = os.path.normpath(entries[image_id]["file_name"])
    image_path = os.path.abspath(image_path)
    if not image_path.endswith(os.sep + file_name):
        raise ValueError(f"image id {image_id} of {ann_file} is {file_name!r}, not {image_name!r}; "
                         "pass that image with --image, or the right --image-id")
    dataset.root = image_path[:-len(file_name)]
    image, target, _ = dataset[dataset.ids.index(image_id)]
    return image, target, dataset.class_names, f"{file_name} (id {image_id})"


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError) as error:
        sys.exit(f"{PROGRAM}: {error}")


def run(args):
    """Loads the sample, assigns, prints the summary and writes the figure."""
    start = time.perf_counter()
    cfg = merge_config(default_cfg.clone(), args.config_file, args.opts)
    types = [canonical_positive_type(name) for name in args.compare.split(",")] if args.compare else []
    if args.max_gt_panels < 0:
        raise ValueError(f"--max-gt-panels is {args.max_gt_panels}; pass 0 or more")
    if args.dataset and (args.image or args.annotations):
        raise ValueError("give either --dataset NAME [--index i] or --image PATH --annotations JSON, not both")
    if args.dataset:
        image, target, class_names, image_name = load_dataset_sample(cfg, args.dataset, args.index)
    elif args.image and args.annotations:
        image, target, class_names, image_name = load_image_sample(cfg, args.image, args.annotations, args.image_id)
    else:
        raise ValueError("no image given; pass --dataset NAME [--index i], or --image PATH --annotations JSON")

    target = target.convert("xyxy")
    gt_boxes, gt_labels = target.bbox, target.get_field("labels")
    image_size_hw = tuple(image.shape[-2:])
    image_rgb = network_input_to_rgb(image, cfg)
    title = f"{image_name} · network input {image_size_hw[1]}×{image_size_hw[0]}"
    with torch.no_grad():
        if types:
            stats_by_type = {t: assign_image(cfg, gt_boxes, gt_labels, image_size_hw, positive_type=t) for t in types}
            print(format_comparison(stats_by_type, class_names))
            fig = draw_comparison(image_rgb, stats_by_type, class_names, title=title)
        else:
            stats = assign_image(cfg, gt_boxes, gt_labels, image_size_hw)
            print(format_summary(stats, class_names))
            fig = draw_assignment(image_rgb, stats, class_names, max_gt_panels=args.max_gt_panels, title=title)

    output_folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(output_folder, exist_ok=True)
    fig.savefig(args.output, dpi=FIGURE_DPI)
    width, height = fig.canvas.get_width_height()
    print(f"wrote {args.output} ({width}x{height} px) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
