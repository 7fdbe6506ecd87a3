"""Evaluation in the middle of training (TEST.EVAL_PERIOD)."""
import torch

from atss_core.data import make_data_loader
from atss_core.data.datasets.evaluation.coco.coco_eval import COCOResults
from atss_core.engine.launch import evaluate_on_test_sets


def evaluation_metrics(dataset_names, results):
    """``{"bbox/AP": ..., "bbox/AP-<class>": ..., "bbox/AR100": ...}`` from the COCO evaluation
    results ``(COCOResults, detections)`` of the DATASETS.TEST entries ``dataset_names``: the
    first set's metrics as they are, the others' prefixed with ``<dataset>/``. Results without
    scores (no annotations, another dataset type, a process other than the main one) add
    nothing."""
    metrics = {}
    for index, (dataset_name, result) in enumerate(zip(dataset_names, results)):
        if not result or not isinstance(result[0], COCOResults):
            continue
        prefix = f"{dataset_name}/" if index else ""
        metrics.update((f"{prefix}{iou_type}/{name}", value)
                       for iou_type, values in result[0].as_dict().items()
                       for name, value in values.items() if value != -1)
    return metrics


class PeriodicEvaluator:
    """``evaluator(model)`` for :func:`atss_core.engine.trainer.do_train`.

    It evaluates the training model itself (DDP unwrapped, never folded by
    ``prepare_for_inference``, which would change the weights the training goes on with) on
    every DATASETS.TEST entry, on all processes, writing to ``OUTPUT_DIR/inference/<dataset>``
    like the end-of-training evaluation. Returns :func:`evaluation_metrics`.
    """

    def __init__(self, cfg, distributed):
        self.cfg = cfg
        self.data_loaders = make_data_loader(cfg, is_train=False, is_distributed=distributed)

    def __call__(self, model):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        results = evaluate_on_test_sets(self.cfg, model, self.data_loaders)
        return evaluation_metrics(self.cfg.DATASETS.TEST, results)
