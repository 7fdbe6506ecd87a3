"""Per-image CPU time of the exported detector in onnxruntime (and TorchScript) next to the PyTorch
fast path (``prepare_for_inference``), on the same image, post-processing included.

The model is R-50-FPN by default, with the golden weight fill when it can be found (a realistic
post-processing load), exported to a temporary folder with atss_core/export.py. Every figure is
the median of ``--runs`` timed runs after ``--warmup`` untimed ones; the runtimes alternate so
that background load hits them alike. Example::

    python tools/benchmark_export.py --threads 2
"""
import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from atss_core.config import cfg as default_cfg
from atss_core.export import export_onnx, export_torchscript
from benchmark_atss import REPO_ROOT, build_atss, synthetic_rgb


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads for PyTorch and onnxruntime alike")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs/atss/atss_R_50_FPN_1x.yaml"))
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--weight-fill", default=str(REPO_ROOT.parent / "shared" / "golden" / "weightfill.py"),
                        help="python file with fill_state_dict(state_dict) (default: the golden data's)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="ATSS checkpoint to time (default: the golden weight fill)")
    parser.add_argument("--skip-torchscript", action="store_true", help="time PyTorch and onnxruntime only")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    cfg = default_cfg.clone()
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(["MODEL.WEIGHT", "", "MODEL.DEVICE", "cpu"])
    model, weights_source = build_atss(cfg, args)
    model.eval()
    print(f"ATSS: {weights_source}")
    # The model's input convention: BGR 0-255 minus PIXEL_MEAN, divided by PIXEL_STD.
    mean, std = (torch.tensor(values)[:, None, None] for values in (cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD))
    image = (synthetic_rgb(args.height, args.width)[[2, 1, 0]] - mean) / std

    runners = {}
    with tempfile.TemporaryDirectory() as folder:
        model.prepare_for_inference(channels_last=False)
        export_onnx(model, image[None], Path(folder) / "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"), options,
                                               providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda: session.run(None, {"image": image[None].numpy()})
        if not args.skip_torchscript:
            export_torchscript(model, image[None], Path(folder) / "model.pt")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # jit.load is deprecated
                scripted = torch.jit.load(str(Path(folder) / "model.pt"))
            runners["TorchScript"] = lambda: scripted(image[None])
    model.prepare_for_inference()  # channels_last, as tools/test_net.py runs it
    runners = {"PyTorch fast path": lambda: model([image]), **runners}

    samples = {name: [] for name in runners}
    detections = {}
    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            for name, runner in runners.items():
                start = time.perf_counter()
                result = runner()
                if run >= args.warmup:
                    samples[name].append(time.perf_counter() - start)
                detections[name] = len(result[0])
    baseline = statistics.median(samples["PyTorch fast path"])
    print(f"{Path(args.config).stem}, one {args.height}x{args.width} image, CPU, {args.threads} threads, "
          f"median of {args.runs}:")
    print("| per image | time | vs PyTorch fast path | detections |\n|---|---|---|---|")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} s | {median / baseline:.2f} | {detections[name]} |")


if __name__ == "__main__":
    main()
