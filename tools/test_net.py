"""Evaluate a trained detector on the config's DATASETS.TEST.

    python tools/test_net.py --config-file configs/atss/atss_R_50_FPN_1x.yaml \
        MODEL.WEIGHT ATSS_R_50_FPN_1x.pth [KEY VALUE ...]

Multi-process: ``torchrun --nproc_per_node N tools/test_net.py ...`` (WORLD_SIZE > 1 starts a
process group: NCCL on GPUs, Gloo on CPU). Results go to OUTPUT_DIR/inference/<dataset>.
"""
import argparse
import os
import pickle
import sys

import torch

from atss_core.config import cfg
from atss_core.data import make_data_loader
from atss_core.engine.inference import inference
from atss_core.modeling.detector import build_detection_model
from atss_core.utils.checkpoint import DetectronCheckpointer
from atss_core.utils.collect_env import collect_env_info
from atss_core.utils.comm import get_rank, synchronize
from atss_core.utils.logger import setup_logger


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ATSS inference and evaluation")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a yaml config file")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="this process's GPU (set by the launcher)")
    parser.add_argument("--ckpt", default=None, metavar="PATH",
                        help="checkpoint to evaluate; overrides MODEL.WEIGHT and any last_checkpoint in OUTPUT_DIR")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHT w.pth TEST.IMS_PER_BATCH 2")
    return parser.parse_args(argv)


def load_config(config_file, opts):
    """Merge ``config_file`` and the KEY VALUE ``opts`` into the global cfg and freeze it.

    Raises SystemExit with a one-line message for a missing file or a bad key/value.
    """
    if not os.path.isfile(config_file):
        sys.exit(f"test_net: config file {config_file!r} not found; pass an existing yaml with --config-file")
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts or [])
    except (KeyError, ValueError, AssertionError) as error:
        message = error.args[0] if error.args else repr(error)
        sys.exit(f"test_net: bad config option: {message} (keys are those of atss_core/config/defaults.py, "
                 f"given as KEY VALUE pairs)")
    cfg.freeze()


def check_weights(path):
    """Exit with a one-line message when ``path`` names a local file that does not exist."""
    if path and "://" not in path and not os.path.isfile(path):
        sys.exit(f"test_net: weights file {path!r} not found; pass a checkpoint as MODEL.WEIGHT or --ckpt")


def main(argv=None):
    args = parse_args(argv)
    num_processes = int(os.environ.get("WORLD_SIZE", 1))
    distributed = num_processes > 1
    if distributed:
        if torch.cuda.is_available():
            torch.cuda.set_device(args.local_rank)
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                             init_method="env://")
        synchronize()

    load_config(args.config_file, args.opts)
    weights = args.ckpt or cfg.MODEL.WEIGHT
    check_weights(weights)

    logger = setup_logger("atss_core", "", get_rank())
    logger.info("Using %d processes", num_processes)
    logger.info("Loaded configuration file %s", args.config_file)
    logger.info("Running with config:\n%s", cfg)
    logger.info("Collecting env info (might take some time)")
    logger.info("\n%s", collect_env_info())

    model = build_detection_model(cfg)
    model.to(cfg.MODEL.DEVICE)
    # OUTPUT_DIR/last_checkpoint, when present, wins over MODEL.WEIGHT (as in the original); an
    # explicit --ckpt wins over both, so the checkpointer gets no folder to look in then
    checkpointer = DetectronCheckpointer(cfg, model, save_dir="" if args.ckpt else cfg.OUTPUT_DIR)
    try:
        checkpointer.load(weights)
    except (FileNotFoundError, pickle.UnpicklingError) as error:
        sys.exit(f"test_net: {error}")

    dataset_names = cfg.DATASETS.TEST
    output_folders = [None] * len(dataset_names)
    if cfg.OUTPUT_DIR:
        for index, dataset_name in enumerate(dataset_names):
            output_folders[index] = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            os.makedirs(output_folders[index], exist_ok=True)
    box_only = False if (cfg.MODEL.ATSS_ON or cfg.MODEL.FCOS_ON or cfg.MODEL.RETINANET_ON) else cfg.MODEL.RPN_ONLY
    data_loaders = make_data_loader(cfg, is_train=False, is_distributed=distributed)
    for output_folder, dataset_name, data_loader in zip(output_folders, dataset_names, data_loaders):
        inference(
            model,
            data_loader,
            dataset_name=dataset_name,
            iou_types=("bbox",),
            box_only=box_only,
            device=cfg.MODEL.DEVICE,
            expected_results=cfg.TEST.EXPECTED_RESULTS,
            expected_results_sigma_tol=cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL,
            output_folder=output_folder,
        )
        synchronize()


if __name__ == "__main__":
    main()
