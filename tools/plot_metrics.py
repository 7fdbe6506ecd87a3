r"""Draw training curves from the metrics.json of one or more training runs.

    python tools/plot_metrics.py output/quickstart [OTHER_OUTPUT_DIR ...] [--output curves.png] \
        [--keys loss loss_cls bbox/AP ...] [--smooth 5]

One panel per quantity, iterations on the x axis, the runs overlaid in the same colours in
every panel (legend by folder name). Losses are drawn raw (thin) and smoothed with a trailing
mean over ``--smooth`` logged rows (thick). Like mmdetection's ``analyze_logs plot_curve``.
"""
import argparse
import math
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atss_core.utils.events import METRICS_FILE, read_metrics

DEFAULT_KEYS = ["loss", "loss_cls", "loss_reg", "loss_centerness", "lr", "bbox/AP"]
AXIS_LABELS = {"lr": "learning rate", "time": "time per iteration (s)",
               "data_time": "data loading per iteration (s)", "max_mem": "peak GPU memory (MB)"}


def axis_label(key):
    """The y-axis label (with unit) of a metrics.json key."""
    if key in AXIS_LABELS:
        return AXIS_LABELS[key]
    if key.startswith("loss"):
        return f"{key} (window median)"
    if "/AP" in key or "/AR" in key:
        return f"{key} (0-1)"
    return key


def trailing_mean(values, window):
    """Mean of each value and the ``window - 1`` before it (fewer at the start). (N,) -> (N,)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def series(rows, key):
    """Iterations and values of ``key`` in the rows that have it, as two arrays."""
    points = [(row["iteration"], row[key]) for row in rows if key in row]
    if not points:
        return np.zeros(0), np.zeros(0)
    iterations, values = zip(*points)
    return np.asarray(iterations), np.asarray(values, dtype=float)


def run_labels(output_dirs):
    """Legend labels: each folder's name, or its whole path where two names are equal."""
    names = [os.path.basename(os.path.normpath(path)) for path in output_dirs]
    return [name if names.count(name) == 1 else os.path.normpath(path)
            for name, path in zip(names, output_dirs)]


def plot_metrics(runs, keys, smooth=5):
    """A Figure with one panel per key of ``keys``.

    Args:
        runs (list[tuple[str, list[dict]]]): (legend label, metrics.json rows) per run.
        keys (list[str]): metrics.json keys, e.g. "loss", "lr", "bbox/AP".
        smooth (int): trailing-mean window, in logged rows, for the losses' smoothed line.
    """
    columns = min(3, len(keys))
    rows_of_panels = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows_of_panels), layout="constrained")
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for index, key in enumerate(keys):
        axes = figure.add_subplot(rows_of_panels, columns, index + 1)
        for (label, rows), colour in zip(runs, colours):
            iterations, values = series(rows, key)
            if not len(values):
                continue
            if key.startswith("loss"):
                axes.plot(iterations, values, color=colour, linewidth=0.8, alpha=0.35)
                axes.plot(iterations, trailing_mean(values, smooth), color=colour, linewidth=2,
                          label=f"{label} (mean of {smooth} rows)")
            else:
                axes.plot(iterations, values, color=colour, linewidth=1.5,
                          marker="o" if "/" in key else None, markersize=4, label=label)
        axes.set_title(key)
        axes.set_xlabel("iteration")
        axes.set_ylabel(axis_label(key))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Plot losses, lr and AP from metrics.json files")
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR",
                        help="training output folders (each with a metrics.json)")
    parser.add_argument("--output", default="metrics.png", metavar="PNG",
                        help="image file to write (default: metrics.png)")
    parser.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                        help=f"quantities to plot, one panel each (default: those of "
                             f"{' '.join(DEFAULT_KEYS)} that the runs have)")
    parser.add_argument("--smooth", type=int, default=5, metavar="N",
                        help="trailing-mean window for the smoothed losses, in logged rows")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    runs = []
    for output_dir, label in zip(args.output_dirs, run_labels(args.output_dirs)):
        path = os.path.join(output_dir, METRICS_FILE)
        if not os.path.isfile(path):
            sys.exit(f"plot_metrics: {path} not found; pass the OUTPUT_DIR of a training run")
        runs.append((label, read_metrics(path)))
    available = sorted({key for _, rows in runs for row in rows for key in row} - {"iteration"})
    keys = args.keys or [key for key in DEFAULT_KEYS if key in available]
    unknown = [key for key in keys if key not in available]
    if unknown or not keys:
        sys.exit(f"plot_metrics: no run has {', '.join(unknown) or 'any of ' + ' '.join(keys)} "
                 f"in metrics.json; available: {', '.join(available) or 'nothing yet'}")
    if args.smooth < 1:
        sys.exit("plot_metrics: --smooth must be at least 1")
    figure = plot_metrics(runs, keys, args.smooth)
    try:
        FigureCanvasAgg(figure).print_png(args.output)
    except OSError as error:
        sys.exit(f"plot_metrics: cannot write {args.output} ({error.strerror or error}); "
                 "pass a writable --output path")
    print(f"plot_metrics: {len(keys)} panels for {len(runs)} runs -> {args.output}")


if __name__ == "__main__":
    main()
