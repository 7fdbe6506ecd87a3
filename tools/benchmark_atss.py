"""Speed of ATSS R-50-FPN, next to torchvision's FCOS R-50-FPN on the same image.

Prints, for one 800x1216 image (by default) on the chosen device:

* ATSS inference split into backbone+FPN / head / post-processing (anchors + selection + NMS),
  for the plain model and after ``model.prepare_for_inference()`` (the fast path tools use);
* torchvision ``fcos_resnet50_fpn`` (random weights) end to end, and the ATSS/FCOS ratio;
* one ATSS training step (forward, backward, SGD step) at batch 2;
* the time of the ATSS anchor assignment (``prepare_targets``) for 1, 10, 100 and 500 GT boxes.

Every figure is the median of ``--runs`` timed runs after ``--warmup`` untimed ones; ATSS and
FCOS runs alternate so that background load hits both alike. The ATSS weights come from the
golden weight fill when it can be found (realistic post-processing load: ~1400 candidates and
~640 boxes after NMS per image), else from the default initialisation.

Example::

    python tools/benchmark_atss.py --device cpu --threads 2
"""
import argparse
import copy
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch
import torchvision

from atss_core.config import cfg as default_cfg
from atss_core.modeling.detector import build_detection_model
from atss_core.solver import make_optimizer
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import to_image_list

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs/atss/atss_R_50_FPN_1x.yaml"))
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--weight-fill", default=os.environ.get(
        "ATSS_WEIGHT_FILL", REPO_ROOT.parent / "shared" / "golden" / "weightfill.py"),
        help="python file with fill_state_dict(state_dict) (default: the golden data's)")
    parser.add_argument("--skip-train", action="store_true", help="skip the training-step timing")
    return parser.parse_args()


class Timer:
    """Median wall time of named sections; synchronises CUDA around each one."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.samples = {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, name, fn, record=True):
        self._sync()
        start = time.perf_counter()
        result = fn()
        self._sync()
        if record:
            self.samples.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def median(self, name):
        return statistics.median(self.samples[name])


def synthetic_rgb(height, width, seed=0):
    """Smooth random 0-255 RGB content (bilinearly upsampled noise), (3, H, W) float32."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (image[0] * 255).round()


def build_atss(cfg, weight_fill):
    model = build_detection_model(cfg)
    if weight_fill is not None:
        model.load_state_dict(weight_fill.fill_state_dict(model.state_dict()), strict=True)
    return model


def load_weight_fill(path):
    if not Path(path).is_file():
        print(f"weight fill {path} not found: ATSS keeps its default initialisation "
              "(almost no detections, so post-processing is nearly free)")
        return None
    spec = importlib.util.spec_from_file_location("weight_fill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"ATSS weights: fill_state_dict from {path}")
    return module


def time_inference(timer, tag, model, images, record):
    """Records '<tag> backbone', '<tag> head', '<tag> post' and '<tag> total' for one run."""
    def staged():
        batch = images.tensors
        if model.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = timer.measure(f"{tag} backbone+FPN", lambda: model.backbone(batch), record)
        head = timer.measure(f"{tag} head", lambda: model.rpn.head(features), record)
        return timer.measure(f"{tag} postprocess", lambda: model.rpn.box_selector_test(
            *head, model.rpn.anchor_generator(features), images.image_sizes), record)
    timer.measure(f"{tag} total", staged, record)


def random_targets(num_boxes, image_size_wh, device, seed):
    generator = torch.Generator().manual_seed(seed)
    width, height = image_size_wh
    xy = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh = 16 + torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.4, height * 0.4])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width - 1.0, height - 1.0]))], dim=1)
    target = BoxList(boxes.to(device), image_size_wh, mode="xyxy")
    target.add_field("labels", torch.randint(1, 81, (num_boxes,), generator=generator).to(device))
    return target


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", str(device)])
    cfg.freeze()
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"image {args.height}x{args.width}, median of {args.runs} runs after {args.warmup} warm-up")

    weight_fill = load_weight_fill(args.weight_fill)
    plain = build_atss(cfg, weight_fill).to(device).eval()
    fast = copy.deepcopy(plain).prepare_for_inference()
    fcos = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None).to(device).eval()

    rgb = synthetic_rgb(args.height, args.width)
    pixel_mean = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(3, 1, 1)
    atss_image = (rgb.flip(0) - pixel_mean).to(device)  # BGR 0-255 minus the mean
    fcos_image = (rgb / 255).to(device)  # RGB 0-1; FCOS normalises itself
    images = to_image_list([atss_image], cfg.DATALOADER.SIZE_DIVISIBILITY)

    timer = Timer(device)
    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            record = run >= args.warmup
            time_inference(timer, "ATSS", plain, images, record)
            time_inference(timer, "ATSS fast", fast, images, record)
            detections = timer.measure("FCOS total", lambda: fcos([fcos_image]), record)
    counts = len(fast(images)[0]), len(detections[0]["boxes"])
    print(f"\ninference, per image ({counts[0]} ATSS / {counts[1]} FCOS detections):")
    for tag in ("ATSS", "ATSS fast"):
        parts = ", ".join(f"{part} {timer.median(f'{tag} {part}'):.3f} s"
                          for part in ("backbone+FPN", "head", "postprocess"))
        print(f"  {tag:10s} total {timer.median(f'{tag} total'):.3f} s ({parts})")
    fcos_total = timer.median("FCOS total")
    print(f"  {'FCOS':10s} total {fcos_total:.3f} s (torchvision fcos_resnet50_fpn, random weights)")
    for tag in ("ATSS", "ATSS fast"):
        print(f"  {tag}/FCOS ratio: {timer.median(f'{tag} total') / fcos_total:.3f}")

    if not args.skip_train:
        model = build_atss(cfg, weight_fill).to(device).train()
        optimizer = make_optimizer(cfg, model)
        batch = to_image_list([atss_image, atss_image.flip(-1)], cfg.DATALOADER.SIZE_DIVISIBILITY)
        size_wh = (args.width, args.height)
        targets = [random_targets(5, size_wh, device, seed) for seed in (1, 2)]

        def train_step():
            losses = model(batch, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        for run in range(args.warmup + args.runs):
            timer.measure("train step", train_step, run >= args.warmup)
        print(f"\ntraining step at batch 2 (forward + backward + SGD): {timer.median('train step'):.3f} s")

    with torch.inference_mode():
        features = fast.backbone(images.tensors.contiguous(memory_format=torch.channels_last))
        anchors = fast.rpn.anchor_generator(features)
        evaluator = fast.rpn.loss_evaluator
        print("\nanchor assignment (prepare_targets, one image, "
              f"{sum(len(a) for a in anchors)} anchors):")
        for num_boxes in (1, 10, 100, 500):
            targets = [random_targets(num_boxes, (args.width, args.height), device, num_boxes)]
            for run in range(args.warmup + args.runs):
                timer.measure(f"assign {num_boxes}", lambda: evaluator.prepare_targets(targets, anchors),
                              run >= args.warmup)
            print(f"  {num_boxes:4d} GT boxes: {timer.median(f'assign {num_boxes}') * 1000:.1f} ms")


if __name__ == "__main__":
    main()
