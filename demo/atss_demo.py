"""Draw an ATSS model's detections on images, a video or a webcam stream, and save the results.

Run from the repository root. Right after the quick-start training, with no arguments, it takes
the quick-start config and model (output/quickstart/model_final.pth) and annotates the first 8
validation images of the synthetic shapes set::

    python demo/atss_demo.py

The published COCO model (ATSS_R_50_FPN_1x.pth from the model zoo in the ATSS GitHub README)::

    python demo/atss_demo.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --weights ATSS_R_50_FPN_1x.pth --images-dir my_photos --output-dir my_photos_atss

    python demo/atss_demo.py ... --video clip.mp4        # writes <output-dir>/clip_atss.mp4
    python demo/atss_demo.py ... --webcam 0              # records until Ctrl-C

Trailing ``KEY VALUE`` pairs override the config, e.g. ``MODEL.DEVICE cpu``. One annotated file
is written per input image (same name, in --output-dir); the number of detections drawn and the
time per image are printed.
The exit status is 1 when an input image could not be read or annotated (the others are still
processed). Input images are read like training reads them (EXIF orientation applied, 16-bit
scaled to 8 bits), and an --output-dir that holds an input image is refused.
"""
import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import cv2

try:
    from atss_core.config import cfg as default_cfg, merge_config
except ModuleNotFoundError as missing:
    if missing.name != "atss_core":
        raise
    sys.exit("atss_demo: error: atss_core is not importable; run `pip install --no-build-isolation -e .` "
             "in the repository root first")

from atss_core.data.build import QUICKSTART_PREFIX
from atss_core.data.errors import DataError
from atss_core.data.image_io import read_image_bgr
from atss_core.utils.cpu_memory import keep_freed_cpu_memory
from predictor import COCODemo

QUICKSTART_CONFIG = "configs/quickstart/atss_mnv2_fpn_shapes.yaml"
DEFAULT_OUTPUT_DIR = "output/demo"
DEFAULT_NUM_TEST_IMAGES = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FALLBACK_FPS = 25.0


def fail(message):
    """Stop with a one-line error (exit status 1) instead of a traceback."""
    raise SystemExit(f"atss_demo: error: {message}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw ATSS detections on images, a video or a webcam stream",
        epilog="Without arguments: the quick-start model on 8 quick-start validation images.")
    parser.add_argument("--config-file", default=QUICKSTART_CONFIG, metavar="FILE",
                        help=f"yaml config of the model (default: {QUICKSTART_CONFIG})")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="trained model: a .pth file, URL or catalog:// name "
                             "(default: OUTPUT_DIR/model_final.pth of the config, what training writes)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images-dir", default=None, metavar="PATH",
                        help="an image file or a folder of images (default: the first "
                             f"{DEFAULT_NUM_TEST_IMAGES} images of the config's DATASETS.TEST[0])")
    source.add_argument("--video", default=None, metavar="PATH", help="a video file to annotate")
    source.add_argument("--webcam", nargs="?", type=int, const=0, default=None, metavar="INDEX",
                        help="record the annotated stream of camera INDEX (default 0) until Ctrl-C")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
                        help=f"where the annotated files go (default: {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--min-image-size", type=int, default=None,
                        help="shorter image side fed to the model (default: INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="one score threshold for all classes (default: the tuned per-class "
                             "thresholds for COCO models, 0.5 for others)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N",
                        help="annotate at most N images of the folder (default: all of --images-dir, "
                             f"{DEFAULT_NUM_TEST_IMAGES} of the config's test set)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.DEVICE cpu")
    args = parser.parse_args(argv)
    if args.min_image_size is not None and args.min_image_size <= 0:
        parser.error("--min-image-size must be a positive number of pixels")
    if args.num_images is not None and args.num_images <= 0:
        parser.error("--num-images must be positive")
    return args


def _is_quickstart(cfg):
    return any(name.startswith(QUICKSTART_PREFIX) for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST))


def missing_weights_hint(cfg, config_file):
    """What to do when the weights file is missing, for the kind of model ``cfg`` describes."""
    if _is_quickstart(cfg):
        return ("train the quick-start model first: "
                f"python tools/train_net.py --config-file {config_file}")
    if cfg.MODEL.ATSS.NUM_CLASSES == 81:
        return ("download ATSS_R_50_FPN_1x.pth from the model zoo in the ATSS GitHub README "
                "(https://github.com/sfzhang15/ATSS) and pass it with --weights ATSS_R_50_FPN_1x.pth "
                "--config-file configs/atss/atss_R_50_FPN_1x.yaml")
    return f"pass the model that tools/train_net.py wrote for {config_file} with --weights"


def list_images(images_dir, limit=None):
    """``images_dir`` itself when it is a file, else its image files in name order (at most ``limit``)."""
    path = Path(images_dir)
    if path.is_file():
        return [path]
    if not path.is_dir():
        fail(f"--images-dir {images_dir!r} is neither a file nor a folder; "
             "give an image or a folder of images")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        fail(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir!r}; give a folder with images")
    return images[:limit]


def default_images(cfg, limit):
    """The first ``limit`` images of DATASETS.TEST[0] (the quick-start set is generated if absent)."""
    from atss_core.utils.imports import import_file

    if not cfg.DATASETS.TEST:
        fail("no --images-dir given and the config has no DATASETS.TEST; pass --images-dir")
    dataset_name = cfg.DATASETS.TEST[0]
    catalog = import_file("atss_core.config.paths_catalog", cfg.PATHS_CATALOG, True).DatasetCatalog
    try:
        image_dir = Path(catalog.get(dataset_name)["args"]["root"])
    except (KeyError, RuntimeError, ValueError):
        fail(f"no --images-dir given and DATASETS.TEST[0] {dataset_name!r} is not a COCO-style catalog "
             "entry; pass --images-dir")
    if dataset_name.startswith(QUICKSTART_PREFIX):
        from atss_core.data.datasets.synthetic_shapes import ensure_quickstart_shapes
        ensure_quickstart_shapes(image_dir.parent)
    if not image_dir.is_dir():
        fail(f"no --images-dir given and the images of {dataset_name!r} are not at {image_dir}; "
             "pass --images-dir")
    return list_images(image_dir, limit)


def output_image_path(output_dir, image_path):
    suffix = image_path.suffix.lower()
    return Path(output_dir) / (image_path.stem + (suffix if suffix in IMAGE_SUFFIXES else ".jpg"))


def check_output_dir(output_dir, image_paths):
    """Refuse, before anything is read, an output folder where an annotated image could replace
    an input: the folder an input image lies in (also through a symbolic link), or one where an
    output file name links to an input. (A video's output, ``<stem>_atss.mp4``, never has the
    video's own name.)"""
    output = Path(output_dir).resolve()
    inputs = {image_path.resolve() for image_path in image_paths}
    for image_path in image_paths:
        if output in (image_path.parent.resolve(), image_path.resolve().parent) \
                or output_image_path(output, image_path).resolve() in inputs:
            fail(f"--output-dir {output_dir!r} holds the input image {image_path}; the annotated "
                 "images would replace the inputs, so give another --output-dir")


def annotate_images(demo, image_paths, output_dir):
    """Annotate each image into ``output_dir``; returns how many could not be read or annotated.

    An image that fails is reported in one line naming it, and the others are still annotated.
    """
    failed = 0
    for image_path in image_paths:
        try:
            image = read_image_bgr(image_path)
            start = time.perf_counter()
            annotated, detections = demo.annotate(image)
        except (RuntimeError, ValueError) as error:  # an unreadable file, or one the model cannot take
            reason = error if isinstance(error, DataError) else \
                f"cannot annotate image {image_path}: {str(error).splitlines()[0]}"
            print(f"atss_demo: error: {reason}", file=sys.stderr)
            failed += 1
            continue
        elapsed = time.perf_counter() - start
        target = output_image_path(output_dir, image_path)
        if not cv2.imwrite(str(target), annotated):
            fail(f"could not write {target}; check that --output-dir is writable")
        count = f"{len(detections)} detection{'' if len(detections) == 1 else 's'}"
        print(f"{image_path.name}\t{count}\tinference time: {elapsed:.3f}s -> {target}")
    return failed


def annotate_stream(demo, capture, target, fps):
    """Annotate every frame of ``capture`` into the mp4 file ``target``; returns the frame count.

    Stops at the end of the stream or on Ctrl-C (the file written so far is kept).
    """
    writer = None
    frames = 0
    total_time = 0.0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            start = time.perf_counter()
            annotated = demo.run_on_opencv_image(frame)
            total_time += time.perf_counter() - start
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    fail(f"could not open {target} for writing; check that --output-dir is writable")
            writer.write(annotated)
            frames += 1
            print(f"frame {frames}\tinference time: {time.perf_counter() - start:.3f}s")
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames:
        print(f"{frames} frames, {total_time / frames:.3f}s per frame -> {target}")
    return frames


def open_capture(source, description):
    """An opened ``cv2.VideoCapture`` of ``source`` and its frame rate (fallback when unknown)."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        fail(f"cannot open {description}; check that it exists and is a video OpenCV can decode")
    fps = capture.get(cv2.CAP_PROP_FPS)
    return capture, fps if fps > 0 else VIDEO_FALLBACK_FPS


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = merge_config(default_cfg.clone(), args.config_file, args.opts)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))

    weights = args.weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if "://" not in weights and not os.path.isfile(weights):
        fail(f"weights file {weights!r} not found; {missing_weights_hint(cfg, args.config_file)}")
    if args.video is not None and not os.path.isfile(args.video):
        fail(f"video file {args.video!r} not found; check the path given with --video")

    streaming = args.video is not None or args.webcam is not None
    image_paths = []  # a video or webcam needs no image list
    if args.images_dir is not None:
        image_paths = list_images(args.images_dir, args.num_images)
    elif not streaming:
        image_paths = default_images(cfg, args.num_images or DEFAULT_NUM_TEST_IMAGES)

    check_output_dir(args.output_dir, image_paths)

    cfg.defrost()
    cfg.MODEL.WEIGHT = weights
    cfg.freeze()
    keep_freed_cpu_memory(cfg.MODEL.DEVICE)  # allocation only: no page faults on large maps
    try:
        demo = COCODemo(cfg, min_image_size=args.min_image_size,
                        confidence_threshold=args.confidence_threshold)
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as error:
        fail(f"cannot load the model from {weights}: {error}")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.video is not None:
        capture, fps = open_capture(args.video, f"video {args.video!r}")
        if not annotate_stream(demo, capture, output_dir / f"{Path(args.video).stem}_atss.mp4", fps):
            fail(f"video {args.video!r} has no readable frame")
        return 0
    if args.webcam is not None:
        capture, fps = open_capture(args.webcam, f"webcam {args.webcam}")
        annotate_stream(demo, capture, output_dir / f"webcam{args.webcam}_atss.mp4", fps)
        return 0
    return 1 if annotate_images(demo, image_paths, output_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
