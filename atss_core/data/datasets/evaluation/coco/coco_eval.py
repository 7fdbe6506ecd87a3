"""COCO-style bbox evaluation of detections with pycocotools.

Predictions come as one ``BoxList`` per dataset index, in the coordinates of the resized network
input (``BoxList.size`` is that input's (W, H)). They are rescaled here to each image's original
size, converted to COCO's xywh (legacy ``w = x2 - x1 + 1``), mapped back to the json category ids
and scored with ``COCOeval``.
"""
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch

__all__ = [
    "COCOResults",
    "check_expected_results",
    "compute_thresholds_for_classes",
    "do_coco_evaluation",
    "evaluate_predictions_on_coco",
    "format_table",
    "per_class_ap",
    "prepare_for_coco_detection",
]

logger = logging.getLogger("atss_core.inference")


def do_coco_evaluation(dataset, predictions, box_only, output_folder, iou_types, expected_results,
                       expected_results_sigma_tol):
    """Score ``predictions`` (list of BoxList, one per dataset index) against ``dataset.coco``.

    Writes ``<iou_type>.json`` (the detections in COCO result format) and ``coco_results.json``
    (the metrics as a plain dict: AP, AR and per-class AP, see ``COCOResults.as_dict``) into
    ``output_folder`` when one is given.

    Returns ``(COCOResults, {iou_type: list of result dicts})``. When the split has no
    annotations (e.g. test-dev) the result file is still written, scoring is skipped and every
    metric stays -1.
    """
    if box_only:
        raise ValueError("box_only proposal evaluation is not supported: ATSS predicts scored, "
                         "labelled detections; call inference with box_only=False")
    unsupported = [t for t in iou_types if t not in COCOResults.METRICS]
    if unsupported:
        raise ValueError(f"iou_types {unsupported} are not supported; ATSS is evaluated with "
                         f"iou_types=('bbox',)")

    logger.info("Preparing bbox results in COCO format")
    coco_results = {"bbox": prepare_for_coco_detection(predictions, dataset)}
    results = COCOResults(*iou_types)
    has_annotations = len(dataset.coco.anns) > 0
    for iou_type in iou_types:
        result_file = os.path.join(output_folder, f"{iou_type}.json") if output_folder else None
        if result_file:
            with open(result_file, "w") as f:
                json.dump(coco_results[iou_type], f)
        if not has_annotations:
            logger.info("The split has no annotations: %s written, scoring skipped",
                        result_file or f"{len(coco_results[iou_type])} {iou_type} results")
            continue
        logger.info("Evaluating %s predictions", iou_type)
        results.update(evaluate_predictions_on_coco(dataset.coco, coco_results[iou_type], result_file, iou_type))
    if has_annotations:
        logger.info("Evaluation results:\n%s", results.report())
        check_expected_results(results, expected_results, expected_results_sigma_tol)
        if output_folder:
            with open(os.path.join(output_folder, "coco_results.json"), "w") as f:
                json.dump(results.as_dict(), f, indent=2)
    return results, coco_results


def prepare_for_coco_detection(predictions, dataset):
    """COCO result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}`` for all predictions.

    ``predictions[i]`` belongs to dataset index ``i``; its boxes are rescaled from
    ``BoxList.size`` to the image's original (width, height) from ``dataset.get_img_info(i)``.
    Labels 1..C are mapped to the json category ids with ``dataset.contiguous_category_id_to_json_id``.
    """
    json_id_of_label = _label_lookup(dataset.contiguous_category_id_to_json_id)
    coco_results = []
    for index, prediction in enumerate(predictions):
        if len(prediction) == 0:
            continue
        info = dataset.get_img_info(index)
        prediction = prediction.resize((info["width"], info["height"])).convert("xywh")
        labels = prediction.get_field("labels").cpu()
        in_range = (labels >= 0) & (labels < len(json_id_of_label))
        category_ids = torch.where(in_range, json_id_of_label[labels.clamp(0, len(json_id_of_label) - 1)], -1)
        if (category_ids < 0).any():
            raise ValueError(f"prediction label {labels[category_ids < 0][0].item()} of image {info['id']} has "
                             f"no COCO category (the dataset has {len(dataset.contiguous_category_id_to_json_id)} "
                             f"classes); check MODEL.ATSS.NUM_CLASSES against the dataset")
        category_ids = category_ids.tolist()
        boxes = prediction.bbox.tolist()
        scores = prediction.get_field("scores").tolist()
        coco_results.extend(
            {"image_id": info["id"], "category_id": category, "bbox": box, "score": score}
            for category, box, score in zip(category_ids, boxes, scores)
        )
    return coco_results


def _label_lookup(contiguous_to_json):
    """int64 tensor mapping contiguous label -> json category id (-1 where none)."""
    lookup = torch.full((max(contiguous_to_json, default=0) + 1,), -1, dtype=torch.int64)
    lookup[list(contiguous_to_json)] = torch.tensor(list(contiguous_to_json.values()), dtype=torch.int64)
    return lookup


def evaluate_predictions_on_coco(coco_gt, coco_results, json_result_file=None, iou_type="bbox"):
    """Run ``COCOeval`` (evaluate, accumulate, summarize) and return it.

    The detections are read back from ``json_result_file`` when given (it must already hold
    ``coco_results``), else taken from the list. Zero detections score 0 instead of crashing
    ``loadRes``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not coco_results:
        coco_dt = COCO()  # loadRes cannot take an empty list; an empty COCO scores 0
    elif json_result_file:
        coco_dt = coco_gt.loadRes(str(json_result_file))
    else:
        # loadRes adds keys to each dict; give it shallow copies so the caller's list stays clean
        coco_dt = coco_gt.loadRes([dict(result) for result in coco_results])
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    compute_thresholds_for_classes(coco_eval)
    return coco_eval


def _category_names(coco_eval):
    """Names of the categories along COCOeval's K axis (``params.catIds`` order)."""
    return [category["name"] for category in coco_eval.cocoGt.loadCats(coco_eval.params.catIds)]


def format_table(header, rows):
    """Plain-text table: ``header`` (list of str) over ``rows`` (lists of str or float, floats
    printed with 3 decimals), columns right-aligned except the first."""
    cells = [list(header)] + [[f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in row]
                              for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def compute_thresholds_for_classes(coco_eval):
    """Per class, the score threshold with the best F-measure at IoU 0.5 (all areas, 100 dets).

    Logged, as a table by category name, for the demo's per-class visualisation thresholds.
    Returns ``(max_f_measure, thresholds)``, two arrays of length K (number of classes, in
    ``coco_eval.params.catIds`` order).
    """
    # eval["precision"] and eval["scores"] are (T IoUs, R recall points, K classes, A areas, M maxDets)
    precision = coco_eval.eval["precision"][0, :, :, 0, -1]
    scores = coco_eval.eval["scores"][0, :, :, 0, -1]
    recall = np.linspace(0, 1, num=precision.shape[0])[:, None]
    f_measure = 2 * precision * recall / np.maximum(precision + recall, 1e-6)
    best = f_measure.argmax(axis=0)
    max_f_measure = f_measure[best, np.arange(f_measure.shape[1])]
    thresholds = scores[best, np.arange(scores.shape[1])]
    rows = [[name, float(f), float(t)]
            for name, f, t in zip(_category_names(coco_eval), max_f_measure, thresholds)]
    logger.info("Maximum f-measures for classes and their score thresholds (used in demos for "
                "visualization purposes):\n%s",
                format_table(["category", "max F-measure", "score threshold"], rows))
    return max_f_measure, thresholds


def per_class_ap(coco_eval):
    """``{category name: AP}`` (AP at IoU 0.50:0.95, all areas, 100 detections), -1 for a class
    without ground truth, in ``params.catIds`` order."""
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # (T IoUs, R recall points, K classes)
    valid = precision > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, precision, 0).sum(axis=(0, 1))
    ap = np.where(counts > 0, sums / np.maximum(counts, 1), -1)
    return OrderedDict(zip(_category_names(coco_eval), ap.tolist()))


class COCOResults:
    """The metrics of an evaluation, -1 until scored: ``results[iou_type][metric]`` (AP, AP50,
    AP75, APs/m/l), ``recall[iou_type][metric]`` (AR1, AR10, AR100, ARs/m/l) and
    ``per_class[iou_type][category name]`` (AP)."""

    METRICS = {"bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"]}
    RECALL_METRICS = ["AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]  # COCOeval.stats[6:12]

    def __init__(self, *iou_types):
        unknown = [t for t in iou_types if t not in self.METRICS]
        if unknown:
            raise ValueError(f"unknown iou_types {unknown}; supported: {list(self.METRICS)}")
        self.results = OrderedDict(
            (iou_type, OrderedDict((metric, -1) for metric in self.METRICS[iou_type])) for iou_type in iou_types
        )
        self.recall = OrderedDict(
            (iou_type, OrderedDict((metric, -1) for metric in self.RECALL_METRICS)) for iou_type in iou_types
        )
        self.per_class = OrderedDict((iou_type, OrderedDict()) for iou_type in iou_types)

    def update(self, coco_eval):
        """Copy ``COCOeval.stats`` and the per-class AP into this iou type's metrics."""
        if coco_eval is None:
            return
        iou_type = coco_eval.params.iouType
        metrics = self.results[iou_type]
        for metric, value in zip(list(metrics), coco_eval.stats):
            metrics[metric] = float(value)
        recall = self.recall[iou_type]
        for metric, value in zip(self.RECALL_METRICS, coco_eval.stats[len(metrics):]):
            recall[metric] = float(value)
        self.per_class[iou_type] = per_class_ap(coco_eval)

    def as_dict(self):
        """Plain nested dict (json-serialisable): per iou type the AP metrics, the AR metrics
        and ``AP-<category name>`` per class."""
        return {iou_type: {**metrics, **self.recall[iou_type],
                           **{f"AP-{name}": ap for name, ap in self.per_class[iou_type].items()}}
                for iou_type, metrics in self.results.items()}

    def report(self):
        """Readable tables: AP and AR metrics, then AP per category."""
        tables = []
        for iou_type, metrics in self.results.items():
            recall = self.recall[iou_type]
            tables.append(format_table(["", *metrics], [[iou_type, *metrics.values()]]))
            tables.append(format_table(["", *recall], [[iou_type, *recall.values()]]))
            if self.per_class[iou_type]:
                tables.append(format_table(["category", f"{iou_type} AP"],
                                           [[name, ap] for name, ap in self.per_class[iou_type].items()]))
        return "\n\n".join(tables)

    def __repr__(self):
        return repr(self.results)


def check_expected_results(results, expected_results, sigma_tol):
    """Log PASS/FAIL for each ``(iou_type, metric, (mean, std))`` of ``expected_results``.

    A metric passes when it lies strictly within ``mean +- sigma_tol * std``. Returns the list
    of booleans (one per expectation).
    """
    outcomes = []
    for task, metric, (mean, std) in expected_results:
        actual = results.results[task][metric]
        low, high = mean - sigma_tol * std, mean + sigma_tol * std
        ok = low < actual < high
        message = (f"{task} > {metric} sanity check (actual vs. expected): {actual:.3f} vs. "
                   f"mean={mean:.4f}, std={std:.4}, range=({low:.4f}, {high:.4f})")
        if ok:
            logger.info("PASS: %s", message)
        else:
            logger.error("FAIL: %s", message)
        outcomes.append(ok)
    return outcomes
