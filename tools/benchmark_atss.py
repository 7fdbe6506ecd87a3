"""Speed of ATSS next to torchvision's FCOS R-50-FPN on the same input size, as ratios from one run.

Inference (default): a batch of ``--batch`` HxW images (default one 800x1216 image). ATSS runs as the
plain model (what ``model.eval()`` gives) and on its fast path (``prepare_for_inference()``, what
test_net, the demo and the Predictor use), split into backbone+FPN / head / post-processing; FCOS
runs end to end. Then the ATSS anchor assignment (``prepare_targets``) for 1 to 500 GT boxes.

Training (``--train``): one step (forward, backward, SGD) at ``--batch`` images (default 2) of
640x864 with ``--gts`` random boxes per image (default 100 and 500), the same images and boxes for
both: ATSS as configured (FREEZE_CONV_BODY_AT 2 in the R-50 configs) against FCOS with
``trainable_backbone_layers=3``. Also the share of the ATSS step spent in anchor assignment and,
on CUDA, the peak memory.

FCOS is torchvision's ``fcos_resnet50_fpn`` layout (91 classes, frozen batch norms as with
pretrained weights, random weights) with its resize set to ``min_size = min(H, W)`` and
``max_size = max(H, W)``, so it keeps the HxW input instead of scaling it to 800 pixels; the size
its backbone sees is checked and printed. Its time includes its own normalisation and batching.

ATSS weights: ``--weights FILE`` (a checkpoint, e.g. a trained model), else the golden weight fill
when it can be found (realistic post-processing load), else the default initialisation.
``--dtype bfloat16|float16`` runs both networks under autocast (ATSS through ``inference_autocast``,
so its post-processing stays float32) and also times FCOS in float32, the reference of the
low-precision ratio. Every figure is the median of ``--runs`` timed runs after
``--warmup`` untimed ones; ATSS and FCOS runs alternate so that background load hits both alike.

Examples::

    python tools/benchmark_atss.py --device cpu --threads 2
    python tools/benchmark_atss.py --train --threads 2
    python tools/benchmark_atss.py --config-file configs/quickstart/atss_mnv2_fpn_shapes.yaml \\
        --weights output/quickstart/model_final.pth --height 320 --width 480 --dtype bfloat16
"""
import argparse
import copy
import importlib.util
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models import resnet50
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from atss_core.config import cfg as default_cfg
from atss_core.engine.precision import autocast_dtype, inference_autocast
from atss_core.modeling.detector import build_detection_model
from atss_core.solver import make_optimizer
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import to_image_list
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.cpu_memory import keep_freed_cpu_memory

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--config-file", "--config", dest="config_file",
                        default=str(REPO_ROOT / "configs/atss/atss_R_50_FPN_1x.yaml"))
    parser.add_argument("--weights", default=None, metavar="FILE", help="ATSS checkpoint to time")
    parser.add_argument("--train", action="store_true", help="time training steps instead of inference")
    parser.add_argument("--height", type=int, default=None, help="default 800 (inference) / 640 (--train)")
    parser.add_argument("--width", type=int, default=None, help="default 1216 (inference) / 864 (--train)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch: default 1 / 2 (--train)")
    parser.add_argument("--gts", default="100,500", help="--train: GT boxes per image, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-assign", action="store_true", help="inference: skip the assignment timing")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the medians to FILE")
    parser.add_argument("--weight-fill", default=os.environ.get(
        "ATSS_WEIGHT_FILL", REPO_ROOT.parent / "shared" / "golden" / "weightfill.py"),
        help="python file with fill_state_dict(state_dict), used without --weights")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    height, width, batch = (640, 864, 2) if args.train else (800, 1216, 1)
    args.height, args.width = args.height or height, args.width or width
    args.batch = args.batch or batch
    return args


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

    def medians(self):
        return {name: statistics.median(values) for name, values in self.samples.items()}


def synthetic_rgb(height, width, seed=0):
    """Smooth random 0-255 RGB content (bilinearly upsampled noise), (3, H, W) float32."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (image[0] * 255).round()


def load_weight_fill(path):
    if not Path(path).is_file():
        print(f"weight fill {path} not found: ATSS keeps its default initialisation "
              "(almost no detections, so post-processing is nearly free)")
        return None
    spec = importlib.util.spec_from_file_location("weight_fill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_atss(cfg, args):
    """ATSS from ``cfg`` with the weights chosen by ``args`` (see the module docstring)."""
    model = build_detection_model(cfg)
    if args.weights:
        if not Path(args.weights).is_file():
            sys.exit(f"benchmark_atss: weights file {args.weights!r} not found; pass an existing checkpoint")
        try:
            DetectronCheckpointer(cfg, model, save_dir="").load(args.weights, allow_shape_mismatch=False)
        except (FileNotFoundError, ValueError, pickle.UnpicklingError) as error:
            sys.exit(f"benchmark_atss: {error}")
        return model, f"weights {args.weights}"
    weight_fill = load_weight_fill(args.weight_fill)
    if weight_fill is None:
        return model, "default initialisation"
    model.load_state_dict(weight_fill.fill_state_dict(model.state_dict()), strict=True)
    return model, f"golden weight fill {args.weight_fill}"


def build_fcos(height, width, trainable_layers=3):
    """torchvision FCOS R-50-FPN that keeps an HxW input at its size (random weights)."""
    backbone = resnet50(weights=None, norm_layer=TorchvisionFrozenBN)
    backbone = _resnet_fpn_extractor(backbone, trainable_layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, num_classes=91, min_size=min(height, width), max_size=max(height, width))


def random_boxes(num_boxes, image_size_wh, seed):
    """(num_boxes, 4) xyxy boxes at least 16 px wide and high inside the image, labels 1..80."""
    generator = torch.Generator().manual_seed(seed)
    width, height = image_size_wh
    xy = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh = 16 + torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.4, height * 0.4])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width - 1.0, height - 1.0]))], dim=1)
    return boxes, torch.randint(1, 81, (num_boxes,), generator=generator)


def atss_target(boxes, labels, image_size_wh, device):
    target = BoxList(boxes.to(device), image_size_wh, mode="xyxy")
    target.add_field("labels", labels.to(device))
    return target


class Inputs:
    """The same batch of synthetic images for both models: ATSS's ImageList (BGR 0-255 minus the
    pixel mean) and FCOS's list of RGB 0-1 tensors (FCOS normalises itself)."""

    def __init__(self, cfg, args, device):
        images = [synthetic_rgb(args.height, args.width, seed) for seed in range(args.batch)]
        pixel_mean = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(3, 1, 1)
        self.atss = to_image_list([(rgb.flip(0) - pixel_mean).to(device) for rgb in images],
                                  cfg.DATALOADER.SIZE_DIVISIBILITY)
        self.fcos = [(rgb / 255).to(device) for rgb in images]


def fcos_backbone_input_shape(fcos, images):
    """(N, 3, H, W) that FCOS's backbone receives for ``images`` (after its transform)."""
    seen = []
    hook = fcos.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        with torch.inference_mode():
            fcos.eval()(images)
    finally:
        hook.remove()
    return seen[0]


def time_atss_inference(timer, tag, model, images, record):
    """Records '<tag> backbone+FPN', '<tag> head', '<tag> postprocess' and '<tag> total'."""
    def staged():
        batch = images.tensors
        if model.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = timer.measure(f"{tag} backbone+FPN", lambda: model.backbone(batch), record)
        head = timer.measure(f"{tag} head", lambda: model.rpn.head(features), record)
        anchors = model.rpn.anchor_generator(features)

        def postprocess():  # in float32, as ATSSModule runs it
            with torch.autocast(batch.device.type, enabled=False):
                head_maps = [[level.float() for level in maps] for maps in head]
                return model.rpn.box_selector_test(*head_maps, anchors, images.image_sizes)
        return timer.measure(f"{tag} postprocess", postprocess, record)
    return timer.measure(f"{tag} total", staged, record)


def run_inference(args, cfg, device, timer, results):
    atss, weights = build_atss(cfg, args)
    plain = atss.to(device).eval()
    fast = copy.deepcopy(plain).prepare_for_inference()
    fcos = build_fcos(args.height, args.width).to(device).eval()
    inputs = Inputs(cfg, args, device)
    atss_shape, fcos_shape = tuple(inputs.atss.tensors.shape), fcos_backbone_input_shape(fcos, inputs.fcos)
    print(f"ATSS: {weights}\ninput batch: ATSS {atss_shape}, FCOS backbone {fcos_shape}")
    if atss_shape != fcos_shape:
        sys.exit(f"benchmark_atss: FCOS sees {fcos_shape}, ATSS {atss_shape}; use sizes divisible by "
                 f"{cfg.DATALOADER.SIZE_DIVISIBILITY}")

    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            record = run >= args.warmup
            with inference_autocast(args.dtype, device):
                time_atss_inference(timer, "ATSS", plain, inputs.atss, record)
                detections = time_atss_inference(timer, "ATSS fast", fast, inputs.atss, record)
            with inference_autocast(args.dtype, device):
                fcos_detections = timer.measure("FCOS total", lambda: fcos(inputs.fcos), record)
            if args.dtype != "float32":  # the reference of issue 14's low-precision goal
                timer.measure("FCOS float32 total", lambda: fcos(inputs.fcos), record)
    print(f"\ninference, batch {args.batch} ({len(detections[0])} ATSS / {len(fcos_detections[0]['boxes'])} "
          "FCOS detections on the first image), seconds per batch:")
    for tag in ("ATSS", "ATSS fast"):
        parts = ", ".join(f"{part} {timer.median(f'{tag} {part}'):.3f}"
                          for part in ("backbone+FPN", "head", "postprocess"))
        print(f"  {tag:10s} {timer.median(f'{tag} total'):.3f} ({parts})")
    fcos_total = timer.median("FCOS total")
    print(f"  {'FCOS':10s} {fcos_total:.3f}")
    for tag in ("ATSS", "ATSS fast"):
        ratio = timer.median(f"{tag} total") / fcos_total
        results[f"{tag} / FCOS"] = ratio
        print(f"  {tag} / FCOS: {ratio:.3f}")
    if args.dtype != "float32":
        fcos_float32 = timer.median("FCOS float32 total")
        ratio = timer.median("ATSS fast total") / fcos_float32
        results["ATSS fast / FCOS float32"] = ratio
        print(f"  FCOS in float32: {fcos_float32:.3f}; ATSS fast ({args.dtype}) / FCOS float32: {ratio:.3f}")
    results["ATSS fast images/s"] = args.batch / timer.median("ATSS fast total")
    if not args.skip_assign:
        time_assignment(args, fast, inputs.atss, device, timer)


def time_assignment(args, model, images, device, timer):
    with torch.inference_mode():
        features = model.backbone(images.tensors.contiguous(memory_format=torch.channels_last))
        anchors = model.rpn.anchor_generator(features)
        evaluator = model.rpn.loss_evaluator
        print(f"\nanchor assignment (prepare_targets, one image, {sum(len(a) for a in anchors)} anchors):")
        for num_boxes in (1, 10, 100, 500):
            target = atss_target(*random_boxes(num_boxes, (args.width, args.height), num_boxes),
                                 (args.width, args.height), device)
            for run in range(args.warmup + args.runs):
                timer.measure(f"assign {num_boxes}", lambda: evaluator.prepare_targets([target], anchors),
                              run >= args.warmup)
            print(f"  {num_boxes:4d} GT boxes: {timer.median(f'assign {num_boxes}') * 1000:.1f} ms")


def run_training(args, cfg, device, timer, results):
    atss, weights = build_atss(cfg, args)
    atss = atss.to(device).train()
    fcos = build_fcos(args.height, args.width, trainable_layers=3).to(device)
    inputs = Inputs(cfg, args, device)
    atss_shape, fcos_shape = tuple(inputs.atss.tensors.shape), fcos_backbone_input_shape(fcos, inputs.fcos)
    print(f"ATSS: {weights}, FREEZE_CONV_BODY_AT {cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT}; FCOS "
          f"trainable_backbone_layers 3\ninput batch: ATSS {atss_shape}, FCOS backbone {fcos_shape}")
    fcos.train()
    # Plain SGD with momentum for both; ATSS's groups follow its config (bias lr, weight decay).
    optimizers = {"ATSS": make_optimizer(cfg, atss),
                  "FCOS": torch.optim.SGD([p for p in fcos.parameters() if p.requires_grad], lr=0.01,
                                          momentum=0.9, weight_decay=1e-4)}
    low_precision = autocast_dtype(args.dtype, "--dtype")
    scaler = torch.amp.GradScaler(device.type, enabled=low_precision is torch.float16)

    # Time anchor assignment inside the ATSS step (instance attribute shadows the method).
    evaluator = atss.rpn.loss_evaluator
    assign = evaluator.prepare_targets
    evaluator.prepare_targets = lambda *a: timer.measure(current["assign"], lambda: assign(*a), current["record"])
    current = {}

    def step(name, model, images, targets):
        def run():
            with torch.autocast(device.type, dtype=low_precision, enabled=low_precision is not None):
                losses = model(images, targets)
            optimizers[name].zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(optimizers[name])
            scaler.update()
        return run

    for num_boxes in [int(n) for n in args.gts.split(",")]:
        boxes = [random_boxes(num_boxes, (args.width, args.height), seed) for seed in range(args.batch)]
        atss_targets = [atss_target(b, l, (args.width, args.height), device) for b, l in boxes]
        fcos_targets = [{"boxes": b.to(device), "labels": l.to(device)} for b, l in boxes]
        tags = {name: f"{name} step {num_boxes} GTs" for name in ("ATSS", "FCOS")}
        current["assign"] = f"ATSS assignment {num_boxes} GTs"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for run in range(args.warmup + args.runs):
            current["record"] = record = run >= args.warmup
            timer.measure(tags["ATSS"], step("ATSS", atss, inputs.atss, atss_targets), record)
            if run == 0 and device.type == "cuda":
                results[f"ATSS peak memory GiB {num_boxes} GTs"] = torch.cuda.max_memory_allocated(device) / 2**30
            timer.measure(tags["FCOS"], step("FCOS", fcos, inputs.fcos, fcos_targets), record)
        atss_step, fcos_step = timer.median(tags["ATSS"]), timer.median(tags["FCOS"])
        share = timer.median(current["assign"]) / atss_step
        results[f"train ATSS / FCOS {num_boxes} GTs"] = atss_step / fcos_step
        results[f"train assignment share {num_boxes} GTs"] = share
        results[f"train ATSS images/s {num_boxes} GTs"] = args.batch / atss_step
        memory = results.get(f"ATSS peak memory GiB {num_boxes} GTs")
        print(f"\ntraining step, batch {args.batch}, {num_boxes} GTs per image: ATSS {atss_step:.3f} s "
              f"(assignment {share:.1%}{f', peak {memory:.2f} GiB' if memory else ''}), FCOS {fcos_step:.3f} s, "
              f"ATSS / FCOS {atss_step / fcos_step:.3f}")


def main(argv=None):
    """Run the benchmark; returns the ratios and rates it printed (dict name -> float)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmark_atss: --device cuda but no CUDA device is available; pass --device cpu")
    cfg = default_cfg.clone()
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", str(device), *(args.opts or [])])
    except (OSError, KeyError, ValueError, AssertionError) as error:
        sys.exit(f"benchmark_atss: config: {error}")
    cfg.freeze()
    # Both models run in this process, so both get the same allocator setting.
    allocator = ("malloc keeps freed memory (ATSS_KEEP_FREED_MEMORY=0: glibc defaults)"
                 if keep_freed_cpu_memory(device) else "default allocator")
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.batch} x {args.height}x{args.width}, {args.dtype}, median of {args.runs} runs after "
          f"{args.warmup} warm-up, {allocator}")

    timer, results = Timer(device), {}
    (run_training if args.train else run_inference)(args, cfg, device, timer, results)
    if args.json:
        summary = {"args": {k: str(v) for k, v in vars(args).items()}, "medians_s": timer.medians(),
                   "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return results


if __name__ == "__main__":
    main()
