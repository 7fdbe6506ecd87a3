"""Evaluation: COCO/VOC scoring, the inference loop, test-time augmentation and tools/test_net.py.

Oracles: pycocotools run directly on hand-built result lists, hand-computed box votes and VOC
APs, a plain sequential re-statement of the original's voting loop, exact flip identities and
the golden final detections of the original's post-processing.
"""
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from atss_core.config import cfg as global_cfg
from atss_core.data.datasets import COCODataset
from atss_core.data.datasets.evaluation import evaluate
from atss_core.data.datasets.evaluation.coco.coco_eval import (
    COCOResults, check_expected_results, do_coco_evaluation, prepare_for_coco_detection)
from atss_core.data.datasets.evaluation.voc.voc_eval import eval_detection_voc
from atss_core.engine import bbox_aug, inference as inference_module
from atss_core.engine.bbox_aug import boxlist_vote, keep_top_scores, remove_boxes
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.boxlist_ops import boxlist_iou
from atss_core.structures.image_list import to_image_list

from conftest import DEVICES, load_golden, load_tool, one_line_exit

JSON_CATEGORY_IDS = [3, 7, 12]  # deliberately not 1..3, to exercise the label -> json id mapping


def _boxlist(boxes, size, scores=None, labels=None):
    boxlist = BoxList(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), size)
    count = len(boxlist)
    boxlist.add_field("scores", torch.as_tensor(scores if scores is not None else [0.5] * count, dtype=torch.float32))
    boxlist.add_field("labels", torch.as_tensor(labels if labels is not None else [1] * count, dtype=torch.int64))
    return boxlist


# ----------------------------------------------------------------------------- COCO evaluation
def _write_coco_json(path, with_annotations=True):
    """Three images with objects of small, medium and large size and one crowd region."""
    images = [{"id": 11, "file_name": "a.jpg", "width": 200, "height": 100},
              {"id": 5, "file_name": "b.jpg", "width": 160, "height": 120},
              {"id": 42, "file_name": "c.jpg", "width": 300, "height": 240}]
    gt = [  # image id, json category, xywh
        (11, 3, [10, 10, 20, 15]), (11, 7, [60, 20, 80, 60]), (11, 3, [150, 5, 40, 40]),
        (5, 12, [5, 5, 100, 100]), (5, 7, [110, 30, 12, 10]),
        (42, 3, [20, 30, 150, 120]), (42, 12, [200, 10, 60, 200]), (42, 7, [180, 200, 25, 30]),
    ]
    annotations = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i, (img, cat, box) in enumerate(gt)]
    annotations.append({"id": 100, "image_id": 42, "category_id": 3, "bbox": [0, 180, 60, 60], "area": 3600,
                        "iscrowd": 1})
    data = {"images": images, "categories": [{"id": c, "name": f"class{c}"} for c in JSON_CATEGORY_IDS]}
    if with_annotations:
        data["annotations"] = annotations
    path.write_text(json.dumps(data))
    return gt


# resized network-input size per dataset index (dataset order is by sorted image id: 5, 11, 42)
RESIZED_WH = {0: (80, 60), 1: (400, 200), 2: (150, 120)}  # scale 0.5, 2, 0.5


def _predictions_and_expected(dataset, gt):
    """Predictions in resized coordinates and, independently, the COCO results they must give.

    Each ground truth gets a jittered hit; there are also misplaced, mislabelled and duplicate
    detections, so AP is neither 0 nor 1.
    """
    generator = torch.Generator().manual_seed(7)
    predictions, expected = [], []
    for index in range(len(dataset)):
        image_id = dataset.get_img_info(index)["id"]
        width, height = dataset.get_img_info(index)["width"], dataset.get_img_info(index)["height"]
        scale = RESIZED_WH[index][0] / width
        boxes, scores, labels = [], [], []
        for img, category, (x, y, w, h) in gt:
            if img != image_id:
                continue
            label = JSON_CATEGORY_IDS.index(category) + 1
            jitter = (torch.rand(4, generator=generator) - 0.5) * 0.3 * min(w, h)
            x1, y1 = x + jitter[0].item(), y + jitter[1].item()
            x2, y2 = x + w - 1 + jitter[2].item(), y + h - 1 + jitter[3].item()
            candidates = [((x1, y1, x2, y2), label, 0.3 + 0.6 * torch.rand(1, generator=generator).item()),
                          ((x1 + w / 2, y1, x2 + w / 2, y2), label, 0.8),  # misplaced
                          ((x1, y1, x2, y2), label % 3 + 1, 0.4)]  # wrong class
            for box, lab, score in candidates:
                boxes.append([c * scale for c in box])
                scores.append(score)
                labels.append(lab)
                # what the evaluation must produce: original-size xywh with the "+1" width
                expected.append({"image_id": image_id, "category_id": JSON_CATEGORY_IDS[lab - 1],
                                 "bbox": [box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1],
                                 "score": score})
        predictions.append(_boxlist(boxes, RESIZED_WH[index], scores, labels))
    return predictions, expected


def _pycocotools_stats(ann_file, results):
    coco_gt = COCO(str(ann_file))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats[:6]


@pytest.fixture
def coco_split(tmp_path):
    ann_file = tmp_path / "instances.json"
    gt = _write_coco_json(ann_file)
    dataset = COCODataset(str(ann_file), str(tmp_path), remove_images_without_annotations=False)
    return ann_file, dataset, gt


def test_coco_evaluation_equals_pycocotools(coco_split, tmp_path):
    ann_file, dataset, gt = coco_split
    predictions, expected = _predictions_and_expected(dataset, gt)
    out = tmp_path / "out"
    out.mkdir()
    results, coco_results = evaluate(dataset, predictions, str(out), box_only=False, iou_types=("bbox",),
                                     expected_results=(), expected_results_sigma_tol=4)

    stats = _pycocotools_stats(ann_file, expected)
    assert 0.05 < stats[0] < 0.95  # the case is not degenerate
    ours = [results.results["bbox"][m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    np.testing.assert_allclose(ours, stats, rtol=0, atol=1e-9)

    written = json.loads((out / "bbox.json").read_text())
    assert written == coco_results["bbox"]
    assert len(written) == len(expected)
    key = lambda r: (r["image_id"], r["score"], r["category_id"])  # noqa: E731
    for ours_r, exp_r in zip(sorted(written, key=key), sorted(expected, key=key)):
        assert ours_r["image_id"] == exp_r["image_id"] and ours_r["category_id"] == exp_r["category_id"]
        np.testing.assert_allclose(ours_r["bbox"], exp_r["bbox"], atol=1e-3)
        assert ours_r["score"] == pytest.approx(exp_r["score"], abs=1e-6)
    assert {r["category_id"] for r in written} == set(JSON_CATEGORY_IDS)
    assert json.loads((out / "coco_results.json").read_text()) == results.as_dict()


def test_coco_report_has_recall_and_per_class_ap_by_name(coco_split, tmp_path, caplog):
    """Oracles: COCOeval's own AR stats, and COCOeval restricted to one category for that
    class's AP; the log shows both tables and the f-measure thresholds by class name."""
    ann_file, dataset, gt = coco_split
    predictions, expected = _predictions_and_expected(dataset, gt)
    with caplog.at_level(logging.INFO, logger="atss_core.inference"):
        results, _ = do_coco_evaluation(dataset, predictions, False, str(tmp_path), ("bbox",), (), 4)

    coco_gt = COCO(str(ann_file))
    full = COCOeval(coco_gt, coco_gt.loadRes(expected), "bbox")
    full.evaluate(), full.accumulate(), full.summarize()
    written = json.loads((tmp_path / "coco_results.json").read_text())["bbox"]
    for index, name in enumerate(("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")):
        assert written[name] == pytest.approx(full.stats[6 + index], abs=1e-9)
    per_class = {}
    for category in JSON_CATEGORY_IDS:
        single = COCOeval(coco_gt, coco_gt.loadRes(expected), "bbox")
        single.params.catIds = [category]
        single.evaluate(), single.accumulate(), single.summarize()
        per_class[f"class{category}"] = single.stats[0]
        assert written[f"AP-class{category}"] == pytest.approx(single.stats[0], abs=1e-9)
    assert len(set(per_class.values())) > 1  # the classes differ, so a mix-up would show

    log = caplog.text
    assert "AP50" in log and "AR100" in log and "ARl" in log
    for name, ap in per_class.items():  # per-class table rows: name, then AP to 3 decimals
        assert re.search(rf"^{name} +{ap:.3f}$", log, re.MULTILINE), name
        assert re.search(rf"^{name} +\d\.\d{{3}} +\d\.\d{{3}}$", log, re.MULTILINE)  # f-measure row


def test_coco_category_mapping_and_bad_label(coco_split):
    _, dataset, _ = coco_split
    predictions = [_boxlist([[0, 0, 9, 9]] * 3, RESIZED_WH[0], [0.9, 0.8, 0.7], [1, 2, 3])] + \
                  [_boxlist([], RESIZED_WH[i]) for i in (1, 2)]
    results = prepare_for_coco_detection(predictions, dataset)
    assert [r["category_id"] for r in results] == JSON_CATEGORY_IDS
    assert all(r["image_id"] == 5 for r in results)
    # 0.5 scale back to 160x120: x2 = 9 -> 18, width = 18 - 0 + 1
    assert results[0]["bbox"] == pytest.approx([0, 0, 19, 19])

    predictions[0] = _boxlist([[0, 0, 9, 9]], RESIZED_WH[0], [0.9], [4])
    with pytest.raises(ValueError, match="label 4 .*NUM_CLASSES"):
        prepare_for_coco_detection(predictions, dataset)


def test_coco_zero_detections(coco_split, tmp_path):
    _, dataset, _ = coco_split
    predictions = [_boxlist([], RESIZED_WH[i]) for i in range(3)]
    results, coco_results = do_coco_evaluation(dataset, predictions, False, str(tmp_path), ("bbox",), (), 4)
    assert coco_results["bbox"] == [] and json.loads((tmp_path / "bbox.json").read_text()) == []
    # every area range has ground truth, so AP is exactly 0 everywhere
    assert list(results.results["bbox"].values()) == [0.0] * 6


def test_coco_split_without_annotations(tmp_path, caplog):
    for with_key in (False, True):
        ann_file = tmp_path / f"test_{with_key}.json"
        _write_coco_json(ann_file, with_annotations=False)
        if with_key:
            data = json.loads(ann_file.read_text())
            data["annotations"] = []
            ann_file.write_text(json.dumps(data))
        dataset = COCODataset(str(ann_file), str(tmp_path), remove_images_without_annotations=False)
        predictions = [_boxlist([[1, 2, 11, 12]], RESIZED_WH[i], [0.5], [2]) for i in range(3)]
        out = tmp_path / f"out_{with_key}"
        out.mkdir()
        with caplog.at_level(logging.INFO, logger="atss_core.inference"):
            results, _ = do_coco_evaluation(dataset, predictions, False, str(out), ("bbox",), (), 4)
        written = json.loads((out / "bbox.json").read_text())
        assert [r["image_id"] for r in written] == [5, 11, 42]
        assert {r["category_id"] for r in written} == {7}
        assert list(results.results["bbox"].values()) == [-1] * 6
        assert not (out / "coco_results.json").exists()
        assert "scoring skipped" in caplog.text


def test_check_expected_results_and_bad_iou_type(caplog):
    results = COCOResults("bbox")
    results.results["bbox"]["AP"] = 0.39
    with caplog.at_level(logging.INFO, logger="atss_core.inference"):
        outcomes = check_expected_results(results, [("bbox", "AP", (0.38, 0.005)), ("bbox", "AP", (0.30, 0.01))], 4)
    assert outcomes == [True, False]
    assert "FAIL" in caplog.text and "PASS" in caplog.text
    with pytest.raises(ValueError, match="segm"):
        COCOResults("bbox", "segm")


# ----------------------------------------------------------------------------- inference loop
class _FixedDetector(torch.nn.Module):
    """Returns, per image, a box inset by one pixel from its unpadded extent (label from the
    width), in the network-input coordinates."""

    def forward(self, images):
        return [_boxlist([[1, 1, w - 2, h - 2]], (w, h), [0.9], [w % 3 + 1]) for h, w in images.image_sizes]


def test_inference_saves_predictions_and_evaluates(coco_split, tmp_path):
    ann_file, _, _ = coco_split
    for info in json.loads(ann_file.read_text())["images"]:
        Image.new("RGB", (info["width"], info["height"])).save(tmp_path / info["file_name"], format="PNG")

    def to_resized_tensor(image, target):
        index = [(160, 120), (200, 100), (300, 240)].index(image.size)
        w, h = RESIZED_WH[index]
        return torch.zeros(3, h, w), target

    dataset = COCODataset(str(ann_file), str(tmp_path), False, transforms=to_resized_tensor)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2,
        collate_fn=lambda batch: (to_image_list([b[0] for b in batch], 32), [b[1] for b in batch],
                                  [b[2] for b in batch]))
    out = tmp_path / "out"
    out.mkdir()
    results, coco_results = inference_module.inference(_FixedDetector(), loader, "toy", device="cpu",
                                                       output_folder=str(out))
    saved = torch.load(out / "predictions.pth", weights_only=False)
    assert [p.size for p in saved] == [RESIZED_WH[i] for i in range(3)]
    for index, prediction in enumerate(saved):
        w, h = RESIZED_WH[index]
        assert prediction.bbox.tolist() == [[1, 1, w - 2, h - 2]]
    # rescaled to the original size: image 5 (160x120 shown at 80x60) -> xyxy [2, 2, 156, 116]
    first = [r for r in coco_results["bbox"] if r["image_id"] == 5]
    assert first[0]["bbox"] == pytest.approx([2, 2, 155, 115])
    assert first[0]["category_id"] == JSON_CATEGORY_IDS[80 % 3]
    direct, _ = do_coco_evaluation(dataset, saved, False, None, ("bbox",), (), 4)
    assert results.as_dict() == direct.as_dict()
    assert (out / "bbox.json").exists() and (out / "coco_results.json").exists()


def test_gather_orders_by_index_and_drops_padding(coco_split, monkeypatch, caplog):
    _, dataset, _ = coco_split
    rank0 = {0: _boxlist([[0, 0, 1, 1]], RESIZED_WH[0]), 2: _boxlist([[2, 2, 3, 3]], RESIZED_WH[2])}
    rank1 = {1: _boxlist([[1, 1, 2, 2]], RESIZED_WH[1]), 0: rank0[0]}  # 0 again: sampler padding
    monkeypatch.setattr(inference_module, "all_gather", lambda data: [rank0, rank1])
    gathered = inference_module._accumulate_predictions_from_multiple_gpus(rank0, dataset)
    assert [p.bbox[0, 0].item() for p in gathered] == [0, 1, 2]

    monkeypatch.setattr(inference_module, "all_gather", lambda data: [rank0])
    with caplog.at_level(logging.WARNING, logger="atss_core.inference"):
        gathered = inference_module._accumulate_predictions_from_multiple_gpus(rank0, dataset)
    assert len(gathered) == 3 and len(gathered[1]) == 0 and "no prediction" in caplog.text


# ----------------------------------------------------------------------------- box voting
def _reference_vote(boxes, scores, labels, vote_thresh, soft_thresh=None):
    """The original's sequential per-class voting loop, restated plainly (the test oracle)."""
    out = []
    for label in sorted(set(labels.tolist())):
        idx = (labels == label).nonzero().squeeze(1)
        det = torch.cat([boxes[idx], scores[idx, None]], 1).double()
        if len(det) <= 1:
            out += [(row[:4].tolist(), row[4].item(), label) for row in det]
            continue
        det = det[torch.argsort(det[:, 4], descending=True, stable=True)]
        while len(det):
            area = (det[:, 2] - det[:, 0] + 1) * (det[:, 3] - det[:, 1] + 1)
            iw = (torch.minimum(det[0, 2], det[:, 2]) - torch.maximum(det[0, 0], det[:, 0]) + 1).clamp(min=0)
            ih = (torch.minimum(det[0, 3], det[:, 3]) - torch.maximum(det[0, 1], det[:, 1]) + 1).clamp(min=0)
            iou = iw * ih / (area[0] + area - iw * ih)
            members = iou >= vote_thresh
            group, group_iou, det = det[members], iou[members], det[~members]
            if len(group) == 1:
                out.append((group[0, :4].tolist(), group[0, 4].item(), label))
                continue
            box = (group[:, :4] * group[:, 4:]).sum(0) / group[:, 4].sum()
            out.append((box.tolist(), group[0, 4].item(), label))
            if soft_thresh is not None:
                damped = group[:, 4] * (1 - group_iou)
                out += [(g[:4].tolist(), d.item(), label) for g, d in zip(group, damped) if d >= soft_thresh]
    return out


def _as_rows(boxlist):
    return sorted(zip(boxlist.bbox.tolist(), boxlist.get_field("scores").tolist(),
                      boxlist.get_field("labels").tolist()), key=lambda r: (r[2], -r[1], r[0]))


def _assert_same_rows(actual, expected, atol=1e-4):
    expected = sorted(expected, key=lambda r: (r[2], -r[1], r[0]))
    assert len(actual) == len(expected)
    for (box, score, label), (ebox, escore, elabel) in zip(actual, expected):
        assert label == elabel
        assert score == pytest.approx(escore, abs=1e-6)
        np.testing.assert_allclose(box, ebox, atol=atol)


def test_vote_hand_computed():
    size = (100, 100)
    boxlist = _boxlist([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], size,
                       [0.9, 0.6, 0.8, 0.7], [1, 1, 1, 2])
    # IoU(A, B) = 10*10 / (121 + 121 - 100) = 0.704 >= 0.66: B votes into A with weights 0.9 / 0.6;
    # D overlaps A fully but has another label
    voted = boxlist_vote(boxlist, 0.66)
    _assert_same_rows(_as_rows(voted), [([0.4, 0.4, 10.4, 10.4], 0.9, 1), ([50, 50, 60, 60], 0.8, 1),
                                        ([0, 0, 10, 10], 0.7, 2)], atol=1e-6)
    # ordered like the original's output: by label, then by descending score
    assert voted.get_field("labels").tolist() == [1, 1, 2] and voted.get_field("scores")[0] > voted.get_field("scores")[1]

    # soft-vote adds B with 0.6 * (1 - 100/142); A's own copy is damped to 0 and dropped
    soft = boxlist_vote(boxlist, 0.66, soft_score_thresh=0.05)
    damped_b = 0.6 * (1 - 100 / 142)
    _assert_same_rows(_as_rows(soft), [([0.4, 0.4, 10.4, 10.4], 0.9, 1), ([50, 50, 60, 60], 0.8, 1),
                                       ([0, 0, 10, 10], 0.7, 2), ([1, 1, 11, 11], damped_b, 1)], atol=1e-6)
    assert soft.get_field("labels").tolist() == [1, 1, 1, 2]
    assert soft.get_field("scores")[:3].tolist() == sorted(soft.get_field("scores")[:3].tolist(), reverse=True)
    assert len(boxlist_vote(boxlist, 0.66, soft_score_thresh=0.2)) == 3


def test_vote_follows_greedy_clusters_not_chains():
    # E-F IoU 110/132 = 0.833, F-G 99/143 = 0.692, E-G 88/154 = 0.571: F joins E; G is not
    # reached through F (F is no seed) and stays alone.
    boxlist = _boxlist([[0, 0, 10, 10], [1, 0, 11, 10], [3, 0, 13, 10]], (50, 50), [0.9, 0.8, 0.7])
    voted = boxlist_vote(boxlist, 0.66)
    _assert_same_rows(_as_rows(voted), [([0.8 / 1.7, 0, 17.8 / 1.7, 10], 0.9, 1), ([3, 0, 13, 10], 0.7, 1)],
                      atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True])
def test_vote_matches_sequential_reference(soft, device):
    generator = torch.Generator().manual_seed(3)
    centres = torch.rand(12, 2, generator=generator) * 200
    repeat = torch.randint(1, 12, (12,), generator=generator)
    centres = centres.repeat_interleave(repeat, 0)
    sizes = 20 + torch.rand(len(centres), 2, generator=generator) * 30
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    boxes += torch.randn(boxes.shape, generator=generator) * 3
    scores = torch.rand(len(boxes), generator=generator) * 0.9 + 0.05
    labels = torch.randint(1, 4, (len(boxes),), generator=generator)
    boxlist = _boxlist(boxes.tolist(), (260, 260), scores.tolist(), labels.tolist())
    soft_thresh = 0.05 if soft else None
    voted = boxlist_vote(boxlist.to(device), 0.66, soft_score_thresh=soft_thresh).to("cpu")
    expected = _reference_vote(boxes, scores, labels, 0.66, soft_thresh)
    assert len(expected) < len(boxes) + (len(boxes) if soft else 0)  # some boxes were merged
    _assert_same_rows(_as_rows(voted), expected)


def test_vote_empty_and_keep_top_scores():
    assert len(boxlist_vote(_boxlist([], (10, 10)), 0.66)) == 0
    boxlist = _boxlist([[i, i, i + 5, i + 5] for i in range(5)], (20, 20), [0.1, 0.5, 0.3, 0.5, 0.9])
    # the 3rd best score (0.5) ties with the 2nd: both stay, like the original's kthvalue threshold
    assert sorted(keep_top_scores(boxlist, 3).get_field("scores").tolist()) == pytest.approx([0.5, 0.5, 0.9])
    assert sorted(keep_top_scores(boxlist, 2).get_field("scores").tolist()) == pytest.approx([0.5, 0.5, 0.9])
    assert len(keep_top_scores(boxlist, 1)) == 1 and len(keep_top_scores(boxlist, 0)) == 5


def test_remove_boxes_by_scale_range():
    # "+1" areas: 10x10 -> 100, 11x11 -> 121, 31x31 -> 961
    boxlist = _boxlist([[0, 0, 9, 9], [0, 0, 10, 10], [0, 0, 30, 30]], (40, 40))
    kept = remove_boxes([boxlist], 10, 31)[0]
    assert kept.bbox.tolist() == [[0, 0, 10, 10]]  # both bounds are strict


# ----------------------------------------------------------------------------- test-time augmentation
class _BrightRectangleDetector(torch.nn.Module):
    """Detects the bright rectangle in each (BGR-255, mean-subtracted) image: an exact
    inclusive-pixel box, score 0.9, label 2."""

    def forward(self, images):
        outputs = []
        for tensor, (h, w) in zip(images.tensors, images.image_sizes):
            mask = tensor[0, :h, :w] > 0
            cols, rows = mask.any(0).nonzero().squeeze(1), mask.any(1).nonzero().squeeze(1)
            box = [cols[0].item(), rows[0].item(), cols[-1].item(), rows[-1].item()]
            outputs.append(_boxlist([box], (w, h), [0.9], [2]))
        return outputs


@pytest.fixture
def tta_cfg():
    config = global_cfg.clone()
    config.merge_from_list(["INPUT.MIN_SIZE_TEST", 48, "INPUT.MAX_SIZE_TEST", 1000,
                            "DATALOADER.SIZE_DIVISIBILITY", 32, "TEST.BBOX_AUG.ENABLED", True])
    return config


def _rectangle_image(width=70, height=48, box=(9, 13, 30, 40)):
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[box[1]:box[3] + 1, box[0]:box[2] + 1] = 255
    return Image.fromarray(array)


def test_hflip_detection_is_exact(tta_cfg):
    images = [_rectangle_image(), _rectangle_image(61, 48, (40, 2, 59, 20))]
    model = _BrightRectangleDetector()
    plain = bbox_aug.im_detect_bbox(model, images, 48, 1000, "cpu", tta_cfg)
    flipped_back = bbox_aug.im_detect_bbox_hflip(model, images, 48, 1000, "cpu", tta_cfg)
    assert plain[0].bbox.tolist() == [[9, 13, 30, 40]] and plain[1].bbox.tolist() == [[40, 2, 59, 20]]
    for a, b in zip(plain, flipped_back):
        assert torch.equal(a.bbox, b.bbox) and a.size == b.size
    # and flipping twice is the identity on arbitrary boxes
    boxlist = _boxlist([[0.5, 3, 17.25, 9], [0, 0, 69, 47]], (70, 48))
    assert torch.equal(boxlist.transpose(0).transpose(0).bbox, boxlist.bbox)


def test_tta_vote_merges_flip_and_scales(tta_cfg):
    tta_cfg.merge_from_list(["TEST.BBOX_AUG.H_FLIP", True, "TEST.BBOX_AUG.SCALES", (96,),
                             "TEST.BBOX_AUG.SCALE_H_FLIP", True, "TEST.BBOX_AUG.VOTE", True,
                             "TEST.BBOX_AUG.SCALE_RANGES", ((0, 10000),)])
    images = [_rectangle_image()]
    results = bbox_aug.im_detect_bbox_aug(_BrightRectangleDetector(), images, "cpu", tta_cfg)
    # four passes (plain, flip, 2x, 2x flipped) find the same rectangle: one voted box
    assert len(results) == 1 and len(results[0]) == 1 and results[0].size == (70, 48)
    assert results[0].get_field("scores").tolist() == pytest.approx([0.9])
    assert results[0].get_field("labels").tolist() == [2]
    # the 2x passes see the rectangle at 2x (bilinear edges shift it by up to a pixel there)
    np.testing.assert_allclose(results[0].bbox[0].tolist(), [9, 13, 30, 40], atol=0.5)

    # a scale range that excludes the 2x detections leaves the exact flip pair only
    tta_cfg.merge_from_list(["TEST.BBOX_AUG.SCALE_RANGES", ((0, 20),)])
    results = bbox_aug.im_detect_bbox_aug(_BrightRectangleDetector(), images, "cpu", tta_cfg)
    np.testing.assert_allclose(results[0].bbox[0].tolist(), [9, 13, 30, 40], atol=1e-5)

    tta_cfg.merge_from_list(["TEST.BBOX_AUG.SCALE_RANGES", ()])
    with pytest.raises(ValueError, match="SCALE_RANGES"):
        bbox_aug.im_detect_bbox_aug(_BrightRectangleDetector(), images, "cpu", tta_cfg)


def test_tta_nms_path(tta_cfg):
    tta_cfg.merge_from_list(["TEST.BBOX_AUG.H_FLIP", True, "TEST.BBOX_AUG.SCALES", (96,)])
    results = bbox_aug.im_detect_bbox_aug(_BrightRectangleDetector(), [_rectangle_image()], "cpu", tta_cfg)
    # NMS keeps one of the identical detections, unchanged
    assert len(results[0]) == 1
    np.testing.assert_allclose(results[0].bbox[0].tolist(), [9, 13, 30, 40], atol=0.5)


def test_tta_follows_the_config_it_is_given(tta_cfg):
    """The loader's config switches test-time augmentation on, the global config has it off:
    compute_on_dataset runs TTA from the config passed to it (PIL batches never reach
    ``.to(device)``), and without that config says what to pass instead of failing inside."""
    assert not global_cfg.TEST.BBOX_AUG.ENABLED
    tta_cfg.merge_from_list(["TEST.BBOX_AUG.H_FLIP", True])
    loader = [((_rectangle_image(),), [None], [0])]  # what BBoxAugCollator yields
    results = inference_module.compute_on_dataset(_BrightRectangleDetector(), loader, "cpu", bbox_aug_cfg=tta_cfg)
    assert results[0].bbox.tolist() == [[9, 13, 30, 40]] and results[0].size == (70, 48)
    with pytest.raises(TypeError, match="test-time augmentation's.*pass its config as bbox_aug_cfg"):
        inference_module.compute_on_dataset(_BrightRectangleDetector(), loader, "cpu")


class _ReplayDetector(torch.nn.Module):
    """Ignores its input and returns the given per-image BoxLists."""

    def __init__(self, boxlists):
        super().__init__()
        self.boxlists = boxlists

    def forward(self, images):
        return self.boxlists


def test_tta_nms_merge_reproduces_golden_selection(tta_cfg):
    # Without extra passes the NMS merge must equal the original's select_over_all_levels:
    # golden pre-NMS candidates in, golden final detections out (compared as sets).
    golden = load_golden("model_eval_R50.pt")
    candidates = []
    for (h, w), pre_nms in zip(golden["image_sizes_hw"].tolist(), golden["pre_nms"]):
        candidates.append(_boxlist(pre_nms["bbox"], (w, h), pre_nms["scores"], pre_nms["labels"]))
    images = [_rectangle_image() for _ in candidates]
    results = bbox_aug.im_detect_bbox_aug(_ReplayDetector(candidates), images, "cpu", tta_cfg)
    for result, expected in zip(results, golden["detections"]):
        assert len(result) == len(expected["scores"]) == 100
        _assert_same_rows(_as_rows(result), list(zip(expected["bbox"].tolist(), expected["scores"].tolist(),
                                                     expected["labels"].tolist())), atol=1e-5)


# ----------------------------------------------------------------------------- VOC
def test_voc_ap_hand_computed():
    size = (100, 100)
    gt = BoxList(torch.tensor([[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]], dtype=torch.float32), size)
    gt.add_field("labels", torch.tensor([1, 1, 2]))
    gt.add_field("difficult", torch.tensor([False, True, False]))
    # class 1 by score: far miss (FP), hit on gt 0 (TP), duplicate on gt 0 (FP), hit on the
    # difficult gt (ignored) -> precision 0, 1/2, 1/3, 1/3 at recall 0, 1, 1, 1 -> AP 0.5.
    # class 2: a box shifted by 6 px (IoU < 0.5 with +2 widths) -> AP 0. class 3: no gt -> nan.
    pred = _boxlist([[70, 70, 79, 79], [0, 0, 9, 10], [1, 0, 9, 9], [20, 20, 29, 29], [46, 40, 55, 49],
                     [5, 5, 8, 8]], size, [0.95, 0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 1, 1, 2, 3])
    for use_07 in (True, False):
        result = eval_detection_voc([pred], [gt], iou_thresh=0.5, use_07_metric=use_07)
        ap = result["ap"]
        assert len(ap) == 4 and math.isnan(ap[0]) and math.isnan(ap[3])
        assert ap[1] == pytest.approx(0.5) and ap[2] == 0
        assert result["map"] == pytest.approx(0.25)
    # the 6-pixel shift really is below 0.5 in the "+2" convention and above it without
    shifted = boxlist_iou(BoxList(torch.tensor([[46.0, 40, 56, 50]]), size),
                          BoxList(torch.tensor([[40.0, 40, 50, 50]]), size)).item()
    assert shifted < 0.5


# ----------------------------------------------------------------------------- tools/test_net.py
def _load_test_net():
    return load_tool("test_net")


@pytest.fixture
def test_net_tool(monkeypatch):
    """tools/test_net.py loaded as a module, with a private copy of the global config."""
    module = _load_test_net()
    monkeypatch.setattr(module, "cfg", global_cfg.clone())
    return module


def _run_expecting_exit(test_net_tool, argv):
    return one_line_exit(test_net_tool.main, argv)


def test_test_net_user_errors(test_net_tool, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("MODEL:\n  ATSS_ON: True\n")
    assert "missing.yaml" in _run_expecting_exit(test_net_tool, ["--config-file", str(tmp_path / "missing.yaml")])
    assert "MODEL.NO_SUCH_KEY" in _run_expecting_exit(
        test_net_tool, ["--config-file", str(config), "MODEL.NO_SUCH_KEY", "1"])
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("MODEL:\n  NOT_A_KEY: 3\n")
    assert "NOT_A_KEY" in _run_expecting_exit(test_net_tool, ["--config-file", str(bad_file)])


def test_test_net_missing_weights(test_net_tool, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("MODEL:\n  ATSS_ON: True\n")
    message = _run_expecting_exit(test_net_tool, ["--config-file", str(config), "MODEL.WEIGHT", str(tmp_path / "w.pth")])
    assert "w.pth" in message and "not found" in message
    message = _run_expecting_exit(test_net_tool, ["--config-file", str(config), "--local-rank", "0",
                                             "--ckpt", str(tmp_path / "other.pth")])
    assert "other.pth" in message


def test_inference_output_folder_names():
    from atss_core.engine.launch import inference_output_folder
    assert inference_output_folder("out", "coco_2017_val") == os.path.join("out", "inference", "coco_2017_val")
    # A user's coco:IMG_DIR:ANN_FILE name becomes the annotation file's stem, not a tree of folders.
    assert inference_output_folder("out", "coco:/data/imgs:/data/ann/val.json") == os.path.join("out", "inference", "val")
    assert inference_output_folder("out", "my set:v2") == os.path.join("out", "inference", "my_set_v2")


def test_test_net_results_folder_is_named_after_the_weights(tmp_path):
    from atss_core.engine.launch import results_folder_name
    (tmp_path / "model_final.pth").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model_final.pth").write_bytes(b"x")
    out = str(tmp_path)
    assert results_folder_name(out, str(tmp_path / "model_final.pth")) == "inference"
    # The same file by another path is the same weights.
    assert results_folder_name(out, str(tmp_path / "elsewhere" / ".." / "model_final.pth")) == "inference"
    assert results_folder_name(out, str(tmp_path / "elsewhere" / "model_final.pth")) == "inference_model_final"
    assert results_folder_name(out, "https://host/ATSS_R_50_FPN_1x.pth") == "inference_ATSS_R_50_FPN_1x"
    assert results_folder_name(out, "catalog://ImageNetPretrained/MSRA/R-50") == "inference_R-50"
    assert results_folder_name(out, "") == "inference_untrained"
