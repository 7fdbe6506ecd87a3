"""Inference over a test data loader, gathering across processes, and evaluation."""
import datetime
import logging
import os
import time

import torch
from tqdm import tqdm

from atss_core.data.datasets.evaluation import evaluate
from atss_core.structures.bounding_box import BoxList
from atss_core.structures.image_list import ImageList

from ..utils.comm import all_gather, get_world_size, is_main_process, synchronize
from .bbox_aug import im_detect_bbox_aug
from .precision import inference_autocast

__all__ = ["compute_on_dataset", "inference"]

logger = logging.getLogger("atss_core.inference")


class _Timer:
    """Accumulates the seconds between ``tic()`` and ``toc()`` calls in ``total_time``."""

    def __init__(self):
        self.total_time = 0.0
        self._start = None

    def tic(self):
        self._start = time.perf_counter()

    def toc(self):
        self.total_time += time.perf_counter() - self._start
        return self.total_time


def compute_on_dataset(model, data_loader, device, timer=None, bbox_aug_cfg=None, dtype="float32"):
    """Run ``model`` (in eval mode, without gradients, the network in ``dtype``: a TEST.DTYPE
    value) over ``data_loader``.

    Batches are ``(images, targets, image_ids)``: an ImageList, or with test-time augmentation a
    tuple of PIL images handed to :func:`im_detect_bbox_aug` with ``bbox_aug_cfg``, the config the
    loader was built from (``TEST.BBOX_AUG.ENABLED`` in it). ``timer`` (with ``tic``/``toc``),
    when given, times the model calls, synchronising CUDA so queued kernels count.

    Returns ``{dataset index: BoxList on the CPU}`` in the resized network-input coordinates.
    """
    model.eval()
    results = {}
    device = torch.device(device)
    augment = bbox_aug_cfg is not None and bbox_aug_cfg.TEST.BBOX_AUG.ENABLED
    for images, _, image_ids in tqdm(data_loader, disable=not is_main_process()):
        with torch.no_grad(), inference_autocast(dtype, device):
            if timer is not None:
                timer.tic()
            if augment:
                output = im_detect_bbox_aug(model, images, device, bbox_aug_cfg)
            elif isinstance(images, ImageList):
                output = model(images.to(device))
            else:
                raise TypeError(f"the data loader yields {type(images).__name__} batches (test-time "
                                "augmentation's), not ImageLists: pass its config as bbox_aug_cfg")
            if timer is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timer.toc()
        results.update((image_id, boxlist.to("cpu")) for image_id, boxlist in zip(image_ids, output))
    return results


def _accumulate_predictions_from_multiple_gpus(predictions_per_gpu, dataset):
    """Gather every process's ``{index: BoxList}`` on the main process, as a list by index.

    A DistributedSampler pads with repeated indices; merging the dicts drops those duplicates.
    An index no process produced gets an empty prediction (with a warning) so that the list
    stays aligned with the dataset. Returns None on the other processes.
    """
    all_predictions = all_gather(predictions_per_gpu)
    if not is_main_process():
        return None
    predictions = {}
    for part in all_predictions:
        predictions.update(part)
    missing = [index for index in range(len(dataset)) if index not in predictions]
    if missing:
        logger.warning("%d of %d images got no prediction from any process (first: %d); they are "
                       "evaluated as having no detections", len(missing), len(dataset), missing[0])
        for index in missing:
            info = dataset.get_img_info(index)
            predictions[index] = _empty_prediction((info["width"], info["height"]))
    return [predictions[index] for index in range(len(dataset))]


def _empty_prediction(image_size):
    boxlist = BoxList(torch.zeros((0, 4)), image_size, mode="xyxy")
    boxlist.add_field("scores", torch.zeros(0))
    boxlist.add_field("labels", torch.zeros(0, dtype=torch.int64))
    return boxlist


def _time_str(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


def inference(model, data_loader, dataset_name, iou_types=("bbox",), box_only=False, device="cuda",
              expected_results=(), expected_results_sigma_tol=4, output_folder=None, bbox_aug_cfg=None,
              dtype="float32"):
    """Predict on every image of ``data_loader``'s dataset and evaluate the predictions.

    ``bbox_aug_cfg``: the config ``data_loader`` was built from, read for test-time augmentation
    (``TEST.BBOX_AUG``); None runs the model on the loader's ImageLists as they are. ``dtype`` (a
    TEST.DTYPE value) is the type the network runs in; see ``inference_autocast``.

    Each process runs its share of the loader; the main process gathers all predictions, saves
    them to ``output_folder/predictions.pth`` (a list of BoxList by dataset index, in the resized
    input coordinates) and evaluates them (see
    :func:`atss_core.data.datasets.evaluation.evaluate`), writing its files to ``output_folder``.

    Returns the evaluation result on the main process, None on the others.
    """
    device = torch.device(device)
    num_devices = get_world_size()
    dataset = data_loader.dataset
    logger.info("Start evaluation on %s dataset(%d images).", dataset_name, len(dataset))
    total_timer, inference_timer = _Timer(), _Timer()
    total_timer.tic()
    predictions = compute_on_dataset(model, data_loader, device, inference_timer, bbox_aug_cfg, dtype)
    synchronize()  # every process done before the wall time is taken
    total_seconds = total_timer.toc()
    num_images = max(len(dataset), 1)
    logger.info("Total run time: %s (%s s / img per device, on %d devices)", _time_str(total_seconds),
                total_seconds * num_devices / num_images, num_devices)
    logger.info("Model inference time: %s (%s s / img per device, on %d devices)",
                _time_str(inference_timer.total_time), inference_timer.total_time * num_devices / num_images,
                num_devices)

    predictions = _accumulate_predictions_from_multiple_gpus(predictions, dataset)
    if not is_main_process():
        return None
    if output_folder:
        torch.save(predictions, os.path.join(output_folder, "predictions.pth"))
    return evaluate(dataset=dataset, predictions=predictions, output_folder=output_folder, box_only=box_only,
                    iou_types=iou_types, expected_results=expected_results,
                    expected_results_sigma_tol=expected_results_sigma_tol)
