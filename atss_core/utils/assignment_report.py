"""Text tables and figures of an ATSS assignment (``AssignmentStatistics`` of
``atss_core.modeling.rpn.atss.assignment_stats``), for ``tools/visualize_assignment.py``.

Figures are plain matplotlib ``Figure`` objects drawn by the Agg canvas: importing this module
leaves the process's matplotlib backend alone, and nothing here opens a window. Save one with
``fig.savefig(path)``; it is freed with the last reference (no pyplot state to close).
"""
import math

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

# Figure geometry (inches at FIGURE_DPI): fixed, so the pixel size of a figure is predictable.
FIGURE_DPI = 100
LEVEL_PANEL_WIDTH = 3.6  # one image panel per FPN level
TYPE_PANEL_WIDTH = 4.0  # one column per positive type in a comparison
HEADER_HEIGHT = 1.0  # title and legend
IMAGE_TITLE_HEIGHT = 0.45
GT_PANEL_HEIGHT = 2.5  # one IoU panel per GT, LEVEL_PANEL_WIDTH wide
COUNTS_PANEL_HEIGHT = 2.8  # positives-per-GT bars of a comparison
# Image panels keep the input's aspect ratio, within these bounds (height / width).
MIN_IMAGE_ASPECT, MAX_IMAGE_ASPECT = 0.4, 1.6

GT_COLOURS = matplotlib.colormaps["tab10"].colors
THRESHOLD_COLOUR = "#d62728"


def _new_figure(figsize):
    """A constrained-layout Figure on its own Agg canvas (no pyplot, no global backend)."""
    fig = Figure(figsize=figsize, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ----------------------------------------------------------------------------------- text summary
def _class_name(class_names, label):
    label = int(label)
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else f"class {label}"


def _per_level(values):
    return "/".join(str(int(v)) for v in values)


def format_summary(stats, class_names=None):
    """Text table, one row per GT: candidates per level, IoU statistics, positives per level.

    ``class_names`` (optional) is indexed by label (entry 0 the background).
    """
    levels = stats.level_names
    num_positive = int((stats.labels > 0).sum())
    num_ignored = int((stats.labels < 0).sum())
    lines = [
        f"POSITIVE_TYPE {stats.positive_type}: {stats.num_gts} GTs, {stats.anchors.shape[0]} anchors on "
        f"{len(levels)} levels {'/'.join(levels)} ({_per_level(stats.num_anchors_per_level)}), "
        + _count(num_positive, "positive") + (f", {num_ignored} ignored" if num_ignored else ""),
    ]
    candidates = _per_level(stats.candidates_per_level)
    level_column = max(len(candidates), len("candidates"))
    lines.append(f"{'GT':>3}  {'class':<12} {'box x1,y1,x2,y2':<24} {'candidates':<{level_column}} {'IoU mean':>8} "
                 f"{'std':>6} {'thresh':>6}  {'positives per level':<20} total")
    for g in range(stats.num_gts):
        box = ",".join(f"{v:.0f}" for v in stats.gt_boxes[g].tolist())
        lines.append(
            f"{g:>3}  {_class_name(class_names, stats.gt_labels[g]):<12.12} {box:<24} {candidates:<{level_column}} "
            f"{float(stats.iou_mean[g]):>8.3f} {float(stats.iou_std[g]):>6.3f} {float(stats.iou_threshold[g]):>6.3f}  "
            f"{_per_level(stats.positives_per_level[g]):<20} {int(stats.positives_per_level[g].sum())}")
    lines.append(f"(candidates and IoU statistics: ATSS's, the {candidates} anchors per level nearest to each "
                 "GT centre; threshold = mean + unbiased std)")
    missing = stats.gts_without_positive.tolist()
    lines.append("GTs without a positive: " + (", ".join(map(str, missing)) if missing else "none"))
    return "\n".join(lines)


def format_comparison(stats_by_type, class_names=None):
    """Text table: positives per level of every GT under each positive type."""
    first = next(iter(stats_by_type.values()))
    types = list(stats_by_type)
    lines = [f"positives per level ({'/'.join(first.level_names)}) of every GT",
             f"{'GT':>3}  {'class':<12} " + " ".join(f"{t:<20}" for t in types).rstrip()]
    for g in range(first.num_gts):
        cells = [f"{_per_level(s.positives_per_level[g])} ({int(s.positives_per_level[g].sum())})"
                 for s in stats_by_type.values()]
        lines.append(f"{g:>3}  {_class_name(class_names, first.gt_labels[g]):<12.12} "
                     + " ".join(f"{c:<20}" for c in cells).rstrip())
    totals = [f"{int((s.labels > 0).sum())} pos, {len(s.gts_without_positive)} GTs w/o"
              for s in stats_by_type.values()]
    lines.append(f"{'all':>3}  {'':<12} " + " ".join(f"{t:<20}" for t in totals).rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- figures
def network_input_to_rgb(image, cfg):
    """Undoes the test transform's normalisation: (3, H, W) network input -> (H, W, 3) RGB in [0, 1]."""
    mean = torch.tensor(cfg.INPUT.PIXEL_MEAN, dtype=image.dtype)[:, None, None]
    std = torch.tensor(cfg.INPUT.PIXEL_STD, dtype=image.dtype)[:, None, None]
    pixels = image.detach().cpu() * std + mean
    if cfg.INPUT.TO_BGR255:
        pixels = pixels[[2, 1, 0]] / 255.0
    return pixels.clamp(0, 1).permute(1, 2, 0).numpy()


def _count(number, noun):
    """A counted noun: 1 positive, 3 positives."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _anchor_size_text(anchors):
    """Side of the square of equal area ("+1" pixels) of ``anchors`` (M, 4): "64 px" or "50-81 px"."""
    sides = ((anchors[:, 2] - anchors[:, 0] + 1) * (anchors[:, 3] - anchors[:, 1] + 1)).sqrt()
    low, high = float(sides.min()), float(sides.max())
    return f"{low:.0f} px" if high - low < 0.5 else f"{low:.0f}-{high:.0f} px"


def _gt_colours(num_gts):
    """(G, 3) RGB, tab10 cycled."""
    return np.array([GT_COLOURS[g % len(GT_COLOURS)] for g in range(num_gts)])


def _box_outlines(boxes):
    """(M, 4) xyxy -> (M, 5, 2) closed outlines for a LineCollection (pixel edges at +-0.5)."""
    x1, y1, x2, y2 = (boxes.detach().cpu().numpy().astype(np.float64) + [-0.5, -0.5, 0.5, 0.5]).T
    return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x2, y2], 1),
                     np.stack([x1, y2], 1), np.stack([x1, y1], 1)], axis=1)


def _centres(boxes):
    """(M, 4) xyxy tensor -> (cx, cy) numpy arrays (M,)."""
    boxes = boxes.detach().cpu().numpy()
    return (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2


def _background(image_rgb):
    """The image lightened and in grey, so the coloured overlays stand out, and shrunk (area
    averaging) to about twice a panel's pixel width: drawing then costs the same for any input."""
    grey = torch.from_numpy(np.ascontiguousarray(image_rgb)).float().mean(dim=2)
    shrink = grey.shape[1] / (2 * LEVEL_PANEL_WIDTH * FIGURE_DPI)
    if shrink > 1:
        size = (max(1, round(grey.shape[0] / shrink)), max(1, round(grey.shape[1] / shrink)))
        grey = torch.nn.functional.interpolate(grey[None, None], size=size, mode="area")[0, 0]
    return (0.45 + 0.55 * grey).numpy()


def _show_image(ax, background, image_size_hw):
    """``background`` (from :func:`_background`) stretched over the input's pixel coordinates."""
    height, width = image_size_hw
    ax.imshow(background, cmap="gray", vmin=0, vmax=1, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_gts(ax, stats, colours):
    """Every GT box in its colour, numbered at its top-left corner."""
    ax.add_collection(LineCollection(_box_outlines(stats.gt_boxes), colors=colours, linewidths=2.0, zorder=3))
    for g, (x1, y1, _, _) in enumerate(stats.gt_boxes.tolist()):  # one label per GT
        ax.text(x1, y1, str(g), color="white", fontsize=7, fontweight="bold", va="bottom", ha="left", zorder=5,
                bbox=dict(boxstyle="square,pad=0.1", facecolor=colours[g], edgecolor="none"))


def _draw_positives(ax, stats, colours, keep_anchor):
    """Outlines and centres of the positive anchors for which ``keep_anchor`` (N,) bool is set."""
    positive = (stats.matched_gt_inds >= 0) & keep_anchor
    boxes = stats.anchors[positive]
    owners = stats.matched_gt_inds[positive].cpu().numpy()
    ax.add_collection(LineCollection(_box_outlines(boxes), colors=colours[owners], linewidths=0.9,
                                     linestyles="--", alpha=0.9, zorder=2))
    cx, cy = _centres(boxes)
    ax.scatter(cx, cy, s=16, c=colours[owners], edgecolors="black", linewidths=0.5, zorder=4)
    return int(positive.sum())


def _image_row_height(image_size_hw, panel_width):
    """Height (inches) of a row of image panels ``panel_width`` wide, titles included."""
    height, width = image_size_hw
    aspect = min(max(height / width, MIN_IMAGE_ASPECT), MAX_IMAGE_ASPECT)
    return panel_width * aspect + IMAGE_TITLE_HEIGHT


def assignment_figure_size(image_size_hw, num_levels, num_gt_panels):
    """(width, height) in inches of :func:`draw_assignment`'s figure (pixels: times FIGURE_DPI)."""
    return (num_levels * LEVEL_PANEL_WIDTH,
            HEADER_HEIGHT + _image_row_height(image_size_hw, LEVEL_PANEL_WIDTH)
            + math.ceil(num_gt_panels / num_levels) * GT_PANEL_HEIGHT)


def comparison_figure_size(image_size_hw, num_types):
    """(width, height) in inches of :func:`draw_comparison`'s figure (at least two columns wide)."""
    return (max(num_types, 2) * TYPE_PANEL_WIDTH,
            HEADER_HEIGHT + _image_row_height(image_size_hw, TYPE_PANEL_WIDTH) + COUNTS_PANEL_HEIGHT)


def _draw_candidate_ious(ax, stats, g, colour, class_name):
    """Bar per ATSS candidate of GT ``g`` (grouped by level) with its IoU and the mean/std/threshold."""
    num_levels = len(stats.level_names)
    levels = stats.candidate_levels.cpu().numpy()
    slots = np.arange(len(levels)) + levels * 1.5  # a gap between level groups
    ious = stats.candidate_ious[g].cpu().numpy()
    positive = stats.candidate_is_positive[g].cpu().numpy()
    mean, std, threshold = float(stats.iou_mean[g]), float(stats.iou_std[g]), float(stats.iou_threshold[g])
    above_not_positive = (ious >= threshold) & ~positive

    bar_colours = np.where(positive[:, None], np.array(colour)[None], np.array([0.78, 0.78, 0.78])[None])
    ax.bar(slots, ious, width=0.85, color=bar_colours, edgecolor="none")
    ax.bar(slots[above_not_positive], ious[above_not_positive], width=0.85, color="white",
           edgecolor=colour, hatch="////", linewidth=0.8)
    ax.axhspan(mean - std, mean + std, color="0.9", zorder=0)
    ax.axhline(mean, color="black", linestyle="--", linewidth=1.0)
    ax.axhline(threshold, color=THRESHOLD_COLOUR, linewidth=1.5)

    level_centres = [slots[levels == level].mean() for level in range(num_levels) if (levels == level).any()]
    ax.set_xticks(level_centres, [name for level, name in enumerate(stats.level_names) if (levels == level).any()],
                  fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(slots[0] - 1, slots[-1] + 1)
    ax.set_ylim(0, max(1.0, float(ious.max()) + 0.05))
    outside = len(stats.positive_inds[g]) - int(positive.sum())
    ax.set_title(f"{class_name} · GT {g}: mean {mean:.2f} + std {std:.2f} = {threshold:.2f}\n"
                 + _count(len(stats.positive_inds[g]), "positive")
                 + (f" ({outside} not a candidate)" if outside else ""),
                 fontsize=8, color=colour)


def draw_assignment(image_rgb, stats, class_names=None, max_gt_panels=10, title=None):
    """Figure of one image's assignment.

    Top row, one panel per FPN level: the image with every GT (colour per GT, numbered), the
    GT's ATSS candidate anchor centres on that level (hollow circles) and the positive anchors
    on that level (dashed boxes, filled centres). Below, one panel per GT (the first
    ``max_gt_panels``): its candidates' IoUs by level, the mean, the mean +- std band and the
    mean + std threshold; filled bars are positives, hatched ones pass the threshold but are
    not positives (centre outside the GT, or taken by a GT they overlap more).

    Args:
        image_rgb: (H, W, 3) float in [0, 1], the network input (see :func:`network_input_to_rgb`).
        stats: AssignmentStatistics of that image.
        class_names: optional, indexed by label.
        max_gt_panels: most IoU panels drawn.
        title: first line of the figure title.

    Returns:
        matplotlib Figure on an Agg canvas.
    """
    num_levels = len(stats.level_names)
    num_gt_panels = min(stats.num_gts, max_gt_panels)
    gt_rows = math.ceil(num_gt_panels / num_levels)
    image_row = _image_row_height(image_rgb.shape[:2], LEVEL_PANEL_WIDTH)
    fig = _new_figure(assignment_figure_size(image_rgb.shape[:2], num_levels, num_gt_panels))
    grid = fig.add_gridspec(1 + gt_rows, num_levels, height_ratios=[image_row] + [GT_PANEL_HEIGHT] * gt_rows)
    colours = _gt_colours(stats.num_gts)
    anchor_levels = stats.anchor_levels
    candidate_levels = stats.candidate_levels
    candidate_colours = np.repeat(colours, stats.candidate_inds.shape[1], axis=0)

    background = _background(image_rgb)
    for level, name in enumerate(stats.level_names):
        ax = fig.add_subplot(grid[0, level])
        _show_image(ax, background, image_rgb.shape[:2])
        _draw_gts(ax, stats, colours)
        on_level = (candidate_levels == level).expand_as(stats.candidate_inds).flatten()
        cx, cy = _centres(stats.anchors[stats.candidate_inds.flatten()[on_level]])
        ax.scatter(cx, cy, s=22, facecolors="none", edgecolors=candidate_colours[on_level.cpu().numpy()],
                   linewidths=1.0, zorder=3)
        num_positive = _draw_positives(ax, stats, colours, anchor_levels == level)
        ax.set_title(f"{name}: {stats.num_anchors_per_level[level]} anchors of "
                     f"{_anchor_size_text(stats.anchors[anchor_levels == level])}\n"
                     + _count(num_positive, "positive"), fontsize=9)

    for g in range(num_gt_panels):
        ax = fig.add_subplot(grid[1 + g // num_levels, g % num_levels])
        _draw_candidate_ious(ax, stats, g, colours[g], _class_name(class_names, stats.gt_labels[g]))

    num_positive = int((stats.labels > 0).sum())
    missing = stats.gts_without_positive.tolist()
    shown = f" (IoU panels: first {num_gt_panels} of {stats.num_gts} GTs)" if num_gt_panels < stats.num_gts else ""
    fig.suptitle(f"{title or 'Positive samples'} · POSITIVE_TYPE {stats.positive_type} · {stats.num_gts} GTs, "
                 f"{num_positive} positive anchors · GTs without a positive: "
                 f"{', '.join(map(str, missing)) if missing else 'none'}{shown}", fontsize=10)
    handles = [
        Line2D([], [], color=colours[0], linewidth=2, label="GT box (colour per GT, numbered)"),
        Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor=colours[0],
               label="ATSS candidate centre (nearest TOPK × A per level)"),
        Line2D([], [], color=colours[0], linestyle="--", marker="o", markeredgecolor="black",
               label="positive anchor (box, centre)"),
        Patch(facecolor=colours[0], label="IoU of a positive candidate"),
        Patch(facecolor="white", edgecolor=colours[0], hatch="////", label="IoU ≥ threshold, not positive"),
        Patch(facecolor=(0.78, 0.78, 0.78), label="other candidate"),
        Line2D([], [], color="black", linestyle="--", label="IoU mean (band: ± std)"),
        Line2D([], [], color=THRESHOLD_COLOUR, linewidth=1.5, label="threshold = mean + std"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def draw_comparison(image_rgb, stats_by_type, class_names=None, title=None):
    """Figure comparing positive types side by side on one image.

    One column per type: top, the image with the GTs and every positive anchor (all levels);
    bottom, each GT's positives stacked by level (bars share the y scale across types).

    Args:
        image_rgb: (H, W, 3) float in [0, 1].
        stats_by_type: dict POSITIVE_TYPE -> AssignmentStatistics of the same image and GTs.
        class_names: optional, indexed by label.
        title: first line of the figure title.
    """
    types = list(stats_by_type)
    first = stats_by_type[types[0]]
    num_levels = len(first.level_names)
    image_row = _image_row_height(image_rgb.shape[:2], TYPE_PANEL_WIDTH)
    fig = _new_figure(comparison_figure_size(image_rgb.shape[:2], len(types)))
    grid = fig.add_gridspec(2, len(types), height_ratios=[image_row, COUNTS_PANEL_HEIGHT])
    colours = _gt_colours(first.num_gts)
    level_colours = matplotlib.colormaps["viridis"](np.linspace(0.1, 0.9, num_levels))
    most_positives = max(int(s.positives_per_level.sum(dim=1).max()) for s in stats_by_type.values())
    gts = np.arange(first.num_gts)

    background = _background(image_rgb)
    for column, positive_type in enumerate(types):
        stats = stats_by_type[positive_type]
        ax = fig.add_subplot(grid[0, column])
        _show_image(ax, background, image_rgb.shape[:2])
        _draw_gts(ax, stats, colours)
        num_positive = _draw_positives(ax, stats, colours, torch.ones_like(stats.labels, dtype=torch.bool))
        missing = len(stats.gts_without_positive)
        ignored = int((stats.labels < 0).sum())
        ax.set_title(f"{positive_type}: " + _count(num_positive, "positive")
                     + (f", {ignored} ignored" if ignored else "")
                     + "\n" + _count(missing, "GT") + " without a positive", fontsize=10)

        ax = fig.add_subplot(grid[1, column])
        counts = stats.positives_per_level.cpu().numpy()
        bottoms = np.zeros(first.num_gts)
        for level, name in enumerate(stats.level_names):  # one stacked segment per level
            bars = ax.bar(gts, counts[:, level], bottom=bottoms, color=level_colours[level], label=name, width=0.8)
            bottoms += counts[:, level]
        ax.bar_label(bars, labels=[str(int(total)) for total in bottoms], fontsize=7, padding=1)
        ax.set_xticks(gts, [str(g) for g in gts], fontsize=7)
        for tick, colour in zip(ax.get_xticklabels(), colours):
            tick.set_color(colour)
            tick.set_fontweight("bold")
        ax.set_ylim(0, most_positives * 1.15 + 1)  # room for the totals
        ax.set_xlabel("GT", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        if column == 0:
            ax.set_ylabel("positives per GT", fontsize=8)

    level_handles = [Patch(facecolor=level_colours[level], label=name) for level, name in enumerate(first.level_names)]
    fig.legend(handles=[Line2D([], [], color=colours[0], linewidth=2, label="GT box"),
                        Line2D([], [], color=colours[0], linestyle="--", marker="o", markeredgecolor="black",
                               label="positive anchor")] + level_handles,
               loc="outside lower center", ncol=2 + num_levels, fontsize=8, frameon=False)
    fig.suptitle(f"{title or 'Positive samples'} · {first.num_gts} GTs · positives per GT stacked by FPN level",
                 fontsize=10)
    return fig
