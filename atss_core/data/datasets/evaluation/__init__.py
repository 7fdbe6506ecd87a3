"""Dataset-specific evaluation of detections: ``evaluate`` picks COCO or VOC by dataset type."""
from .coco import coco_evaluation
from .voc import voc_evaluation

__all__ = ["evaluate", "coco_evaluation", "voc_evaluation"]


def evaluate(dataset, predictions, output_folder, **kwargs):
    """Evaluate ``predictions`` (list of BoxList, one per dataset index) on ``dataset``.

    Keyword arguments (``box_only``, ``iou_types``, ``expected_results``,
    ``expected_results_sigma_tol``) are passed on to the dataset's evaluator. Returns what that
    evaluator returns: ``(COCOResults, coco_results)`` for COCO, ``{"ap", "map"}`` for VOC.
    """
    from atss_core.data import datasets  # deferred: the dataset package may import this one

    args = dict(dataset=dataset, predictions=predictions, output_folder=output_folder, **kwargs)
    if isinstance(dataset, datasets.COCODataset):
        return coco_evaluation(**args)
    voc_dataset = getattr(datasets, "PascalVOCDataset", None)
    if voc_dataset is not None and isinstance(dataset, voc_dataset):
        return voc_evaluation(**args)
    raise NotImplementedError(f"Unsupported dataset type {type(dataset).__name__}: evaluation exists for "
                              f"COCODataset and PascalVOCDataset")
