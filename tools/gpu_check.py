"""The benchmark half of tools/gpu_check.sh: every figure issue 14 asks of a GPU, as one table.

Runs tools/benchmark_atss.py in this process for

* inference of R-50-FPN (fast path) at batch 1 and 8 in float32, bfloat16 and float16, next to
  torchvision FCOS on the same 800x1216 images;
* a training step of R-50-FPN at 2 and 8 images per GPU with AMP (``--train-dtype``, default
  float16 with a GradScaler) and 20 / 100 GT boxes per image: images/s, ATSS / FCOS, the share of
  the step spent in anchor assignment and the peak memory;

then prints one markdown table (and writes it with the raw medians to ``--out``).
``--device cpu --smoke`` runs the same code at 64x96 with one run each, to check it without a GPU.
"""
import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_atss  # noqa: E402  (tools/ is no package)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny images, one run each (a dry run)")
    parser.add_argument("--train-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--out", default=None, metavar="DIR", help="write gpu_check.md and gpu_check.json here")
    return parser.parse_args(argv)


def benchmark_cases(args):
    """(row label, benchmark_atss arguments) for every row of the table."""
    if args.smoke:
        size = ["--height", "64", "--width", "96", "--runs", "1", "--warmup", "0"]
        inference_batches, train_batches, gts = (1, 2), (2,), "5"
    else:
        size = ["--runs", "10", "--warmup", "3"]
        inference_batches, train_batches, gts = (1, 8), (2, 8), "20,100"
    common = ["--device", args.device, "--skip-assign", *size]
    for dtype in ("float32", "bfloat16", "float16"):
        for batch in inference_batches:
            yield f"inference {dtype} batch {batch}", [*common, "--dtype", dtype, "--batch", str(batch)]
    train_size = [] if args.smoke else ["--height", "800", "--width", "1216", "--runs", "5", "--warmup", "2"]
    for batch in train_batches:
        yield (f"train {args.train_dtype} batch {batch}",
               [*common, *train_size, "--train", "--dtype", args.train_dtype, "--batch", str(batch), "--gts", gts])


def table_rows(label, results):
    """Markdown rows (work, images/s, ATSS / FCOS, assignment share, peak GiB) of one case."""
    if label.startswith("inference"):
        return [f"| {label} | {results['ATSS fast images/s']:.1f} | {results['ATSS fast / FCOS']:.3f} | | |"]
    rows = []
    for key in results:
        if key.startswith("train ATSS / FCOS "):
            gts = key.rsplit(" ", 2)[1]
            memory = results.get(f"ATSS peak memory GiB {gts} GTs")
            rows.append(f"| {label}, {gts} GTs | {results[f'train ATSS images/s {gts} GTs']:.1f} | "
                        f"{results[key]:.3f} | {results[f'train assignment share {gts} GTs']:.1%} | "
                        f"{'' if memory is None else f'{memory:.2f}'} |")
    return rows


def main(argv=None):
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device visible to PyTorch; run on a GPU machine or pass --device cpu --smoke")
        name = torch.cuda.get_device_name()
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    else:
        name = "cpu"
    header = [f"device {name}, torch {torch.__version__}", "",
              "| work | ATSS images/s | ATSS / FCOS | assignment share | peak memory GiB |",
              "|---|---|---|---|---|"]
    rows, raw = [], {}
    for label, case_args in benchmark_cases(args):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            results = benchmark_atss.main(case_args)
        raw[label] = {"args": case_args, "results": results, "log": log.getvalue()}
        rows += table_rows(label, results)
        print(f"{label}: done", file=sys.stderr, flush=True)
    table = "\n".join(header + rows)
    print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.md").write_text(table + "\n")
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
