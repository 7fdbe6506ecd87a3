"""Export a trained ATSS detector to ONNX or TorchScript, post-processing included.

    python tools/export_model.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        --weights ATSS_R_50_FPN_1x.pth --format onnx --output atss_r50.onnx [KEY VALUE ...]

The exported model takes one float32 image ``(1, 3, H, W)`` in the model's input convention
(resized as at test time and normalised as INPUT says; any H, W) and returns ``boxes (K, 4)``
xyxy in input pixels, ``scores (K,)`` and ``labels (K,)`` int64: the detections the PyTorch model
gives (see atss_core/export.py). The ONNX file runs in onnxruntime alone; the TorchScript file
with ``torch.jit.load`` once torch and torchvision are imported. After writing, the file is run
once and its detections compared with the PyTorch model's.
"""
import argparse
import importlib.util
import pickle
import sys
import warnings

import torch

from atss_core.config import cfg as default_cfg, merge_config
from atss_core.export import check_exportable, export_onnx, export_torchscript
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer

# Trace-time example (H, W); the exported graph works for any size.
EXAMPLE_HW = (320, 480)
ONNX_PACKAGES = ("onnx", "onnxruntime")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Export an ATSS detector to ONNX or TorchScript")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config of the model")
    parser.add_argument("--weights", required=True, metavar="FILE", help="trained weights (.pth, URL or catalog://)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    parser.add_argument("--output", required=True, metavar="FILE", help="file to write (.onnx or .pt)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.ATSS.INFERENCE_TH 0.1")
    return parser.parse_args(argv)


def fail(message):
    raise SystemExit(f"export_model: error: {message}")


def check_onnx_packages():
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"ONNX export needs {' and '.join(missing)}: pip install {' '.join(missing)} "
             "(or pip install -r requirements.txt)")


def run_exported(fmt, path, image):
    """(boxes, scores, labels) tensors of the exported file on ``image`` (1, 3, H, W)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(output) for output in session.run(None, {"image": image.numpy()})]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # jit.load is deprecated
        return torch.jit.load(str(path))(image)


def main(argv=None):
    args = parse_args(argv)
    if args.format == "onnx":
        check_onnx_packages()
    try:
        cfg = merge_config(default_cfg.clone(), args.config_file, list(args.opts or []) + ["MODEL.DEVICE", "cpu"])
        model = build_detection_model(cfg).eval()
        check_exportable(model)  # before the (possibly long) weight loading
        DetectronCheckpointer(cfg, model, save_dir="").load(args.weights, allow_shape_mismatch=False)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as error:
        fail(error)

    model.prepare_for_inference(channels_last=False)
    # A random image of noise in the input convention's range; the trace does not depend on it.
    image = torch.randn(1, 3, *EXAMPLE_HW, generator=torch.Generator().manual_seed(0)) * 50
    export = export_onnx if args.format == "onnx" else export_torchscript
    try:
        export(model, image, args.output)
    except OSError as error:
        fail(f"cannot write {args.output!r}: {error.strerror or error}")

    with torch.no_grad():
        expected = model([image[0]])[0]
    boxes, scores, labels = run_exported(args.format, args.output, image)
    same = (len(boxes) == len(expected) and torch.equal(labels, expected.get_field("labels"))
            and torch.allclose(boxes, expected.bbox, atol=1e-2, rtol=0)
            and torch.allclose(scores, expected.get_field("scores"), atol=1e-4, rtol=0))
    print(f"wrote {args.output} ({args.format}); check on a {EXAMPLE_HW[0]}x{EXAMPLE_HW[1]} image: "
          f"{len(boxes)} detections, {'same as' if same else 'DIFFERENT from'} PyTorch's {len(expected)}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
