"""What tools/train_net.py and tools/test_net.py share: config loading with one-line errors,
joining the process group, and the evaluation loop over DATASETS.TEST."""
import os
import re

import torch
import torch.distributed as dist

from atss_core.config import merge_config
from atss_core.data import make_data_loader
from atss_core.engine.inference import inference
from atss_core.utils.comm import synchronize


def load_config(cfg, config_file, opts):
    """``merge_config`` for train_net / test_net: a user error exits with its one-line message."""
    try:
        return merge_config(cfg, config_file, opts)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


def init_distributed(local_rank, device_type):
    """Join the process group described by the environment (torchrun / torch.distributed.launch):
    NCCL for CUDA models, gloo for CPU ones (MODEL.DEVICE decides, not the hardware)."""
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", init_method="env://")
    synchronize()


def inference_output_folder(output_dir, dataset_name):
    """``OUTPUT_DIR/inference/<name>``, with a ``coco:IMG_DIR:ANN_FILE`` name reduced to the
    annotation file's stem and any character unsafe in a folder name replaced by '_'."""
    if dataset_name.startswith("coco:"):
        dataset_name = os.path.splitext(os.path.basename(dataset_name))[0]
    return os.path.join(output_dir, "inference", re.sub(r"[^\w.-]", "_", dataset_name))


def run_test(cfg, model, distributed):
    """Evaluate ``model`` (unwrapped from DDP) on every DATASETS.TEST entry; results go to
    OUTPUT_DIR/inference/<dataset>. Returns the evaluation result of each dataset.

    The model is switched, in place, to its inference fast path (frozen norms folded into the
    convs, channels_last), so it cannot be trained afterwards.
    """
    if distributed and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    model.prepare_for_inference()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    data_loaders = make_data_loader(cfg, is_train=False, is_distributed=distributed)
    results = []
    for dataset_name, data_loader in zip(cfg.DATASETS.TEST, data_loaders):
        output_folder = None
        if cfg.OUTPUT_DIR:
            output_folder = inference_output_folder(cfg.OUTPUT_DIR, dataset_name)
            os.makedirs(output_folder, exist_ok=True)
        results.append(inference(
            model,
            data_loader,
            dataset_name=dataset_name,
            iou_types=("bbox",),
            box_only=False,
            device=cfg.MODEL.DEVICE,
            expected_results=cfg.TEST.EXPECTED_RESULTS,
            expected_results_sigma_tol=cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL,
            output_folder=output_folder,
        ))
        synchronize()
    return results
