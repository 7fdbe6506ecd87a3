"""tools/visualize_assignment.py, modeling/rpn/atss/assignment_stats.py and utils/assignment_report.py.

Oracles: the original's assignment labels and ATSS statistics (golden assign_targets), a tiny
case computed by hand in plain Python (IoU with "+1" areas, statistics.stdev), the assigner's
own per-anchor labels, and the PNG files the CLI writes.
"""
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from atss_core.config import cfg as default_cfg
from atss_core.modeling.rpn.atss.assigners import ATSSAssigner, IoUAssigner, build_assigner
from atss_core.modeling.rpn.atss import assignment_stats as stats_module
from atss_core.utils import assignment_report as report

from conftest import DEVICES, REPO_ROOT, load_golden, load_tool

R50_CONFIG = REPO_ROOT / "configs" / "atss" / "atss_R_50_FPN_1x.yaml"
SHAPES_CONFIG = REPO_ROOT / "configs" / "quickstart" / "atss_mnv2_fpn_shapes.yaml"
GOLDEN_SCENARIOS = ("typical", "crowded", "tiny", "huge", "duplicate", "border")


def _config(path, positive_type=None):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(path))
    if positive_type:
        cfg.MODEL.ATSS.POSITIVE_TYPE = positive_type
    cfg.freeze()
    return cfg


def _tool():
    return load_tool("visualize_assignment")


def _check_positives_against_labels(stats):
    """positive_inds[g] == anchors labelled with GT g's class and matched to GT g; levels agree."""
    level_ends = np.cumsum(stats.num_anchors_per_level)
    for g in range(stats.num_gts):
        expected = ((stats.labels == stats.gt_labels[g]) & (stats.matched_gt_inds == g)).nonzero().flatten()
        assert stats.positive_inds[g].tolist() == expected.tolist()
        levels = np.searchsorted(level_ends, stats.positive_inds[g].cpu().numpy(), side="right")
        assert stats.positives_per_level[g].tolist() == np.bincount(levels, minlength=len(level_ends)).tolist()
    all_listed = sorted(i for inds in stats.positive_inds for i in inds.tolist())
    assert all_listed == (stats.labels > 0).nonzero().flatten().tolist()


# ------------------------------------------------------------------------------- anchors of an input
def test_feature_grid_sizes_by_hand():
    # 800x1066 pads to 800x1088; P7: ceil(800/128) = 7, ceil(1088/128) = 9.
    assert stats_module.feature_grid_sizes((800, 1066), (8, 16, 32, 64, 128), 32) == [
        (100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]
    assert stats_module.feature_grid_sizes((100, 70), (8, 16), 0) == [(13, 9), (7, 5)]


def test_anchors_for_image_match_golden():
    golden = load_golden("assign_targets.pt")
    anchors = stats_module.anchors_for_image(_config(R50_CONFIG), tuple(golden["image_size_hw"]))
    assert [len(level) for level in anchors] == [2080, 520, 130, 35, 12]
    torch.testing.assert_close(torch.cat(anchors), golden["anchors"], rtol=0, atol=0)


# ---------------------------------------------------------------------------- statistics vs golden
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positive_type", ["ATSS", "SSC", "IoU", "TOPK"])
def test_statistics_match_golden_assignment(positive_type, device):
    golden = load_golden("assign_targets.pt")
    diagnostics = load_golden("assign_targets.json")["atss_diagnostics"]
    cfg = _config(R50_CONFIG, positive_type)
    anchors = torch.cat(stats_module.anchors_for_image(cfg, tuple(golden["image_size_hw"]))).to(device)
    level_sizes = [2080, 520, 130, 35, 12]
    for scenario in GOLDEN_SCENARIOS:
        boxes = golden["scenarios"][scenario]["bbox"].to(device)
        gt_labels = golden["scenarios"][scenario]["labels"].to(device)
        stats = stats_module.assignment_statistics(list(anchors.split(level_sizes)), boxes, gt_labels, build_assigner(cfg),
                                          topk=cfg.MODEL.ATSS.TOPK, positive_type=positive_type)
        golden_labels = golden["runs"][f"{scenario}/{positive_type}/BOX"]["labels"]
        torch.testing.assert_close(stats.labels.cpu().to(golden_labels.dtype), golden_labels, rtol=0, atol=0)
        _check_positives_against_labels(stats)
        # The ATSS statistics are gathered whatever the type.
        expected = diagnostics[scenario]
        torch.testing.assert_close(stats.iou_mean.cpu(), torch.tensor(expected["iou_mean_per_gt"]), rtol=0, atol=2e-6)
        torch.testing.assert_close(stats.iou_std.cpu(), torch.tensor(expected["iou_std_per_gt_unbiased"]),
                                   rtol=0, atol=2e-6)
        torch.testing.assert_close(stats.iou_threshold.cpu(), torch.tensor(expected["iou_thresh_per_gt"]),
                                   rtol=0, atol=2e-6)
        assert stats.candidates_per_level.tolist() == [9, 9, 9, 9, 9]
        if positive_type == "ATSS":  # positives are candidates over the threshold with the centre inside
            passes = (stats.candidate_ious >= stats.iou_threshold[:, None]) & stats.candidate_centre_inside
            assert not (stats.candidate_is_positive & ~passes).any()
            assert stats.candidate_is_positive.sum() == (stats.labels > 0).sum()


def test_assign_image_overrides_positive_type_and_keeps_config():
    golden = load_golden("assign_targets.pt")
    cfg = _config(R50_CONFIG)
    scenario = golden["scenarios"]["typical"]
    stats = stats_module.assign_image(cfg, scenario["bbox"], scenario["labels"], tuple(golden["image_size_hw"]),
                             positive_type="iou")
    assert stats.positive_type == "IoU" and cfg.MODEL.ATSS.POSITIVE_TYPE == "ATSS"
    assert stats.level_names == ["P3", "P4", "P5", "P6", "P7"]
    torch.testing.assert_close(stats.labels.float(), golden["runs"]["typical/IoU/BOX"]["labels"], rtol=0, atol=0)


# ------------------------------------------------------------------------------ tiny case by hand
def _iou_plus_one(a, b):
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return inter_w * inter_h / (area(a) + area(b) - inter_w * inter_h)


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _tiny_case():
    # Level 0: six 16-px anchors centred at x = 4, 12, ..., 44 (y = 12); level 1: three 32-px
    # anchors centred at x = 8, 24, 40 (y = 16). No distance ties for the GTs below.
    level0 = [[cx - 7.5, 4.5, cx + 7.5, 19.5] for cx in range(4, 48, 8)]
    level1 = [[cx - 15.5, 0.5, cx + 15.5, 31.5] for cx in (8, 24, 40)]
    gts = [[11.0, 6.0, 31.0, 22.0], [40.0, 2.0, 47.0, 20.0]]
    return [level0, level1], gts, [2, 1]


def _hand_atss(levels, gts, topk):
    """Plain-Python ATSS: per GT candidates, IoUs, mean, stdev, threshold; then the final positives."""
    anchors = [box for level in levels for box in level]
    per_gt, wanted = [], {}
    for g, gt in enumerate(gts):
        gx, gy = _centre(gt)
        candidates, start = [], 0
        for level in levels:
            distance = [math.dist(_centre(box), (gx, gy)) for box in level]
            candidates += [start + i for i in sorted(range(len(level)), key=distance.__getitem__)[:topk]]
            start += len(level)
        ious = [_iou_plus_one(anchors[i], gt) for i in candidates]
        threshold = statistics.mean(ious) + statistics.stdev(ious)
        for i, iou in zip(candidates, ious):
            cx, cy = _centre(anchors[i])
            if iou >= threshold and min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01:
                wanted.setdefault(i, []).append((iou, -g))
        per_gt.append(dict(candidates=candidates, ious=ious, mean=statistics.mean(ious),
                           std=statistics.stdev(ious), threshold=threshold))
    owner = {i: -max(claims)[1] for i, claims in wanted.items()}  # highest IoU, then lowest GT index
    for g, entry in enumerate(per_gt):
        entry["positives"] = sorted(i for i, o in owner.items() if o == g)
    return per_gt


def test_statistics_of_tiny_case_by_hand():
    levels, gts, labels = _tiny_case()
    expected = _hand_atss(levels, gts, topk=2)
    stats = stats_module.assignment_statistics([torch.tensor(level) for level in levels], torch.tensor(gts),
                                      torch.tensor(labels), ATSSAssigner(topk=2), topk=2,
                                      level_names=["P3", "P4"])
    assert stats.positive_type == "ATSS"
    assert stats.candidate_levels.tolist() == [0, 0, 1, 1]
    for g, entry in enumerate(expected):
        assert stats.candidate_inds[g].tolist() == entry["candidates"]
        assert stats.candidate_ious[g].tolist() == pytest.approx(entry["ious"], abs=1e-6)
        assert float(stats.iou_mean[g]) == pytest.approx(entry["mean"], abs=1e-6)
        assert float(stats.iou_std[g]) == pytest.approx(entry["std"], abs=1e-6)
        assert float(stats.iou_threshold[g]) == pytest.approx(entry["threshold"], abs=1e-6)
        assert stats.positive_inds[g].tolist() == entry["positives"]
        assert stats.candidate_is_positive[g].tolist() == [i in entry["positives"] for i in entry["candidates"]]
    assert all(entry["positives"] for entry in expected)  # the case is not vacuous
    _check_positives_against_labels(stats)
    summary = report.format_summary(stats, class_names=("__background", "square", "disc"))
    assert "GTs without a positive: none" in summary
    assert f"{expected[0]['threshold']:.3f}" in summary and "disc" in summary


def test_gt_without_positive_is_reported():
    levels, _, _ = _tiny_case()
    # A 2-px GT between anchor centres: its best anchors (centres (12, 12) and (20, 12), tied) are
    # low-quality matches whose centre lies outside it, so the IoU assigner ignores them.
    gts = torch.tensor([[40.0, 2.0, 47.0, 20.0], [13.0, 13.0, 14.0, 14.0]])
    stats = stats_module.assignment_statistics([torch.tensor(level) for level in levels], gts, torch.tensor([1, 1]),
                                      IoUAssigner(), topk=2)
    assert stats.positive_type == "IoU"
    assert stats.gts_without_positive.tolist() == [1]
    assert len(stats.positive_inds[1]) == 0 and len(stats.positive_inds[0]) > 0
    assert (stats.labels < 0).nonzero().flatten().tolist() == [1, 2]
    assert report.format_summary(stats).splitlines()[-1] == "GTs without a positive: 1"


def test_positive_type_names():
    assert [stats_module.canonical_positive_type(n) for n in ("atss", "Iou", " ssc", "TopK")] == ["ATSS", "IoU", "SSC", "TOPK"]
    with pytest.raises(ValueError, match="unknown positive type 'FOO'; choose from ATSS, SSC, IoU, TOPK"):
        stats_module.canonical_positive_type("FOO")


def test_no_gt_is_a_clear_error():
    with pytest.raises(ValueError, match="no usable ground-truth box"):
        stats_module.assignment_statistics([torch.zeros(4, 4)], torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                  ATSSAssigner(), topk=9)


def test_figure_of_many_gts_has_the_documented_size():
    golden = load_golden("assign_targets.pt")
    scenario = golden["scenarios"]["crowded"]  # 60 GTs: colours cycle, IoU panels capped
    image_size_hw = tuple(golden["image_size_hw"])
    stats = stats_module.assign_image(_config(R50_CONFIG), scenario["bbox"], scenario["labels"], image_size_hw)
    image = np.random.default_rng(0).random((*image_size_hw, 3))
    fig = report.draw_assignment(image, stats, max_gt_panels=7)
    assert len(fig.axes) == 5 + 7
    fig.canvas.draw()
    # Agg truncates: 100 * (1.0 header + 3.6 * 317 / 411 + 0.45 image row + 2 x 2.5 GT rows) = 922.7
    assert fig.canvas.get_width_height() == (1800, 922)


def test_importing_the_report_leaves_the_matplotlib_backend_alone(tmp_path):
    """The report draws on its own Agg canvases: a process that chose another backend keeps it."""
    code = ("import matplotlib; matplotlib.use('svg'); "
            "import atss_core.utils.assignment_report as r, matplotlib.pyplot as plt; "
            "print(matplotlib.get_backend(), type(r._new_figure((2, 1)).canvas).__name__)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["svg", "FigureCanvasAgg"]


def test_each_assigner_names_its_positive_type():
    from atss_core.modeling.rpn.atss import assigners
    assert assigners.POSITIVE_TYPES == ("ATSS", "SSC", "IoU", "TOPK")
    assert {name: cls.__name__ for name, cls in assigners.ASSIGNERS.items()} == {
        "ATSS": "ATSSAssigner", "SSC": "SSCAssigner", "IoU": "IoUAssigner", "TOPK": "TopKAssigner"}
    for name in assigners.POSITIVE_TYPES:
        assert type(build_assigner(_config(R50_CONFIG, name))).POSITIVE_TYPE == name


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def small_coco(tmp_path):
    """A 240x180 image with three filled shapes and its COCO json (image id 7)."""
    image = Image.new("RGB", (240, 180), (120, 140, 160))
    draw = ImageDraw.Draw(image)
    boxes = [[20, 30, 60, 50], [110, 60, 90, 90], [200, 10, 24, 24]]  # x, y, w, h
    for (x, y, w, h), colour in zip(boxes, [(250, 40, 40), (30, 200, 60), (240, 240, 20)]):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "scene.png")
    content = {
        "images": [{"id": 7, "file_name": "scene.png", "width": 240, "height": 180}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": i % 2 + 1, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for i, box in enumerate(boxes)],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(content))
    return tmp_path / "images" / "scene.png", tmp_path / "ann.json"


def _read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _looks_drawn(pixels, expected_colour):
    """Not blank: varied content, and the first GT colour is drawn on a fair number of pixels."""
    colour_hits = (np.abs(pixels.astype(int) - expected_colour).sum(axis=2) <= 6).sum()
    return pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200 and colour_hits > 100


def test_cli_end_to_end(small_coco, tmp_path):
    image_path, ann_file = small_coco
    output = tmp_path / "figures" / "assignment.png"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "visualize_assignment.py"), "--config-file", str(SHAPES_CONFIG),
         "--image", str(image_path), "--annotations", str(ann_file), "--output", str(output)],
        capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    # Input 240x180 at MIN/MAX_SIZE_TEST 320 -> 320x240: 5 levels x 3.6 in wide; 1.0 header +
    # (3.6 * 0.75 + 0.45) image row + one 2.5 in row of GT panels = 6.65 in high, at 100 dpi.
    pixels = _read_png(output)
    assert pixels.shape[:2] == (665, 1800)
    tab10_blue = np.array(report.GT_COLOURS[0]) * 255
    assert _looks_drawn(pixels, tab10_blue)
    lines = run.stdout.splitlines()
    # The 320x240 input pads to 320x256: grids 40x32, 20x16, 10x8, 5x4, 3x2 (one anchor per cell).
    assert lines[0].startswith("POSITIVE_TYPE ATSS: 3 GTs, 1706 anchors on 5 levels P3/P4/P5/P6/P7 "
                               "(1280/320/80/20/6)")
    assert [line.split()[1] for line in lines[2:5]] == ["red", "green", "red"]
    assert "GTs without a positive: none" in run.stdout


def test_cli_compare(small_coco, tmp_path, capsys):
    image_path, ann_file = small_coco
    output = tmp_path / "compare.png"
    _tool().main(["--config-file", str(SHAPES_CONFIG), "--image", str(image_path), "--annotations", str(ann_file),
                  "--image-id", "7", "--output", str(output), "--compare", "ATSS,iou,SSC"])
    pixels = _read_png(output)
    # 3 columns x 4.0 in; 1.0 header + (4.0 * 0.75 + 0.45) image row + 2.8 in bars = 7.25 in.
    assert pixels.shape[:2] == (725, 1200)
    assert _looks_drawn(pixels, np.array(report.GT_COLOURS[0]) * 255)
    printed = capsys.readouterr().out
    header = printed.splitlines()[1].split()
    assert header[2:] == ["ATSS", "IoU", "SSC"]


@pytest.mark.parametrize("case, expected", [
    ("missing_image", "image file '{tmp}/nope.png' not found; pass an existing image with --image"),
    ("missing_annotations", "annotation file '{tmp}/nope.json' not found; pass the image's COCO json"),
    ("unknown_id", "image id 99 is not in {tmp}/ann.json (ids 7..7); pass one of its ids with --image-id"),
    ("unlisted_image", "no image entry of {tmp}/ann.json has the file name 'other.png'"),
    ("index_out_of_range", "--index 3 is out of range for coco:{tmp}/images:{tmp}/ann.json (1 images); "
                           "pass --index 0..0"),
    ("unknown_dataset", "dataset 'no_such_set' is not in the catalog"),
    ("unknown_type", "unknown positive type 'CENTER'; choose from ATSS, SSC, IoU, TOPK"),
    ("missing_config", "config file 'nope.yaml' not found"),
    ("no_image", "no image given; pass --dataset NAME"),
])
def test_cli_bad_inputs_give_one_line(small_coco, tmp_path, case, expected):
    image_path, ann_file = small_coco
    tmp = tmp_path
    other = tmp / "images" / "other.png"
    Image.new("RGB", (8, 8)).save(other)
    source = ["--image", str(image_path), "--annotations", str(ann_file)]
    argv = {
        "missing_image": ["--image", str(tmp / "nope.png"), "--annotations", str(ann_file)],
        "missing_annotations": ["--image", str(image_path), "--annotations", str(tmp / "nope.json")],
        "unknown_id": source + ["--image-id", "99"],
        "unlisted_image": ["--image", str(other), "--annotations", str(ann_file)],
        "index_out_of_range": ["--dataset", f"coco:{tmp}/images:{ann_file}", "--index", "3"],
        "unknown_dataset": ["--dataset", "no_such_set"],
        "unknown_type": source + ["--compare", "ATSS,CENTER"],
        "missing_config": source,
        "no_image": [],
    }[case]
    config = "nope.yaml" if case == "missing_config" else str(SHAPES_CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        _tool().main(["--config-file", config, "--output", str(tmp / "out.png")] + argv)
    message = str(exit_info.value.code)
    assert message.startswith("visualize_assignment: ") and "\n" not in message
    assert expected.format(tmp=tmp) in message
    assert not (tmp / "out.png").exists()
